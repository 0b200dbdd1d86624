"""Apache TVM builds (target tvm-x86) against onnxruntime and hwact's int-cpu runtime on this machine (issue 18).

For each model and graph (float, and the integer graph of an int8 recipe):
`hwact convert zoo:M [--recipe R] --target tvm-x86 [--tune-trials N]` (timed: export, TVM import, tuning,
build, verification), then `hwact bench OUT --json` (the TVM library timed with time_evaluator, model.onnx
with onnxruntime, same random input, batch 1: onnxruntime runs the float ONNX for a float graph, the
integer ONNX for an integer graph). For an integer graph also `hwact convert zoo:M --recipe R` (target cpu)
and `hwact bench` on it: hwact's int-cpu runtime beside the same integer ONNX. Tuned builds run once per
trial budget in --trials (a curve of latency vs trials), after all untuned rows; each tunes from scratch
into a fresh cache, and the tuning wall time is reported. Writes results/tvm.md after every row.

    python benchmarks/bench_tvm.py [--models vit-tiny,vit-s16] [--recipe int8-shiftgelu] [--trials 64,256]
                                   [--tuned-models vit-tiny] [--threads 1] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwact.report import machine

HWACT = str(Path(sys.executable).with_name("hwact"))


def run_json(*args: str) -> dict:
    return json.loads(subprocess.run([HWACT, *args], capture_output=True, text=True, check=True).stdout)


def convert(model: str, recipe: str | None, target: str, out: Path, trials: int, cache: Path) -> tuple[float, str | None]:
    """(wall seconds, the one-line error or None) of one convert."""
    args = [HWACT, "convert", f"zoo:{model}", "--target", target, "-o", str(out)]
    args += ["--recipe", recipe] if recipe else []
    args += ["--tune-trials", str(trials)] if trials else []
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HWACT_CACHE": str(cache)})
    return round(time.perf_counter() - start, 1), (done.stderr.strip().splitlines() or ["?"])[-1] if done.returncode else None


def tvm_row(model: str, recipe: str | None, out: Path, trials: int, cache: Path, threads: int, seconds: float) -> dict:
    convert_s, error = convert(model, recipe, "tvm-x86", out, trials, cache)
    row = {"model": model, "graph": recipe or "float", "trials": trials, "convert_s": convert_s}
    if error:
        return {**row, "error": error}
    tuning = json.loads((out / "report.json").read_text())["tvm"]["tuning"]
    os.environ["HWACT_CACHE"] = str(cache)                     # bench rebuilds with the same tuning database
    result = run_json("bench", str(out), "--json", "--threads", str(threads), "--duration", str(seconds))
    tvm, ort = result["results"]
    return {**row, "tuning_wall_s": tuning.get("wall_s"), "tasks": tuning.get("tasks"),
            "tvm_p50_ms": tvm["p50_ms"], "tvm_p90_ms": tvm["p90_ms"], "ort_p50_ms": ort["p50_ms"],
            "ort_p90_ms": ort["p90_ms"], "max_abs_err_vs_ort": result["max_abs_err_vs_onnxruntime"]}


def int_cpu_row(model: str, recipe: str, out: Path, cache: Path, threads: int, seconds: float) -> dict:
    _, error = convert(model, recipe, "cpu", out, 0, cache)
    if error:
        return {"int_cpu_error": error}
    result = run_json("bench", str(out), "--json", "--threads", str(threads), "--duration", str(seconds))
    runtime = next(r for r in result["results"] if "int-cpu" in r["artifact"])
    return {"int_cpu_p50_ms": runtime["p50_ms"], "int_cpu_p90_ms": runtime["p90_ms"],
            "int_cpu_isa": result.get("isa"), "int_cpu_equals_integer_onnx": result.get("outputs_equal_integer_onnx")}


def render(rows: list[dict], command: str, threads: int, load: tuple[float, float]) -> str:
    info = machine()
    fp32 = {r["model"]: r["ort_p50_ms"] for r in rows if r["graph"] == "float" and "ort_p50_ms" in r}

    def ms(value) -> str:
        return f"{value:.2f}" if isinstance(value, (int, float)) else "–"

    lines = ["# Apache TVM (tvm-x86) vs onnxruntime and the hwact int-cpu runtime", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, shared with other jobs while measured (load average "
             f"{load[0]:.1f} at the start, {load[1]:.1f} at the end); threads {threads} (TVM_NUM_THREADS, "
             f"onnxruntime intra-op, int-cpu). Command: `{command}`.", "",
             "Batch 1, zoo models with random weights. TVM: the convert's library rebuilt by `hwact bench` and "
             "timed with time_evaluator (one call per repeat); ort: the same model.onnx in onnxruntime (the float "
             "ONNX for `float`, the integer ONNX for an integer graph), same input; outputs checked against "
             "onnxruntime before timing (integer: bit-exact). int-cpu: `hwact convert --recipe R` (target cpu) "
             "benchmarked by `hwact bench`. tvm / ort: ratio of p50s (> 1: TVM is slower). Tuned: MetaSchedule "
             "with the trial budget split evenly over the tuning tasks, from an empty database; tuning s is its "
             "wall time (in the convert).", "",
             "| model | graph | trials (tasks) | tuning s | convert s | TVM p50 ms | TVM p90 ms | ort p50 ms | "
             "tvm / ort | ort fp32 p50 ms | int-cpu p50 ms | max abs err vs ort |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        trials = f"{r['trials']}" + (f" ({r['tasks']})" if r.get("tasks") else "")
        if "error" in r:
            lines.append(f"| {r['model']} | {r['graph']} | {trials} | – | {r['convert_s']} | {r['error']} "
                         f"| | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['graph']} | {trials} | {ms(r.get('tuning_wall_s'))} | {r['convert_s']} | "
                     f"{ms(r['tvm_p50_ms'])} | {ms(r['tvm_p90_ms'])} | {ms(r['ort_p50_ms'])} | "
                     f"{r['tvm_p50_ms'] / r['ort_p50_ms']:.2f} | {ms(fp32.get(r['model']))} | "
                     f"{ms(r.get('int_cpu_p50_ms'))} | {r['max_abs_err_vs_ort']:.3g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-tiny,vit-s16")
    parser.add_argument("--recipe", default="int8-shiftgelu", help="the integer graphs' recipe ('' for none)")
    parser.add_argument("--trials", default="64,256", help="tuned builds' trial budgets, comma separated")
    parser.add_argument("--tuned-models", default="vit-tiny", help="the models (float graphs) to tune")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tvm.md"))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    budgets = [int(t) for t in args.trials.split(",") if t.strip() and int(t) > 0]
    command = "python benchmarks/bench_tvm.py" + "".join(
        f" --{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items()
        if k != "out" and v != parser.get_default(k))
    models = args.models.split(",")
    builds = [(model, None, 0) for model in models] + [(model, args.recipe, 0) for model in models if args.recipe]
    builds += [(model, None, t) for t in budgets for model in models if model in args.tuned_models.split(",")]
    load_start, rows = os.getloadavg()[0], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model, recipe, trials in builds:        # untuned rows first, then the tuning curve
            name = f"{model}-{recipe or 'float'}-t{trials}"
            row = tvm_row(model, recipe, root / name, trials, root / f"cache-{name}", args.threads, args.seconds)
            if recipe and "error" not in row:
                row.update(int_cpu_row(model, recipe, root / f"{name}-int-cpu", root / "cache", args.threads,
                                       args.seconds))
            print(json.dumps(row), flush=True)
            rows.append(row)
            text = render(rows, command, args.threads, (load_start, os.getloadavg()[0]))
            Path(args.out).write_text(text)              # after every row: a stopped run keeps what it measured
    print(text)

if __name__ == "__main__":
    main()
