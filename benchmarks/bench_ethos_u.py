"""hwact's Ethos-U flow (integer graph -> TOSA -> Vela) on the models it lowers, for U55-128 and U85-256:
fraction of operators on the NPU, convert wall time (recipe + TOSA lowering + reference-model check + Vela),
Vela's cycle and time estimates, memory; and the models it refuses, with their blocking ops.

Every row is one `hwact convert MODEL --target TARGET --calib CALIB -o OUT` in a subprocess (4 calibration
samples, each checked bit-exact in the TOSA reference model). Cycles and times are Vela's static
estimates, not measurements. Not here yet: ExecuTorch's Arm backend and litert-torch + Vela side by side.

Run:  python benchmarks/bench_ethos_u.py [--out benchmarks/results/ethos_u.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("ethos-u55-128", "ethos-u85-256")
SAMPLES = 4


def zoo(name: str):
    def make(folder: Path) -> tuple[str, Path]:
        from hwact.load import load

        calib = folder / f"{name}_calib.npz"
        np.savez(calib, x=load(f"zoo:{name}").graph.example_inputs(batch=SAMPLES, seed=3)[0].numpy())
        return f"zoo:{name}", calib
    return make


def hugging_face(name: str):
    def make(folder: Path) -> tuple[str, Path]:
        from hwact import hf_suite

        model, calib, _ = hf_suite.save_files(name, folder, calibration=SAMPLES)
        return str(model), calib
    return make


# (label, model builder, recipe)
MODELS = [
    ("zoo cnn-tiny", zoo("cnn-tiny"), "int8-shiftgelu"),
    ("zoo resnet18 (224x224)", zoo("resnet18"), "int8-shiftgelu"),
    ("HF resnet", hugging_face("resnet"), "int8-relu"),
    ("HF mobilenet_v2", hugging_face("mobilenet_v2"), "int8-relu"),
    ("HF efficientnet", hugging_face("efficientnet"), "int8-relu"),
    ("zoo vit-tiny", zoo("vit-tiny"), "int8-relu"),
    ("zoo convnext-tiny", zoo("convnext-tiny"), "int8-relu"),
]


def convert(model: str, calib: Path, recipe: str, target: str, out: Path) -> dict:
    hwact = Path(sys.executable).parent / "hwact"
    start = time.perf_counter()
    done = subprocess.run([str(hwact), "convert", model, "--target", target, "--recipe", recipe, "--calib", str(calib),
                           "-o", str(out)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        ops = sorted(set(re.findall(r"\((hwact\.\w+|aten\.\w+)\.default\)", done.stderr)))
        return {"status": "refused", "wall_s": wall, "blockers": ", ".join(ops) or done.stderr.strip()[-200:]}
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    return {"status": "ok", "wall_s": wall, **section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ethos_u.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ethos-u-") as work:
        for label, make, recipe in MODELS:
            model, calib = make(Path(work))
            for target in TARGETS:
                row = convert(model, calib, recipe, target, Path(work) / f"{len(rows)}")
                rows.append({"model": label, "recipe": recipe, "target": target, **row})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "layers"}), flush=True)
    lines = ["# Arm Ethos-U: hwact integer graph -> TOSA -> Vela\n",
             f"`python benchmarks/bench_ethos_u.py` on {platform.machine()} ({os.cpu_count()} CPUs, shared), "
             f"{SAMPLES} calibration samples per model, each checked bit-exact in the TOSA reference model. Cycles "
             "and times are Vela 5.2.0's static estimates, not measurements; wall time is the whole convert "
             "(recipe, TOSA lowering, reference-model check, Vela).\n",
             "| model | recipe | target | status | NPU ops | CPU ops | NPU cycles | est. ms | MACs | SRAM KiB | convert s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['model']} | {r['recipe']} | {r['target']} | bit-exact ({r['samples']}) | {r['npu_ops']} | "
                         f"{r['cpu_ops']} | {r['npu_cycles']:,} | {r['estimated_inference_s'] * 1e3:.3f} | "
                         f"{r['macs'] / 1e6:.1f} M | {r['sram_kib']:.1f} | {r['wall_s']:.1f} |")
        else:
            lines.append(f"| {r['model']} | {r['recipe']} | {r['target']} | refused: {r['blockers']} | | | | | | | "
                         f"{r['wall_s']:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
