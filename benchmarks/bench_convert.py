"""End-to-end convert of a realistic model: wall time and peak RSS (issue: core pipeline benchmark).

Runs `hwact convert zoo:<model> --recipe relu` (trace, gelu-to-relu + fold-bn + cleanup with per-pass
verification, ONNX export, onnxruntime check) in a fresh process and reads its peak RSS from
getrusage(RUSAGE_CHILDREN). The anchor measured in the same run is a process that only imports
hwact's dependencies and builds the same model (the floor any in-process converter pays).

    python benchmarks/bench_convert.py [--model vit-s16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit-s16")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from hwact import models

    module, _ = models.build(args.model)
    weight_mib = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 2**20
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            wall, rss = run_measured([HWACT, "convert", f"zoo:{args.model}", "--recipe", "relu", "-o", str(out)])
            report = json.loads((out / "report.json").read_text())
            anchor_wall, anchor_rss = run_measured([sys.executable, "-c", ANCHOR.format(model=args.model)])
            rows.append({"wall_s": wall, "peak_rss_mib": rss, "anchor_wall_s": anchor_wall, "anchor_rss_mib": anchor_rss,
                         "pass_seconds": sum(p["seconds"] for p in report["passes"]),
                         "onnx_mib": report["onnx"]["bytes"] / 2**20, "ort_max_abs_err": report["onnx"]["ort_max_abs_err"]})
    best = min(rows, key=lambda r: r["wall_s"])
    print(json.dumps({"model": args.model, "weights_mib": weight_mib, "runs": rows}, indent=2))
    print(f"\n{args.model}: weights {weight_mib:.1f} MiB; convert wall {best['wall_s']:.1f} s "
          f"(import+build anchor {best['anchor_wall_s']:.1f} s); peak RSS {best['peak_rss_mib']:.0f} MiB "
          f"= {best['peak_rss_mib'] / weight_mib:.2f}x weights (anchor {best['anchor_rss_mib']:.0f} MiB; "
          f"above anchor {(best['peak_rss_mib'] - best['anchor_rss_mib']) / weight_mib:.2f}x weights); "
          f"cores {os.cpu_count()}")


if __name__ == "__main__":
    main()
