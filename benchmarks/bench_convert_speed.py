"""Convert speed of the integer recipe (issue 15): wall time and peak RSS of `hwact convert` on ViT-S/16.

Runs, each in a fresh process, interleaved (A B B A ...):
    A  hwact convert zoo:vit-s16 --recipe int8-shiftgelu --calib C --target cpu -o OUT
    B  hwact convert zoo:vit-s16 --recipe relu           --calib C --target cpu -o OUT   (the anchor)
C: 32 seeded standard-normal images (32, 3, 224, 224) float32 in an .npz array named after the model
input. Wall time and peak RSS come from getrusage(RUSAGE_CHILDREN) of a process that runs only that
convert (bench_convert.run_measured); the per-pass seconds (transform + verification) from report.json.
The machine's load average is recorded before each run: the 2 cores may be shared with other jobs.
Goal: A <= 45 s wall and <= 1 GB (10^9 bytes) peak RSS on the 2-core machine.

    python benchmarks/bench_convert_speed.py [--repeat 2] [--threads N] [--out benchmarks/results/convert_speed.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from hwact.report import machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import HWACT, run_measured  # noqa: E402

MODEL = "vit-s16"
SAMPLES = 32
GOAL_SECONDS, GOAL_BYTES = 45.0, 1e9
RECIPES = {"int8-shiftgelu": "integer", "relu": "anchor"}


def calibration(path: Path) -> Path:
    from hwact import models

    _, specs = models.build(MODEL)
    rng = np.random.default_rng(0)
    np.savez(path, **{spec.name: rng.standard_normal((SAMPLES, *spec.shape[1:])).astype(np.float32) for spec in specs})
    return path


def convert_once(recipe: str, calib: Path, root: Path) -> dict:
    out = root / f"out-{recipe}"
    load = os.getloadavg()[0]
    wall, rss = run_measured([HWACT, "convert", f"zoo:{MODEL}", "--recipe", recipe, "--calib", str(calib),
                              "--target", "cpu", "-o", str(out), "--force"])
    report = json.loads((out / "report.json").read_text())
    return {"recipe": recipe, "wall_s": wall, "peak_rss_mib": rss, "load_before": load,
            "passes": {p["name"]: p["seconds"] for p in report["passes"] if p["changed"]},
            "pass_seconds": sum(p["seconds"] for p in report["passes"]),
            "onnx_bit_exact": report["onnx"].get("bit_exact"), "int_cpu": bool(report.get("int_cpu"))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the converts (0: unset)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert_speed.md"))
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        calib = calibration(root / "calib.npz")
        order = list(RECIPES)
        for index in range(args.repeat):
            for recipe in order if index % 2 == 0 else order[::-1]:
                runs.append(convert_once(recipe, calib, root))
                print(json.dumps(runs[-1]), flush=True)
    best = {recipe: min((r for r in runs if r["recipe"] == recipe), key=lambda r: r["wall_s"]) for recipe in RECIPES}
    integer, anchor = best["int8-shiftgelu"], best["relu"]
    peak_bytes = max(r["peak_rss_mib"] for r in runs if r["recipe"] == "int8-shiftgelu") * 2**20
    command = "python benchmarks/bench_convert_speed.py " + " ".join(sys.argv[1:])
    threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else "torch's default threads"
    lines = ["# Convert speed: ViT-S/16 to integers (issue 15)", "",
             f"Command: `{command.strip()}` ({machine()['cpu']}, {os.cpu_count()} cores, {threads}; best of "
             f"{args.repeat} interleaved runs per recipe, each a fresh `hwact convert zoo:{MODEL} --recipe R "
             f"--calib C --target cpu` process with C = {SAMPLES} seeded random images; seconds per pass include "
             "its verification on all calibration batches; load = the 1-minute load average before the run).", "",
             "| recipe | wall (s) | peak RSS (MiB) | passes (s) | load | per pass (s) |", "|---|---|---|---|---|---|"]
    for run in runs:
        per_pass = ", ".join(f"{name} {seconds:.1f}" for name, seconds in run["passes"].items())
        lines.append(f"| {run['recipe']} | {run['wall_s']:.1f} | {run['peak_rss_mib']:.0f} | {run['pass_seconds']:.1f} | "
                     f"{run['load_before']:.1f} | {per_pass} |")
    lines += ["", f"Best: int8-shiftgelu {integer['wall_s']:.1f} s vs relu {anchor['wall_s']:.1f} s "
                  f"({integer['wall_s'] / anchor['wall_s']:.2f}x the anchor). Goal: wall {integer['wall_s']:.1f} s "
                  f"(<= {GOAL_SECONDS:.0f}: {'met' if integer['wall_s'] <= GOAL_SECONDS else 'MISSED'}); peak RSS "
                  f"{peak_bytes / 1e9:.2f} GB, the largest of its runs (<= 1 GB: "
                  f"{'met' if peak_bytes <= GOAL_BYTES else 'MISSED'})."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
