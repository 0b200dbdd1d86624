"""fold-layer-scale: fold a constant per-channel scale (ConvNeXt/CaiT "layer scale") into the linear or
conv that feeds it.

With y = W·x + b and a constant γ with one value per output channel c of that layer,

    γ_c · y_c = (γ_c · W_c)·x + γ_c · b_c          W'_c = γ_c · W_c,   b'_c = γ_c · b_c

exact up to float rounding. γ must broadcast over the layer's channel axis only: shape (C,) (or with
leading 1s) on a linear's last axis, shape (C, 1, ..., 1) on a conv's axis 1. Integer lowering
(fold-quant-scales) turns linears and convs into integer matmuls but has no integer op for an
elementwise product with a float tensor, so the int8 recipes run this first.

Before:                                          After:
    %fc2 = aten.linear(%h, %w, %b)                  %fc2 = aten.linear(%h, %w_scaled, %b_scaled)
    %mul = aten.mul.Tensor(%gamma, %fc2)            (uses of %mul read %fc2)
"""

from __future__ import annotations

import torch

from hwact.ir.graph import Graph
from hwact.ir.params import get_tensor
from hwact.passes.base import Pass, register
from hwact.passes.fold_bn import scale_layer_output

aten = torch.ops.aten
_LAYERS = (aten.linear.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)


def _constant(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "get_attr"


def _channel_scale(graph: Graph, layer, other) -> torch.Tensor | None:
    """γ as a (C_out,) vector when `other` is a constant that scales `layer`'s output per channel only."""
    if not _constant(other):
        return None
    gamma = get_tensor(graph, other).detach()
    value = layer.meta.get("val")
    if not isinstance(value, torch.Tensor) or not gamma.is_floating_point():
        return None
    channels = get_tensor(graph, layer.args[1]).shape[0]
    if layer.target is aten.linear.default:
        fits = gamma.dim() <= value.dim() and gamma.shape[-1:] == (channels,) and all(d == 1 for d in gamma.shape[:-1])
    else:
        trailing = value.dim() - 2
        fits = (gamma.dim() == trailing + 1 and gamma.shape[0] == channels
                and all(d == 1 for d in gamma.shape[1:]))
    return gamma.reshape(channels) if fits else None


@register
class FoldLayerScale(Pass):
    name = "fold-layer-scale"
    tolerance = 1e-4

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        changed = 0
        for mul in graph.call_nodes():
            if mul.target is not aten.mul.Tensor or len(mul.args) != 2:
                continue
            for layer, other in (mul.args, reversed(mul.args)):
                if not (isinstance(layer, torch.fx.Node) and layer.target in _LAYERS and len(layer.users) == 1):
                    continue
                gamma = _channel_scale(graph, layer, other)
                if gamma is not None:
                    self._fold(graph, layer, mul, gamma)
                    changed += 1
                    break
        if changed:
            graph.recompile()
        return graph, changed

    @staticmethod
    def _fold(graph: Graph, layer, mul, gamma: torch.Tensor) -> None:
        scale_layer_output(graph, layer, gamma, torch.zeros_like(gamma), "scaled")
        mul.replace_all_uses_with(layer)
        graph.fx.erase_node(mul)
