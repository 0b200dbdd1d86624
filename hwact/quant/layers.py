"""Weighted layers (linear / conv) of a Graph, seen the way CLE and bias correction need them.

A layer is an aten.linear, aten.conv1d/2d/3d or non-transposed aten.convolution node whose weight (and
bias, if any) are get_attr constants. Its output channels are dim 0 of the weight; its input channels
are dim 1 of a linear weight, and for a conv with `groups` = G the weight (C_out, C_in/G, k...) holds
input channel i = g·(C_in/G) + j at [g·(C_out/G) : (g+1)·(C_out/G), j]. `input_view` rearranges a
weight to (C_in, everything multiplied by that input channel), which is what per-input-channel ranges
and scales act on.

`fake_quantize_weight` is the int8 per-output-channel symmetric weight quantization of the lowering
(scale_c = max|W_c| / 127, q = clamp(round(W/scale), -127, 127)), simulated in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from hwact.ir.graph import Graph
from hwact.ir.params import add_constant, get_tensor

aten = torch.ops.aten
_CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)


@dataclass
class Layer:
    node: torch.fx.Node
    kind: str          # "linear" | "conv"
    groups: int
    padded: bool       # a conv with non-zero padding (zeros enter the window)

    @property
    def input(self) -> torch.fx.Node:
        return self.node.args[0]

    def weight(self, graph: Graph) -> torch.Tensor:
        return get_tensor(graph, self.node.args[1])

    def bias(self, graph: Graph) -> torch.Tensor | None:
        args = self.node.args
        return get_tensor(graph, args[2]) if len(args) > 2 and args[2] is not None else None

    @property
    def channel_axis(self) -> int:
        """Axis of the output tensor that holds the output channels (-1 for linear, 1 for conv)."""
        return -1 if self.kind == "linear" else 1


def as_layer(node) -> Layer | None:
    """The Layer for `node`, or None when it is not a linear/conv with constant weights."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    args = node.args
    if len(args) < 2 or not _is_constant(args[1]) or (len(args) > 2 and args[2] is not None and not _is_constant(args[2])):
        return None
    if node.target is aten.linear.default:
        return Layer(node, "linear", 1, False)
    if node.target in _CONVS:
        padding = _arg(node, 4, "padding", 0)
        return Layer(node, "conv", int(_arg(node, 6, "groups", 1)), _nonzero(padding))
    if node.target is aten.convolution.default and not args[6]:
        return Layer(node, "conv", int(args[8]), _nonzero(args[4]))
    return None


def layers(graph: Graph) -> list[Layer]:
    return [layer for layer in map(as_layer, graph.call_nodes()) if layer is not None]


def _is_constant(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "get_attr"


def _arg(node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _nonzero(padding) -> bool:
    if isinstance(padding, str):
        return padding != "valid"
    if isinstance(padding, (list, tuple)):
        return any(p != 0 for p in padding)
    return padding != 0


def input_view(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_in, M): row i holds every weight that multiplies input channel i."""
    if weight.dim() == 2:
        return weight.t()
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out_channels // groups, in_per_group, -1)
    return grouped.permute(0, 2, 1, 3).reshape(groups * in_per_group, -1)


def scale_inputs(weight: torch.Tensor, groups: int, scale: torch.Tensor) -> torch.Tensor:
    """W with the weights of input channel i multiplied by scale[i]."""
    if weight.dim() == 2:
        return weight * scale.reshape(1, -1)
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out_channels // groups, in_per_group, -1)
    factors = scale.reshape(groups, 1, in_per_group, 1)
    return (grouped * factors).reshape(weight.shape)


def output_ranges(weight: torch.Tensor) -> torch.Tensor:
    """r1_c = max |W[c, ...]| per output channel."""
    return weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)


def input_ranges(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """r2_i = max |W[:, i, ...]| per input channel."""
    return input_view(weight.detach().abs(), groups).amax(dim=1)


def range_spread(ranges: torch.Tensor) -> float:
    """max_c r_c / min_c r_c over channels with a non-zero range (1.0 = perfectly equal)."""
    live = ranges[ranges > 0]
    return float(live.max() / live.min()) if live.numel() else 1.0


def fake_quantize_weight(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Symmetric quantize-dequantize: scale_c = max|W_c|/(2^(b-1)-1) per output channel (the lowering's
    rule), or one scale max|W|/(2^(b-1)-1) for the whole tensor when per_channel is False."""
    qmax = 2 ** (bits - 1) - 1
    ranges = output_ranges(weight).clamp_min(1e-30)
    if not per_channel:
        ranges = torch.full_like(ranges, float(ranges.max()))
    scale = (ranges / qmax).reshape(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale


def set_parameters(graph: Graph, layer: Layer, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   stem: str) -> None:
    """Point `layer` at fresh constants `<stem>_weight_N` / `<stem>_bias_N` (None keeps the old one)."""
    args = list(layer.node.args) + [None] * max(0, 3 - len(layer.node.args))
    if weight is not None:
        args[1] = add_constant(graph, f"{stem}_weight", weight, layer.node)
    if bias is not None:
        args[2] = add_constant(graph, f"{stem}_bias", bias, layer.node)
    layer.node.args = tuple(args)


def weight_quantized(graph: Graph, bits: int = 8, per_channel: bool = True) -> Graph:
    """A copy of `graph` whose layer weights are fake-quantized (int8 per output channel by default)."""
    result = graph.copy()
    for layer in layers(result):
        weight = layer.weight(result)
        set_parameters(result, layer, fake_quantize_weight(weight.detach(), bits, per_channel), None, "fake_quant")
    result.recompile()
    return result
