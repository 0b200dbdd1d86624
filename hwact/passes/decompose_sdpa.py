"""decompose-sdpa: write scaled_dot_product_attention out as the ops the integer lowering knows.

    SDPA(q, k, v, mask, is_causal, scale) = softmax(masked(q·kᵀ·s)) · v,   s = scale or 1/√E

    masked(a) = where(causal, a, −inf)          is_causal: causal = tril(ones(L, S)), a constant: query i
                                                attends keys j ≤ i, aligned top-left as torch's SDPA does
                                                when L ≠ S (not bottom-right)
              = where(mask, a, −inf)            boolean mask (True = attend)
              = where(keep, a + finite, −inf)   additive float mask M: keep = M > −1e9 (HF writes
                                                finfo.min, torch −inf), finite = where(keep, M, 0)

dropout_p is ignored (models are converted in eval mode); enable_gqa repeats each key/value head
H_q / H_kv times along the head axis. fold-quant-scales then lowers q·kᵀ and p·v to integer matmuls,
folds s into the scores' scale and the −inf fill into a masked integer fill (the row's lowest code),
and shiftmax replaces the softmax. A constant mask (Swin's shifted windows, GPT-2's causal mask) is
folded to constants by cleanup.

Before:                                               After:
    %o = aten.scaled_dot_product_attention(              %kt = aten.transpose.int(%k, -2, -1)
             %q, %k, %v, %mask, scale=0.25)              %a  = aten.matmul(%q, %kt)
                                                         %s  = aten.mul.Tensor(%a, 0.25)
                                                         %m  = aten.where.ScalarOther(%mask, %s, -inf)
                                                         %p  = aten.softmax.int(%m, -1)
                                                         %o  = aten.matmul(%p, %v)
"""

from __future__ import annotations

import math

import torch
import torch.fx

from hwact.ir.graph import Graph
from hwact.ir.params import add_constant
from hwact.passes._rewrite import call, replace
from hwact.passes.base import Pass, register

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
MASKED_BELOW = -1e9


def _argument(node: torch.fx.Node, index: int, name: str, default):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


@register
class DecomposeSdpa(Pass):
    name = "decompose-sdpa"
    tolerance = 1e-4

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        nodes = [n for n in graph.call_nodes() if n.target is SDPA]
        for node in nodes:
            with graph.fx.inserting_before(node):
                replace(graph, node, self._attention(graph, node))
        if nodes:
            graph.fx.eliminate_dead_code()
            graph.recompile()
        return graph, len(nodes)

    @staticmethod
    def _attention(graph: Graph, node: torch.fx.Node) -> torch.fx.Node:
        q, k, v = node.args[:3]
        mask = _argument(node, 3, "attn_mask", None)
        causal = bool(_argument(node, 5, "is_causal", False))
        scale = _argument(node, 6, "scale", None)
        q_shape, k_shape = q.meta["val"].shape, k.meta["val"].shape
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(int(q_shape[-1]))
        if bool(_argument(node, 7, "enable_gqa", False)) and int(q_shape[-3]) != int(k_shape[-3]):
            repeats = int(q_shape[-3]) // int(k_shape[-3])
            k = call(graph, aten.repeat_interleave.self_int, (k, repeats, -3), node)
            v = call(graph, aten.repeat_interleave.self_int, (v, repeats, -3), node)
        scores = call(graph, aten.matmul.default, (q, call(graph, aten.transpose.int, (k, -2, -1), node)), node)
        scores = call(graph, aten.mul.Tensor, (scores, scale), node)
        if causal:
            length, source = int(q_shape[-2]), int(k_shape[-2])
            table = torch.ones(length, source, dtype=torch.bool).tril(diagonal=0)
            causal_mask = add_constant(graph, "causal_mask", table, node, trainable=False)
            scores = call(graph, aten.where.ScalarOther, (causal_mask, scores, float("-inf")), node)
        if isinstance(mask, torch.fx.Node) and mask.meta["val"].dtype == torch.bool:
            scores = call(graph, aten.where.ScalarOther, (mask, scores, float("-inf")), node)
        elif isinstance(mask, torch.fx.Node):
            keep = call(graph, aten.gt.Scalar, (mask, MASKED_BELOW), node)
            finite = call(graph, aten.where.ScalarOther, (keep, mask, 0.0), node)
            scores = call(graph, aten.add.Tensor, (scores, finite), node)
            scores = call(graph, aten.where.ScalarOther, (keep, scores, float("-inf")), node)
        probabilities = call(graph, aten.softmax.int, (scores, -1), node)
        return call(graph, aten.matmul.default, (probabilities, v), node)
