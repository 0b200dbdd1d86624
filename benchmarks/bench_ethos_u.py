"""hwact's Ethos-U flow (integer graph -> TOSA -> Vela) on the models it lowers, for U55-128 and U85-256:
fraction of operators on the NPU, convert wall time (recipe + TOSA lowering + reference-model check + Vela),
Vela's cycle and time estimates, memory; and the models it refuses, with their blocking ops.

Every row is one `hwact convert MODEL --target TARGET --recipe RECIPE --calib CALIB -o OUT` in a subprocess
(4 calibration samples, each checked bit-exact in the TOSA reference model). Cycles and times are Vela's
static estimates, not measurements. Then, in this process:
  * where a convert's time goes, for zoo vit-tiny on U55-128 (recipe, TOSA lowering, serializer, Vela, one
    reference-model run);
  * accuracy on scikit-learn digits (test split 20 %, seed 1234) of zoo vit-digits trained from seeds 0 and 1
    (as benchmarks/bench_int.py does), lowered with int8-shiftgelu (ShiftGELU, Shiftmax, I-LayerNorm: int64,
    not deployable on Ethos-U) and int8-npu (GELU table, npu_softmax, npu_layernorm: what the NPU runs),
    calibrated on 256 training images: top-1 and the cosine of the logits to the fp32 model's.
Not here yet: ExecuTorch's Arm backend and litert-torch + Vela side by side.

Run:  python benchmarks/bench_ethos_u.py [--out benchmarks/results/ethos_u.md] [--no-accuracy] [--seeds 0,1]
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
    ("zoo vit-tiny", zoo("vit-tiny"), "int8-npu"),
    ("zoo vit-digits", zoo("vit-digits"), "int8-npu"),
    ("zoo swin-tiny", zoo("swin-tiny"), "int8-npu"),
    ("zoo convnext-tiny", zoo("convnext-tiny"), "int8-npu"),
    ("HF vit", hugging_face("vit"), "int8-npu"),
    ("HF deit", hugging_face("deit"), "int8-npu"),
    ("zoo vit-tiny", zoo("vit-tiny"), "int8-shiftgelu"),
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


def stages(work: Path) -> dict[str, float]:
    """Seconds per stage of zoo vit-tiny's convert for ethos-u55-128 (int8-npu, 4 calibration samples)."""
    from hwact.backends import tosa_lower, tosa_tools
    from hwact.load import load
    from hwact.passes.manager import run_passes
    from hwact.passes.recipes import RECIPES

    times = {}
    start = time.perf_counter()
    graph = load("zoo:vit-tiny").graph
    batches = [graph.example_inputs(batch=SAMPLES, seed=3)]
    times["load + trace"] = time.perf_counter() - start
    start = time.perf_counter()
    graph, _ = run_passes(graph, list(RECIPES["int8-npu"].passes), {}, batches)
    times["recipe int8-npu (each pass verified)"] = time.perf_counter() - start
    start = time.perf_counter()
    network, _ = tosa_lower.lower(graph, tuple(t[:1] for t in batches[0]))
    description, constants = tosa_lower.write_description(network, work)
    times["TOSA lowering"] = time.perf_counter() - start
    start = time.perf_counter()
    names = tosa_tools.serialize(description, constants, work / "model.tosa")
    times["serializer (tosa-tools, own process)"] = time.perf_counter() - start
    start = time.perf_counter()
    tosa_tools.vela(work / "model.tosa", work / "vela", "ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
    times["Vela (ethos-u55-128)"] = time.perf_counter() - start
    start = time.perf_counter()
    feed = np.zeros([int(d) for d in network.tensors[network.inputs[0]]["shape"]], np.int8)
    tosa_tools.reference_run(work / "model.tosa", names, [feed], work / "run")
    times["TOSA reference model, one sample"] = time.perf_counter() - start
    return times


def digits_accuracy(seed: int) -> dict[str, tuple[float, float]]:
    """(top-1 on the digits test split, cosine of the logits to fp32's) for fp32, int8-shiftgelu, int8-npu."""
    import torch

    from hwact import models
    from hwact.ir.graph import trace
    from hwact.passes.manager import run_passes
    from hwact.passes.recipes import RECIPES
    from hwact.train.data import load_dataset, split
    from hwact.train.distill import evaluate, predict
    from hwact.train.recover import recover

    digits = load_dataset("digits")
    rest, test = split(digits, 0.2, seed=1234)
    module, specs = models.build("vit-digits", seed=seed)
    graph = trace(module, specs, "vit-digits")
    trained, _ = recover(graph, "none", rest, dict(epochs=100, lr=3e-3, batch_size=64, patience=20,
                                                   weight_decay=0.01, seed=seed, progress=False), lambda *a, **k: None)
    calib = [(rest.x[i:i + 32],) for i in range(0, 256, 32)]
    reference = predict(trained.module, test.x).double()
    result = {"fp32": (evaluate(trained.module, test, None)["accuracy"], 1.0)}
    for recipe in ("int8-shiftgelu", "int8-npu"):
        lowered, _ = run_passes(trained.copy(), list(RECIPES[recipe].passes), {}, calib,
                                postconditions=RECIPES[recipe].postconditions)
        cosine = torch.nn.functional.cosine_similarity(predict(lowered.module, test.x).double(), reference).mean()
        result[recipe] = (evaluate(lowered.module, test, None)["accuracy"], float(cosine))
    print(seed, json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ethos_u.md"))
    parser.add_argument("--no-accuracy", action="store_true", help="skip the digits training and accuracy")
    parser.add_argument("--seeds", default="0,1", help="vit-digits training seeds for the accuracy table")
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
    with tempfile.TemporaryDirectory(prefix="bench-ethos-u-stages-") as work:
        times = stages(Path(work))
    backend = sum(v for k, v in times.items() if k.startswith(("TOSA lowering", "serializer", "Vela")))
    lines += ["", "## Where zoo vit-tiny's convert goes (ethos-u55-128, int8-npu, in one process)\n",
              "| stage | s |", "|---|---|", *[f"| {k} | {v:.2f} |" for k, v in times.items()],
              f"\nTOSA lowering + serializer + Vela: {backend:.2f} s (the convert also runs the reference model on "
              "every sample, as many at a time as there are CPUs, and writes the report)."]
    if not args.no_accuracy:
        seeds = [int(x) for x in args.seeds.split(",")]
        results = [digits_accuracy(seed) for seed in seeds]
        labels = {"fp32": "fp32 (GELU)",
                  "int8-shiftgelu": "int8-shiftgelu (ShiftGELU, Shiftmax, I-LayerNorm; int64, not on Ethos-U)",
                  "int8-npu": "int8-npu (GELU TABLE, npu_softmax, npu_layernorm; what Ethos-U runs)"}
        lines += ["", "## Accuracy: zoo vit-digits trained on scikit-learn digits, test split (359 images)\n",
                  "Top-1 % / cosine of the logits to the fp32 model's, per training seed (model init and batch order); "
                  "calibration: 256 training images.\n",
                  "| model | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean top-1 % |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for key, label in labels.items():
            cells = [f"{100 * r[key][0]:.2f} / {r[key][1]:.5f}" for r in results]
            mean = 100 * sum(r[key][0] for r in results) / len(results)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
