"""End-to-end convert of a realistic model: wall time and peak RSS (issue: core pipeline benchmark).

Runs `hwact convert zoo:<model> --recipe relu` (trace, gelu-to-relu + fold-bn + cleanup with per-pass
verification, ONNX export, onnxruntime check) in a fresh process and reads its peak RSS from
getrusage(RUSAGE_CHILDREN). The anchor measured in the same run is a process that only imports
hwact's dependencies and builds the same model (the floor any in-process converter pays).

    python benchmarks/bench_convert.py [--models vit-s16,swin-t,convnext-t,resnet18,bert-base] [--repeat 3]
                                       [--out benchmarks/results/convert.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HWACT = str(Path(sys.executable).with_name("hwact"))
ANCHOR = ("import torch, onnx, onnxruntime, onnxscript, hwact.convert, hwact.models as m; "
          "module, _ = m.build('{model}')")


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a child process (run alone, so RUSAGE_CHILDREN is its peak)."""
    script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "r = subprocess.run(sys.argv[1:]); dt = time.perf_counter() - t; "
              "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    wall, rss = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(rss)


MEMORY_NOTE = """Where the memory goes (ViT-S/16, VmHWM read after each stage in a one-off session-1 measurement, not
re-run by this script): importing torch, onnx, onnxruntime and onnxscript alone is 303 MiB (3.6x its
weights), so a 4x-weights peak cannot be met for a model this small by any in-process converter built
on these libraries; load + torch.export trace reaches 471 MiB, the verified passes 544 MiB, ONNX export
703 MiB, the onnxruntime check 765 MiB. The ONNX writer streams weights into the single-file model
instead of building the whole protobuf in memory (this cut the export peak from 806 MiB), and the check
session skips weight pre-packing. What is left: the exporter's own copies during `save` and
onnxruntime's copy of the weights."""


def measure(model: str, repeat: int) -> dict:
    """Best-of-`repeat` convert of zoo:`model` with its anchor."""
    from hwact import models

    module, _ = models.build(model)
    weight_mib = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 2**20
    rows = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            wall, rss = run_measured([HWACT, "convert", f"zoo:{model}", "--recipe", "relu", "-o", str(out)])
            report = json.loads((out / "report.json").read_text())
            anchor_wall, anchor_rss = run_measured([sys.executable, "-c", ANCHOR.format(model=model)])
            rows.append({"wall_s": wall, "peak_rss_mib": rss, "anchor_wall_s": anchor_wall, "anchor_rss_mib": anchor_rss,
                         "pass_seconds": sum(p["seconds"] for p in report["passes"]),
                         "onnx_mib": report["onnx"]["bytes"] / 2**20, "ort_max_abs_err": report["onnx"]["ort_max_abs_err"]})
    best = min(rows, key=lambda r: r["wall_s"])
    return {"model": model, "weights_mib": weight_mib, "best": best, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vit-s16,swin-t,convnext-t,resnet18,bert-base")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert.md"))
    args = parser.parse_args()
    command = "python benchmarks/bench_convert.py " + " ".join(sys.argv[1:])
    lines = ["# Core pipeline: converting realistic zoo models end to end", "",
             f"Command: `{command.strip()}` (best of {args.repeat} runs per model; {os.cpu_count()} cores). Each run is",
             "a fresh `hwact convert zoo:MODEL --recipe relu -o OUT` process: trace, gelu-to-relu + fold-bn +",
             "cleanup each verified on 16 calibration samples, ONNX export, onnxruntime check. The anchor is a",
             "process that only imports the same libraries and builds the same model. Targets (ViT-S/16):",
             "convert <= 60 s, peak RSS <= 4x the fp32 weights.", "",
             "| model | weights (MiB) | convert wall (s) | anchor wall (s) | peak RSS (MiB) | RSS / weights "
             "| RSS above anchor / weights | ORT max abs err |",
             "|---|---|---|---|---|---|---|---|"]
    for model in args.models.split(","):
        result = measure(model, args.repeat)
        print(json.dumps(result, indent=2), flush=True)
        best, weights = result["best"], result["weights_mib"]
        lines.append(f"| {model} | {weights:.1f} | {best['wall_s']:.1f} | {best['anchor_wall_s']:.1f} | "
                     f"{best['peak_rss_mib']:.0f} | {best['peak_rss_mib'] / weights:.2f}x | "
                     f"{(best['peak_rss_mib'] - best['anchor_rss_mib']) / weights:.2f}x | "
                     f"{best['ort_max_abs_err']:.2g} |")
    lines += ["", MEMORY_NOTE, ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
