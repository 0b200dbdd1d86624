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
from hwact.passes.base import Pass, register
from hwact.quant.layers import Layer, fake_quantize_weight, layers, set_parameters


class _ErrorMeans(torch.fx.Interpreter):
    """Runs the float graph; at each layer also evaluates the layer with ε = Q(W) − W and no bias,
    accumulating per-output-channel sums of ε·x (memory: one vector per layer)."""

    def __init__(self, module, errors: dict):
        super().__init__(module)
        self.errors = errors                        # node -> (layer, ε)
        self.sums: dict[torch.fx.Node, torch.Tensor] = {}
        self.counts: dict[torch.fx.Node, int] = {}

    def run_node(self, node):
        result = super().run_node(node)
        if node in self.errors:
            layer, epsilon = self.errors[node]
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            args = list(args) + [None] * max(0, 3 - len(args))
            args[1], args[2] = epsilon, None
            shifted = node.target(*args, **kwargs)
            channels = shifted.movedim(layer.channel_axis, 0).reshape(shifted.shape[layer.channel_axis], -1)
            self.sums[node] = self.sums.get(node, 0) + channels.double().sum(1)
            self.counts[node] = self.counts.get(node, 0) + channels.shape[1]
        return result


@register
class BiasCorrection(Pass):
    name = "bias-correction"
    takes = ("calibration_batches",)
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
        runner = _ErrorMeans(graph.module, targets)
        with torch.no_grad():
            for batch in self.batches:
                runner.run(*batch)
        changed = 0
        for node, (layer, _) in targets.items():
            if node not in runner.sums:
                continue
            shift = runner.sums[node] / runner.counts[node]          # E[ε x] per output channel
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
