"""Apache TVM builds (target tvm-x86) against onnxruntime fp32 on this machine, float graphs (issue 18).

For each model: `hwact convert zoo:M --target tvm-x86` (timed: export, TVM import + build, verification),
then `hwact bench OUT --json` (the TVM library timed with time_evaluator, model.onnx with onnxruntime, same
random input, batch 1). Then the same with MetaSchedule tuning (`tune_trials = N` in a copy of the
target file), its wall time, or the one-line error when tuning fails. Writes results/tvm.md.

    python benchmarks/bench_tvm.py [--models vit-tiny,vit-s16] [--trials 64] [--threads 1] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwact.report import machine

HWACT = str(Path(sys.executable).with_name("hwact"))
TARGETS = Path(__file__).resolve().parents[1] / "hwact" / "targets"


def tuned_target(root: Path, trials: int) -> Path:
    text = (TARGETS / "tvm-x86.toml").read_text().replace('name = "tvm-x86"', 'name = "tvm-x86-tuned"')
    text = text.replace("[backend.tvm]\n", f"[backend.tvm]\ntune_trials = {trials}\n")
    path = root / "tvm-x86-tuned.toml"
    path.write_text(text)
    return path


def convert_and_bench(model: str, target: str, out: Path, threads: int, seconds: float) -> dict:
    start = time.perf_counter()
    done = subprocess.run([HWACT, "convert", f"zoo:{model}", "--target", target, "-o", str(out)],
                          capture_output=True, text=True)
    convert_s = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1], "convert_s": round(convert_s, 1)}
    tuning = json.loads((out / "report.json").read_text())["tvm"]["tuning"]
    bench = subprocess.run([HWACT, "bench", str(out), "--json", "--threads", str(threads), "--duration", str(seconds)],
                           capture_output=True, text=True, check=True)
    result = json.loads(bench.stdout)
    tvm_row, ort_row = result["results"]
    return {"convert_s": round(convert_s, 1), "tuning": tuning, "tvm_p50_ms": tvm_row["p50_ms"],
            "tvm_p90_ms": tvm_row["p90_ms"], "ort_p50_ms": ort_row["p50_ms"], "ort_p90_ms": ort_row["p90_ms"],
            "tvm_over_ort": result["ratio_p50_tvm_over_onnxruntime"],
            "max_abs_err_vs_ort": result["max_abs_err_vs_onnxruntime"]}


def render(rows: list[dict], command: str, trials: int, threads: int) -> str:
    info = machine()
    lines = ["# Apache TVM (tvm-x86) vs onnxruntime fp32", "",
             f"Machine: {info['cpu']}, {info['cores']} cores (shared with other jobs while measured); "
             f"threads {threads} (TVM_NUM_THREADS and onnxruntime intra-op). Command: `{command}`.", "",
             "Batch 1, float graphs (zoo models, random weights). TVM: the convert's library rebuilt by `hwact bench` "
             "and timed with time_evaluator (one call per repeat); onnxruntime: model.onnx, same input. Outputs "
             "checked against onnxruntime before timing. tvm / ort: ratio of p50s (> 1: TVM is slower).", "",
             "| model | build | tuning trials | tuning wall s | convert s | TVM p50 ms | TVM p90 ms | ort p50 ms | "
             "ort p90 ms | tvm / ort |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['build']} | {trials} | – | {r['convert_s']} | {r['error']} | | | | |")
            continue
        wall = r["tuning"].get("wall_s", "–")
        lines.append(f"| {r['model']} | {r['build']} | {r['tuning']['trials']} | {wall} | {r['convert_s']} | "
                     f"{r['tvm_p50_ms']:.2f} | {r['tvm_p90_ms']:.2f} | {r['ort_p50_ms']:.2f} | {r['ort_p90_ms']:.2f} | "
                     f"{r['tvm_over_ort']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-tiny,vit-s16")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tvm.md"))
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        builds = [("untuned", "tvm-x86")] + ([("tuned", str(tuned_target(root, args.trials)))] if args.trials else [])
        for model in args.models.split(","):
            for build, target in builds:
                row = {"model": model, "build": build,
                       **convert_and_bench(model, target, root / f"{model}-{build}", args.threads, args.seconds)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    command = "python benchmarks/bench_tvm.py" + "".join(
        f" --{k} {v}" for k, v in (("models", args.models), ("trials", args.trials), ("threads", args.threads))
        if v != parser.get_default(k))
    text = render(rows, command, args.trials, args.threads)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
