"""fold-bn: fold an inference-mode BatchNorm into the conv or linear that feeds it.

With BN(y) = γ·(y − μ)/√(σ² + ε) + β and y = W·x + b (b = 0 when the layer has no bias), per output
channel c with s_c = γ_c/√(σ²_c + ε):

    W'_c = s_c · W_c          b'_c = s_c · (b_c − μ_c) + β_c          BN(W·x + b) = W'·x + b'

exact up to float rounding. Applies to conv1d/conv2d/convolution (not transposed) and to linear whose
output is (N, C) (BatchNorm1d normalizes dim 1, which is the linear's output features only then).

Before:                                          After:
    %conv = aten.conv2d(%x, %w, None, ...)          %conv = aten.conv2d(%x, %w_folded, %b_folded, ...)
    %bn = aten.batch_norm(%conv, %g, %b, %m, %v,
                          False, 0.1, 1e-5, True)
    %relu = aten.relu(%bn)                          %relu = aten.relu(%conv)
"""

from __future__ import annotations

import torch

from hwact.ir.graph import Graph
from hwact.ir.params import add_constant, get_tensor
from hwact.passes.base import Pass, register

aten = torch.ops.aten
_CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)
_BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


def _bn_parts(bn):
    """(input, γ, β, μ, σ², eps) node/values of a batch-norm node, or None when in training mode."""
    if bn.target is aten.batch_norm.default:
        x, w, b, mean, var, training, _momentum, eps = bn.args[:8]
        return None if training else (x, w, b, mean, var, eps)
    x, w, b, mean, var, _momentum, eps = bn.args[:7]
    return (x, w, b, mean, var, eps)


def _foldable_producer(node) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or len(node.users) != 1:
        return False
    if node.target in _CONVS:
        return True
    if node.target is aten.convolution.default:
        return not node.args[6]  # transposed
    if node.target is aten.linear.default:
        value = node.meta.get("val")
        return value is not None and value.dim() == 2
    return False


def scale_layer_output(graph: Graph, layer, scale: torch.Tensor, offset: torch.Tensor, stem: str) -> None:
    """Make the conv/linear `layer` compute scale_c · y_c + offset_c per output channel c of y = W·x + b:
    W'_c = scale_c · W_c, b'_c = scale_c · b_c + offset_c (b = 0 when the layer has none)."""
    weight = get_tensor(graph, layer.args[1])
    bias_node = layer.args[2] if len(layer.args) > 2 else None
    bias = get_tensor(graph, bias_node) if bias_node is not None else torch.zeros(weight.shape[0])
    w_node = add_constant(graph, f"{stem}_weight", weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), layer)
    b_node = add_constant(graph, f"{stem}_bias", bias * scale + offset, layer)
    args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
    args[1], args[2] = w_node, b_node
    layer.args = tuple(args)


@register
class FoldBatchNorm(Pass):
    name = "fold-bn"
    preconditions = ("BatchNorm runs in inference mode (running statistics)",)
    tolerance = 1e-4

    def check(self, graph: Graph) -> list[str]:
        return [f"{n.name}: batch_norm in training mode (batch statistics) cannot be folded"
                for n in graph.call_nodes() if n.target in _BATCH_NORMS and _bn_parts(n) is None]

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        changed, kept = 0, []
        for bn in graph.call_nodes():
            if bn.target not in _BATCH_NORMS or _bn_parts(bn) is None:
                continue
            x, gamma, beta, mean, var, eps = _bn_parts(bn)
            if not _foldable_producer(x):
                kept.append(bn.name)
                continue
            self._fold(graph, x, bn, [get_tensor(graph, n) for n in (gamma, beta, mean, var)], eps)
            changed += 1
        # a BatchNorm after something other than a single-use conv/linear stays (it is a scale and shift)
        kept_names = ", ".join(kept)
        self.note = f"kept {len(kept)} BatchNorm not fed by a single-use conv/linear: {kept_names}" if kept else ""
        if changed:
            graph.recompile()
        return graph, changed

    @staticmethod
    def _fold(graph: Graph, layer, bn, stats, eps: float) -> None:
        gamma, beta, mean, var = stats
        scale = (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
        shift = beta if beta is not None else torch.zeros_like(var)
        scale_layer_output(graph, layer, scale, shift - mean * scale, "folded")
        layer.meta = dict(bn.meta, nn_module_stack=layer.meta.get("nn_module_stack", {}))
        bn.replace_all_uses_with(layer)
        graph.fx.erase_node(bn)
