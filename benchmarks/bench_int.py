"""Integer-only lowering: accuracy on scikit-learn digits and latency on onnxruntime.

Accuracy (zoo `vit-digits`, per seed s = model init and batch order; test split = 20 % of digits, seed 1234,
never trained or calibrated on):
  * fp32 GELU      : the GELU ViT trained from its seeded init (as benchmarks/bench_recovery.py does);
  * fp32 ReLU + KD : GELU -> ReLU swap, distilled from that GELU model (T = 4, all sites at once);
  * int8-shiftgelu : recipe `int8-shiftgelu` on the fp32 GELU model (ShiftGELU, Shiftmax, I-LayerNorm);
  * int8-relu      : recipe `int8-relu` on the fp32 ReLU + KD model (CLE, integer Shiftmax/I-LayerNorm).
  Calibration: 256 training images (calibrate min-max). The goal is integer-only within 1 top-1 point of
  the float model it was lowered from.

Latency (same run, same process, interleaved; onnxruntime CPU, all threads): for `vit-digits` (batch 64)
and `vit-s16` (224x224, batch 1): onnxruntime fp32 (anchor) vs onnxruntime `quantize_static` QDQ int8
(per-channel weights, uint8 activations, float islands kept by ORT) vs hwact's integer-only ONNX
(recipe int8-shiftgelu). Ratios are latency / fp32 latency (< 1 = faster).

    python benchmarks/bench_int.py [--seeds 0] [--models vit-digits,vit-s16] [--out benchmarks/results/int.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hwact import models
from hwact.backends.onnx import export_onnx
from hwact.bench.ort_runner import make_runner, measure
from hwact.ir.graph import trace
from hwact.passes.base import all_passes
from hwact.passes.recipes import RECIPES
from hwact.passes.manager import random_batches, run_passes
from hwact.report import machine
from hwact.train.data import load_dataset, split
from hwact.train.distill import evaluate
from hwact.train.recover import recover

BASELINE = dict(epochs=100, lr=3e-3, batch_size=64, patience=20, weight_decay=0.01)
KD = dict(epochs=20, lr=1e-3, batch_size=64, patience=6, weight_decay=0.01, temperature=4.0, ce_weight=0.0)
BATCH = {"vit-digits": 64, "vit-s16": 1}


def quiet(*_args, **_kwargs):
    pass


def lower(graph, recipe: str, batches):
    lowered, records = run_passes(graph.copy(), list(RECIPES[recipe].passes), {}, batches,
                                 postconditions=RECIPES[recipe].postconditions)
    return lowered, records


def accuracy_row(seed: int, rest, test) -> dict:
    module, specs = models.build("vit-digits", seed=seed)
    graph = trace(module, specs, "vit-digits")
    gelu, _ = recover(graph, "none", rest, {**BASELINE, "seed": seed, "progress": False}, quiet)
    relu, _ = recover(gelu.copy(), "relu", rest, {**KD, "seed": seed, "progress": False, "schedule": "all"}, quiet)
    calib = [(rest.x[i:i + 32],) for i in range(0, 256, 32)]
    row = {"fp32 GELU": gelu, "fp32 ReLU + KD": relu}
    row["int8-shiftgelu"], _ = lower(gelu, "int8-shiftgelu", calib)
    row["int8-relu"], _ = lower(relu, "int8-relu", calib)
    result = {name: evaluate(g.module, test, None)["accuracy"] for name, g in row.items()}
    print(f"seed {seed}: " + "  ".join(f"{k} {100 * v:.2f}" for k, v in result.items()), flush=True)
    return result


def qdq_model(fp32: Path, out: Path, batches) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": b[0].numpy()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def latency_rows(name: str, work: Path, duration: float) -> list[str]:
    module, specs = models.build(name)
    graph = trace(module, specs, name)
    samples = 4 if name == "vit-s16" else 64
    batches = random_batches(graph.inputs, samples=samples, batch=min(samples, 8), seed=0)
    start = time.perf_counter()
    integer, _ = lower(graph, "int8-shiftgelu", batches)
    lowering_s = time.perf_counter() - start
    paths = {"onnxruntime fp32": export_onnx(graph, work / f"{name}-fp32.onnx")}
    paths["onnxruntime int8 QDQ (quantize_static)"] = qdq_model(paths["onnxruntime fp32"], work / f"{name}-qdq.onnx",
                                                                batches)
    paths["hwact integer-only (int8-shiftgelu)"] = export_onnx(integer, work / f"{name}-int.onnx")
    batch = BATCH.get(name, 1)
    runners = [make_runner(p, batch, threads=0) for p in paths.values()]
    results = measure(runners, warmup=3, iterations=None, duration=duration, batch=batch, progress=False)
    anchor = results[0]["p50_ms"]
    rows = [f"| {name} | {batch} | {label} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p50_ms'] / anchor:.2f} | "
            f"{p.stat().st_size / 1e6:.1f} |" for (label, p), r in zip(paths.items(), results)]
    print("\n".join(rows), flush=True)
    print(f"{name}: integer lowering {lowering_s:.1f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--models", default="vit-digits,vit-s16")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of timing per model")
    parser.add_argument("--out", default="benchmarks/results/int.md")
    args = parser.parse_args()
    all_passes()
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    digits = load_dataset("digits")
    rest, test = split(digits, 0.2, seed=1234)
    rows = [accuracy_row(seed, rest, test) for seed in seeds]
    with tempfile.TemporaryDirectory() as work:
        latency = [line for name in args.models.split(",") if name
                   for line in latency_rows(name, Path(work), args.duration)]
    total = time.perf_counter() - started
    info = machine()

    def cell(key):
        values = [100 * r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {spread:.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    def gap(key, ref):
        return statistics.mean(100 * (r[key] - r[ref]) for r in rows)

    lines = ["# Integer-only lowering (issue 4): accuracy on digits, latency on onnxruntime\n",
             f"Command: `python benchmarks/bench_int.py --seeds {args.seeds} --models {args.models}`  ",
             f"Machine: {info['cpu']}, {info['cores']} cores (shared), torch {torch.__version__}, "
             f"python {platform.python_version()}; total wall time {total:.0f} s.\n",
             "## Accuracy (vit-digits, scikit-learn digits, test split of "
             f"{len(test)} images; seeds {args.seeds})\n",
             f"Training: GELU baseline {BASELINE}; ReLU + KD {KD}. Calibration: 256 training images, min-max.\n",
             "| model | test top-1 (%) | Δ vs its float model (points) |", "|---|---|---|",
             f"| fp32 GELU | {cell('fp32 GELU')} | - |",
             f"| fp32 ReLU + KD | {cell('fp32 ReLU + KD')} | {gap('fp32 ReLU + KD', 'fp32 GELU'):+.2f} vs GELU |",
             f"| int8-shiftgelu (integer-only) | {cell('int8-shiftgelu')} | {gap('int8-shiftgelu', 'fp32 GELU'):+.2f} |",
             f"| int8-relu (integer-only) | {cell('int8-relu')} | {gap('int8-relu', 'fp32 ReLU + KD'):+.2f} |", ""]
    worst = min(gap("int8-shiftgelu", "fp32 GELU"), gap("int8-relu", "fp32 ReLU + KD"))
    names = list(rows[0])
    lines += [f"Goal (integer-only within 1 top-1 point of its float model): worst gap {worst:+.2f} points -> "
              f"{'met' if worst >= -1.0 else 'MISSED'}.\n",
              "Per seed (test top-1 %; one test image = 0.28 points):\n",
              "| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
              *[f"| {seed} | " + " | ".join(f"{100 * r[k]:.2f}" for k in names) + " |" for seed, r in zip(seeds, rows)],
              "",
              "## Latency (onnxruntime CPU, interleaved in one process; ratio = p50 / fp32 p50)\n",
              "| model | batch | runtime | p50 ms | p90 ms | ratio vs fp32 | file MB |", "|---|---|---|---|---|---|---|",
              *latency, ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
