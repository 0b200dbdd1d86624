"""GELU on Arm Ethos-U: a plain int8 GELU table vs ShiftGELU vs GELU -> ReLU, in Vela cycles and accuracy.

Three integer forms of a ViT's GELU, each with the rest of hwact's NPU recipe (npu-layernorm, npu-softmax,
int8 matmuls), lowered by hwact's tosa-vela backend in this process (the code `hwact convert --target
ethos-u55-128 --passes ...` runs: check, TOSA lowering, serializer, Vela, and the TOSA reference model checked
bit-exact on 4 calibration samples) for ethos-u55-128 and ethos-u85-256:

  * GELU table  = recipe int8-npu: lut-gelu evaluates GELU on each of the 256 input codes into an int8 TABLE
                  (exact to the float GELU up to the output rounding);
  * ShiftGELU   = I-ViT's integer ShiftGELU, x · σ(1.702 x) with σ from shift exponentials of a − m and −m,
                  m the row maximum (pass shift-gelu), with npu-layernorm and npu-softmax;
  * ReLU        = gelu-to-relu (then cle, as in int8-relu) with the same integer passes; the ReLU is a
                  clamp on codes.

Models: zoo vit-digits trained on scikit-learn digits (as benchmarks/bench_ethos_u.py: seeds 0 and 1,
100 epochs, test split 20 %, seed 1234; calibration: 256 training images) and zoo vit-tiny (random weights,
seed 0, 4 calibration samples, seed 3: cycles only). For ReLU on vit-digits the swapped model is first
distilled from that seed's trained GELU model (benchmarks/bench_recovery.py's KD settings, all sites at once;
`hwact convert --recover kd` refuses integer recipes, so recovery runs on the float graph, then the integer
passes). Top-1 is on the digits test split (359 images); the cosine is of the logits to the fp32 GELU model's.
Cycles and times are Vela 5.2.0's static estimates, not measurements.

Needs `make tosa-env`.

Run:  python benchmarks/bench_ethos_u_gelu.py [--seeds 0,1] [--out benchmarks/results/ethos_u_gelu.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("ethos-u55-128", "ethos-u85-256")
VERIFY_SAMPLES = 4


def variants() -> dict[str, tuple[str, ...]]:
    from hwact.passes.recipes import INTEGER_PREPARE, RECIPES

    tail = ("npu-layernorm", "npu-softmax")
    return {
        "GELU table (int8-npu)": RECIPES["int8-npu"].passes,
        "ShiftGELU": INTEGER_PREPARE + ("calibrate", "fold-quant-scales", "shift-gelu", "lut-activations") + tail,
        "ReLU": INTEGER_PREPARE[:3] + ("gelu-to-relu",) + INTEGER_PREPARE[3:]
        + ("cle", "calibrate", "fold-quant-scales", "lut-activations") + tail,
    }


def lower(graph, passes: tuple[str, ...], calib: list[tuple]):
    from hwact.passes.manager import run_passes

    lowered, _ = run_passes(graph.copy(), list(passes), {}, calib, postconditions=("integer-only",))
    return lowered


def npu(graph, calib: list[tuple], work: Path) -> dict:
    """hwact's tosa-vela backend on the integer `graph` per target: {target: section} with Vela's cycles and
    time, or {"refused": [reasons]} when the TOSA lowering cannot take a node."""
    from hwact.backends.base import EmitContext
    from hwact.backends.tosa_vela import TosaVelaBackend
    from hwact.targets import load_target

    backend = TosaVelaBackend()
    problems = backend.check(graph)
    if problems:
        return {"refused": problems}
    first = calib[0]
    verify = [tuple(t[:VERIFY_SAMPLES] for t in first)]
    rows = {}
    for target in TARGETS:
        options = load_target(target).backend_options["tosa-vela"]
        context = EmitContext(target=load_target(target), options=options, batches=verify, original=None,
                              log=lambda *_: None)
        out = work / target
        out.mkdir(parents=True)
        start = time.perf_counter()
        section = backend.emit(graph, out, context)
        section.update(backend.verify(graph, out, context))
        rows[target] = {**{k: v for k, v in section.items() if k not in ("layers", "artifacts")},
                        "tables": [layer["cycles"] for layer in section["layers"] if layer["operator"] == "Table"],
                        "wall_s": time.perf_counter() - start}
    return rows


def digits_seed(seed: int, rest, test, work: Path) -> dict:
    """vit-digits trained from `seed`: fp32 GELU and ReLU+KD accuracy, then each variant's integer graph:
    top-1 on the test split, cosine to fp32 GELU, Vela per target."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_recovery import BASELINE, KD

    from hwact import models
    from hwact.ir.graph import trace
    from hwact.train.distill import evaluate, predict
    from hwact.train.recover import recover

    def quiet(*_args, **_kwargs):
        pass

    module, specs = models.build("vit-digits", seed=seed)
    start = time.perf_counter()
    trained, _ = recover(trace(module, specs, "vit-digits"), "none", rest,
                         {**BASELINE, "seed": seed, "progress": False}, quiet)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    relu, _ = recover(trained.copy(), "relu", rest, {**KD, "seed": seed, "progress": False, "schedule": "all"}, quiet)
    kd_s = time.perf_counter() - start
    calib = [(rest.x[i:i + 32],) for i in range(0, 256, 32)]
    reference = predict(trained.module, test.x).double()

    def score(graph) -> tuple[float, float]:
        cosine = torch.nn.functional.cosine_similarity(predict(graph.module, test.x).double(), reference).mean()
        return evaluate(graph.module, test, None)["accuracy"], float(cosine)

    result = {"seed": seed, "train_s": train_s, "kd_s": kd_s, "fp32 GELU": score(trained),
              "fp32 ReLU + KD": score(relu)}
    for name, passes in variants().items():
        lowered = lower(relu if name == "ReLU" else trained, passes, calib)
        result[name] = {"accuracy": score(lowered), "npu": npu(lowered, calib, work / f"{seed}-{len(result)}")}
    print(json.dumps(result, default=str)[:2000], flush=True)
    return result


def vit_tiny(work: Path) -> dict:
    from hwact.load import load

    graph = load("zoo:vit-tiny").graph
    calib = [graph.example_inputs(batch=VERIFY_SAMPLES, seed=3)]
    return {name: npu(lower(graph, passes, calib), calib, work / f"tiny-{index}")
            for index, (name, passes) in enumerate(variants().items())}


def cycle_cells(rows: dict) -> str:
    if "refused" in rows:
        return "refused by the TOSA lowering | | | | "
    cells = [f"{r['npu_cycles']:,} ({r['estimated_inference_s'] * 1e3:.3f} ms)" for r in rows.values()]
    tables = " / ".join(f"{len(r['tables'])}: {sum(r['tables']):,}" for r in rows.values())
    return " | ".join(cells) + " | " + " / ".join(str(r["npu_ops"]) for r in rows.values()) + f" | {tables} | " \
        + str(rows[TARGETS[0]]["tosa_ops"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1", help="vit-digits training seeds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ethos_u_gelu.md"))
    args = parser.parse_args()
    from hwact.train.data import load_dataset, split

    digits = load_dataset("digits")
    rest, test = split(digits, 0.2, seed=1234)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ethos-u-gelu-") as work:
        tiny = vit_tiny(Path(work))
        runs = [digits_seed(seed, rest, test, Path(work)) for seed in seeds]
    total = time.perf_counter() - started
    names = list(variants())
    refusals = {name: rows["refused"] for name, rows in tiny.items() if "refused" in rows}
    load = os.getloadavg()
    lines = ["# Arm Ethos-U: GELU table vs ShiftGELU vs GELU -> ReLU (Vela cycles and accuracy)\n",
             f"`python benchmarks/bench_ethos_u_gelu.py --seeds {args.seeds}` on {platform.machine()} "
             f"({os.cpu_count()} CPUs, shared: load average {load[0]:.1f} at the end), torch {torch.__version__}, "
             f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`; {total:.0f} s in all. Each integer "
             "graph lowered by hwact's tosa-vela backend (TOSA reference model bit-exact on 4 calibration samples) and "
             "compiled by Vela 5.2.0 (U55-128: Ethos_U55_High_End_Embedded, Shared_Sram; U85-256: "
             "Ethos_U85_SYS_DRAM_Mid, Dedicated_Sram_384KB). Cycles and times are Vela's static estimates, not "
             "measurements. GELU table = recipe int8-npu; ShiftGELU = shift-gelu instead of lut-gelu; ReLU = "
             "gelu-to-relu + cle, then the same integer passes (npu-layernorm, npu-softmax in all three).\n",
             "## Cycles\n",
             "NPU cycles and, in brackets, the estimated time (Vela derives it from the total cycles, memory "
             "transfers included). TABLE layers: how many, and their cycles in Vela's per-layer estimate (GELU's "
             "tables and npu_softmax's two exponential tables per attention; a TABLE that Vela fuses into the op "
             "before it, as GELU's into its linear, counts 0).\n",
             "| model | GELU form | U55-128 NPU cycles (est. ms) | U85-256 NPU cycles (est. ms) | Vela NPU ops "
             "U55 / U85 | TABLE layers: count: cycles, U55 / U85 | TOSA ops |", "|---|---|---|---|---|---|---|"]
    for name in names:
        lines.append(f"| zoo vit-tiny (random weights) | {name} | {cycle_cells(tiny[name])} |")
    for name in names:
        lines.append(f"| zoo vit-digits (trained, seed {seeds[0]}) | {name} | {cycle_cells(runs[0][name]['npu'])} |")
    for name, reasons in refusals.items():
        why = "; ".join(sorted({r.split(": ", 1)[-1] for r in reasons}))
        lines += ["", f"{name}: refused by hwact's TOSA check ({len(reasons)} nodes): \"{why}\"."]
    lines += ["", "## Accuracy: zoo vit-digits on scikit-learn digits, test split (359 images)\n",
              "Top-1 % / cosine of the logits to the fp32 GELU model's, per training seed; calibration: 256 training "
              "images. The integer graphs run in torch (hwact's integer reference, which the TOSA network equals bit "
              "for bit where it lowers).\n",
              "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean top-1 % | on Ethos-U |",
              "|---|" + "---|" * (len(seeds) + 2)]

    def accuracy_row(label: str, pairs: list, where: str) -> str:
        mean = 100 * sum(p[0] for p in pairs) / len(pairs)
        cells = " | ".join(f"{100 * p[0]:.2f} / {p[1]:.5f}" for p in pairs)
        return f"| {label} | {cells} | {mean:.2f} | {where} |"

    lines.append(accuracy_row("fp32 GELU", [r["fp32 GELU"] for r in runs], "-"))
    lines.append(accuracy_row("fp32 ReLU + KD", [r["fp32 ReLU + KD"] for r in runs], "-"))
    for name in names:
        where = "refused" if "refused" in runs[0][name]["npu"] else "100 % NPU, bit-exact"
        lines.append(accuracy_row(f"int8 {name}", [r[name]["accuracy"] for r in runs], where))
    lines += ["", "Training (GELU, 100 epochs with early stopping) / KD to ReLU, s: "
              + ", ".join(f"seed {r['seed']}: {r['train_s']:.0f} / {r['kd_s']:.0f}" for r in runs) + "."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
