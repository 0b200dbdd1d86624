"""bias-correction: empirical bias correction for int8 weight quantization (Nagel et al. 2019, §4.2).

Quantizing a layer's weights, W̃ = Q(W), shifts the mean of its output:
    E[W̃ x] − E[W x] = E[ε x],   ε = W̃ − W.
The pass estimates E[ε x] per output channel over the calibration batches (x = the layer's input in the
float graph, the mean taken over samples and over every spatial/token position) and folds it into the
bias, so that the weight-quantized layer has the float layer's output mean:

    b ← b − E[ε x]          (then E[W̃ x + b_new] = E[W x + b])

Q is the lowering's weight quantization: symmetric per output channel, scale_c = max|W_c|/127,
q = clamp(round(W/scale), −127, 127) (hwact.quant.layers.fake_quantize_weight); options weight_bits
(default 8) and per_channel_weights (default True; False = one scale per tensor). The weights themselves
stay float; fold-quant-scales quantizes them afterwards. Each layer is corrected with the float inputs
of the original graph (all layers in one run), not with the inputs of an already-quantized prefix.
The float graph's own outputs move by E[ε x] per layer (lossy by design: no tolerance is declared);
the graph it is meant for, the weight-quantized one, moves closer to the float original.

Before:                                       After:
    %fc = aten.linear(%x, %w, %b)                %fc = aten.linear(%x, %w, %b_corrected)
    %conv = aten.conv2d(%y, %k, None, ...)       %conv = aten.conv2d(%y, %k, %b_corrected_1, ...)
"""

from __future__ import annotations

import torch
import torch.fx

from hwact.errors import InputError
from hwact.ir.graph import Graph
from hwact.ir.record import Recorder
from hwact.passes.base import Pass, register
from hwact.quant.layers import Layer, fake_quantize_weight, layers, set_parameters


def error_means(graph: Graph, targets: dict, batches: list[tuple]) -> dict[torch.fx.Node, torch.Tensor]:
    """E[ε x] per output channel of each layer in `targets` (node -> (layer, ε = Q(W) − W)): the float graph
    runs on the batches and each target layer is evaluated once more with ε as weight and no bias
    (memory: one vector per layer)."""
    sums: dict[torch.fx.Node, torch.Tensor] = {}
    counts: dict[torch.fx.Node, int] = {}

    def accumulate(node: torch.fx.Node, value) -> None:
        if node not in targets:
            return
        layer, epsilon = targets[node]
        args, kwargs = recorder.inputs(node)
        args = list(args) + [None] * max(0, 3 - len(args))
        args[1], args[2] = epsilon, None
        shifted = node.target(*args, **kwargs)
        channels = shifted.movedim(layer.channel_axis, 0).reshape(shifted.shape[layer.channel_axis], -1)
        sums[node] = sums.get(node, 0) + channels.double().sum(1)
        counts[node] = counts.get(node, 0) + channels.shape[1]

    recorder = Recorder(graph.module, accumulate)
    recorder.run_batches(batches)
    return {node: sums[node] / counts[node] for node in sums}


@register
class BiasCorrection(Pass):
    name = "bias-correction"
    takes = ("calibration_batches", "weight_bits", "per_channel_weights")
    preconditions = ("calibration batches are given",)
    tolerance = None

    def __init__(self, calibration_batches: list[tuple] | None = None, weight_bits: int = 8,
                 per_channel_weights: bool = True):
        if not 2 <= weight_bits <= 16:
            raise InputError(f"bias-correction: weight_bits must lie in [2, 16], got {weight_bits}")
        self.batches = list(calibration_batches or [])
        self.bits = weight_bits
        self.per_channel = per_channel_weights

    def check(self, graph: Graph) -> list[str]:
        return [] if self.batches else ["graph: no calibration batches were given"]

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        if not self.batches:
            raise InputError("bias-correction: no calibration batches", hint="give --calib FILE.npz")
        targets: dict[torch.fx.Node, tuple[Layer, torch.Tensor]] = {}
        for layer in layers(graph):
            weight = layer.weight(graph).detach()
            targets[layer.node] = (layer, fake_quantize_weight(weight, self.bits, self.per_channel) - weight)
        if not targets:
            return graph, 0
        means = error_means(graph, targets, self.batches)
        changed = 0
        for node, (layer, _) in targets.items():
            if node not in means:
                continue
            shift = means[node]                                       # E[ε x] per output channel
            if not bool((shift != 0).any()):
                continue
            weight = layer.weight(graph)
            bias = layer.bias(graph)
            bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
            set_parameters(graph, layer, None, (bias - shift).to(weight.dtype), "corrected")
            changed += 1
        if changed:
            graph.recompile()
        graph.meta["hwact_bias_correction"] = {"layers": changed, "weight_bits": self.bits}
        return graph, changed
