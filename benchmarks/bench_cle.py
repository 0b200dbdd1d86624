"""CLE / bias correction: weight-range spread and weight-quantized output error, with and without.

For each model (zoo cnn-tiny and resnet18 with non-trivial BatchNorm statistics, folded by fold-bn; zoo
vit-digits after gelu-to-relu) the script reports
  * the per-channel weight range spread max_c r_c / min_c r_c of every layer CLE pairs (geometric mean over
    the paired layers' output ranges r1 and input ranges r2), before and after `cle`;
  * the output error of the weight-fake-quantized model against the float model it came from
    (mean squared error and max abs error of all outputs, top-1 agreement) on held-out random inputs, for
    int8 and int4 weights, per-tensor and per-output-channel scales, under four pipelines:
    none | cle | bias-correction | cle + bias-correction.
The anchor of every error is the float model of the same run ("none" error = plain weight quantization).
Calibration: 64 seeded random samples; evaluation: 256 other seeded random samples.
BatchNorm statistics: seeded random (mean ~ N(0,1), var ~ U(0.1, 2.1), gamma and beta ~ N(0,1)), which
gives folded weights the per-channel imbalance trained networks have; the zoo's default BN is identity.

    python benchmarks/bench_cle.py [--out benchmarks/results/cle.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

from hwact import models
from hwact.ir.graph import trace
from hwact.passes.cle import find_pairs
from hwact.passes.manager import random_batches, run_outputs, run_passes
from hwact.quant.layers import input_ranges, output_ranges, range_spread, weight_quantized

MODELS = [("cnn-tiny", ["fold-bn"]), ("resnet18", ["fold-bn"]), ("vit-digits", ["gelu-to-relu"])]
PIPELINES = [("none", []), ("cle", ["cle"]), ("bias-correction", ["bias-correction"]),
             ("cle + bias-correction", ["cle", "bias-correction"])]
SETTINGS = [(8, False), (8, True), (4, False), (4, True)]  # (bits, per_channel)


def randomize_bn(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=generator))
            bn.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.1)
            if bn.affine:
                bn.weight.data.copy_(torch.randn(c, generator=generator))
                bn.bias.data.copy_(torch.randn(c, generator=generator))
    return module


def mean_spread(graph) -> float:
    logs = []
    for pair in find_pairs(graph):
        if pair.blocked:
            continue
        logs.append(math.log(range_spread(output_ranges(pair.first.weight(graph)))))
        logs.append(math.log(range_spread(input_ranges(pair.second.weight(graph), pair.second.groups))))
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def errors(reference, graph, batches, bits, per_channel):
    quantized = run_outputs(weight_quantized(graph, bits, per_channel), batches)
    diff = quantized.flat - reference.flat
    top1 = (quantized.classes == reference.classes).double().mean().item() if reference.classes is not None else None
    return (diff ** 2).mean().item(), diff.abs().max().item(), top1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/cle.md")
    args = parser.parse_args()
    lines = ["# Cross-layer equalization and bias correction (hwact issue 4, calibration area)", "",
             f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
             f"torch {torch.__version__}. Command: `python benchmarks/bench_cle.py`.", "",
             "Error = weight-fake-quantized model vs the float model it came from, on 256 held-out random "
             "inputs (calibration: 64 other random inputs). `pc` = per-output-channel weight scales (what "
             "fold-quant-scales uses), `pt` = one scale per tensor. bias-correction is run for the same "
             "bits/granularity it is evaluated with.", ""]
    for name, prefix in MODELS:
        module, specs = models.build(name)
        graph = trace(randomize_bn(module).eval(), specs)
        calib = random_batches(graph.inputs, 64, 16, seed=0)
        held_out = random_batches(graph.inputs, 256, 32, seed=7)
        graph, _ = run_passes(graph, prefix, {}, calib)
        reference = run_outputs(graph, held_out)
        equalized, records = run_passes(graph.copy(), ["cle"], {}, calib)
        spread_before, spread_after = mean_spread(graph), mean_spread(equalized)
        info = equalized.meta["hwact_cle"]
        lines += [f"## {name} (after {', '.join(prefix)})", "",
                  f"CLE: {info['pairs']} pairs, {info['sweeps']} sweeps, {info['absorbed_channels']} channels "
                  f"with high-bias absorption; float max abs change {records[0].max_abs_err:.2e} "
                  f"on the calibration inputs.", "",
                  f"Weight range spread (geometric mean over paired layers of max_c r_c / min_c r_c): "
                  f"{spread_before:.2f} before, {spread_after:.2f} after cle.", "",
                  "| weights | pipeline | output MSE | max abs err | top-1 agreement | seconds |",
                  "|---|---|---|---|---|---|"]
        print(lines[-5])
        for bits, per_channel in SETTINGS:
            for label, passes in PIPELINES:
                start = time.perf_counter()
                options = {"weight_bits": bits, "per_channel_weights": per_channel}
                processed, _ = run_passes(graph.copy(), passes, options, calib) if passes else (graph, [])
                seconds = time.perf_counter() - start
                mse, worst, top1 = errors(reference, processed, held_out, bits, per_channel)
                row = (f"| int{bits} {'pc' if per_channel else 'pt'} | {label} | {mse:.3e} | {worst:.3e} | "
                       f"{'-' if top1 is None else f'{top1:.3f}'} | {seconds:.2f} |")
                print(name, row, flush=True)
                lines.append(row)
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
