"""hwact's integer CPU runtime (backend int-cpu) against onnxruntime, end to end, interleaved (issue 15).

For each model: `hwact convert zoo:M --recipe int8-shiftgelu --calib C` (C: 16 random inputs, saved as
an .npz) writes the integer ONNX and the int-cpu plan; `hwact export-onnx zoo:M` writes the fp32 ONNX;
onnxruntime's quantize_static (QDQ, int8 per-channel weights, uint8 activations, the same calibration
inputs) writes the int8 QDQ model. Then, in one process, on the same random input batch, interleaved
(A B C D D C B A ...): the runtime (from a float32 array to the float32 logits: its quantize and
dequantize included), onnxruntime on the fp32 model, on the QDQ model and on the integer ONNX. Reported:
p50/p90 per engine and the ratio of each engine's p50 to the runtime's (> 1: the runtime is faster).

    python benchmarks/bench_int_cpu.py [--models vit-s16:1,vit-tiny:64,swin-t:1,resnet18:1] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hwact.backends.int_cpu import open_program
from hwact.backends.int_cpu_static import StaticProgram
from hwact.bench.int_cpu_bench import ProgramRunner
from hwact.bench.ort_runner import make_runner, measure
from hwact.report import machine

HWACT = str(Path(sys.executable).with_name("hwact"))


def prepare(model: str, root: Path) -> dict:
    from hwact import models

    _, specs = models.build(model)
    calib = root / f"{model}_calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, **{spec.name: rng.standard_normal((16, *spec.shape[1:])).astype(np.float32) for spec in specs})
    converted, fp32, qdq = root / f"{model}_int", root / f"{model}_fp32.onnx", root / f"{model}_qdq.onnx"
    start = time.perf_counter()
    subprocess.run([HWACT, "convert", f"zoo:{model}", "--recipe", "int8-shiftgelu", "--calib", str(calib), "-o",
                    str(converted)], check=True, capture_output=True)
    convert_seconds = time.perf_counter() - start
    subprocess.run([HWACT, "export-onnx", f"zoo:{model}", "-o", str(fp32)], check=True, capture_output=True)
    quantize_qdq(fp32, qdq, calib)
    return {"converted": converted, "fp32": fp32, "qdq": qdq, "convert_s": convert_seconds}


def quantize_qdq(fp32: Path, qdq: Path, calib: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    arrays = dict(np.load(calib))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{k: v[i:i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))])

        def get_next(self):
            return next(self.rows, None)

    prepared = qdq.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def run(model: str, batch: int, threads: int, files: dict, seconds: float) -> dict:
    program = open_program(files["converted"], threads)
    integer = make_runner(files["converted"] / "model.onnx", batch, threads)
    feeds = {k: np.ascontiguousarray(v) for k, v in integer.feeds.items()}
    runners = [ProgramRunner(program, feeds), make_runner(files["fp32"], batch, threads),
               make_runner(files["qdq"], batch, threads), integer]
    for runner in runners[1:]:
        runner.feeds = {name: feeds[name] for name in runner.feeds}
    produced = program(*runners[0].inputs)[0].numpy()
    if not np.array_equal(produced, integer.session.run(None, feeds)[0]):
        raise SystemExit(f"{model}: the runtime differs from the integer ONNX")
    results = measure(runners, 3, None, seconds, batch, progress=False)
    names = ["hwact int-cpu", "ort fp32", "ort int8 QDQ", "ort integer ONNX"]
    row = {"model": model, "batch": batch, "threads": threads, "isa": program.lib.hw_isa_name(program.lib.hw_isa()).decode(),
           "convert_s": round(files["convert_s"], 1)}
    for name, result in zip(names, results):
        row[name] = {"p50_ms": result["p50_ms"], "p90_ms": result["p90_ms"]}
    for name in names[1:]:
        row[f"{name} / hwact"] = row[name]["p50_ms"] / row["hwact int-cpu"]["p50_ms"]
    static = program.static.get(program.signature(*runners[0].inputs))
    row["executor"] = "static C program" if isinstance(static, StaticProgram) else f"python ({static})"
    if isinstance(static, StaticProgram):      # where the time goes, one instruction at a time
        row["profile_ms"] = {name: round(seconds * 1e3, 3)
                             for name, seconds in static.time_by_opcode(*runners[0].inputs).items()}
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict], command: str) -> str:
    info = machine()
    lines = ["# Integer CPU runtime (int-cpu) vs onnxruntime", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; torch {torch.__version__}. Command: `{command}`.", "",
             "End to end from a float32 input array to the float32 logits, one process, interleaved, same input "
             "batch; int8-shiftgelu graphs (zoo models, random weights, 16 random calibration inputs). Ratios: "
             "that engine's p50 / the runtime's p50 (> 1: the runtime is faster). The runtime's outputs equal the "
             "integer ONNX's bit for bit (checked before timing).", "",
             "| model | batch | threads | ISA | hwact int-cpu p50 ms | ort fp32 p50 ms | ort int8 QDQ p50 ms | "
             "ort integer ONNX p50 ms | fp32 / hwact | QDQ / hwact | integer ONNX / hwact | convert s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['isa']} | {r['hwact int-cpu']['p50_ms']:.2f} | "
                     f"{r['ort fp32']['p50_ms']:.2f} | {r['ort int8 QDQ']['p50_ms']:.2f} | "
                     f"{r['ort integer ONNX']['p50_ms']:.2f} | {r['ort fp32 / hwact']:.2f} | "
                     f"{r['ort int8 QDQ / hwact']:.2f} | {r['ort integer ONNX / hwact']:.2f} | {r['convert_s']} |")
    lines += ["", "Where the runtime's time goes (`hw_program_profile`: wall time of each instruction of the static "
              "program, summed by kind, averaged over 20 calls; the kinds over 3 % of the total):", "",
              "| model | batch | threads | total ms | by kind: ms (share) |", "|---|---|---|---|---|"]
    for r in rows:
        if "profile_ms" not in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | – | {r['executor']} |")
            continue
        total = sum(r["profile_ms"].values())
        kinds = ", ".join(f"{name.removeprefix('hw_')} {ms:.2f} ({ms / total:.0%})"
                          for name, ms in r["profile_ms"].items() if ms >= 0.03 * total)
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {total:.2f} | {kinds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-s16:1,vit-tiny:64,swin-t:1,resnet18:1")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "int_cpu.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.models.split(","):
            model, batch = item.split(":")
            files = prepare(model, Path(tmp))
            for threads in (int(t) for t in args.threads.split(",")):
                rows.append(run(model, int(batch), threads, files, args.seconds))
    command = "python benchmarks/bench_int_cpu.py" + "".join(
        f" --{k} {v}" for k, v in (("models", args.models), ("threads", args.threads))
        if v != parser.get_default(k))
    text = render(rows, command)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
