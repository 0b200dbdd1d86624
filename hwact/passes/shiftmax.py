"""shiftmax: replace each softmax float island by I-ViT's integer Shiftmax (hwact::shiftmax).

    softmax(x)_i = e^(x_i − max) / Σ_j e^(x_j − max),  e^t by shifts (ALGORITHMS.md §1.3; the integer
    arithmetic is in hwact/ir/int_nonlinear_ops.py: one division per row, factor = floor(2^62 / Σ e))

Exponent clamp n, per layer: the exponent x − max (real) lies in [lo − hi, 0] for input codes spanning
[lo, hi] = S_in·[qmin_in, qmax_in], so

    n_cover = ceil(1.4375 · (hi − lo))                             no exponent is ever clamped
    n_max   = the largest n with C · |x0| · 2^n <= 2^42            (x0 = floor(−1/S_in), C = row length)
    n       = max(1, min(n_cover, n_max))

recorded with covered = (n >= n_cover). A clamped exponent lifts e^(x − max) to 2^−n (while the row
max's own term is 2^0), so an uncovered layer still errs by at most C·2^−n per row. I-ViT fixes n = 15
(QAT) / 16 (TVM). Matched: aten.softmax.int and aten._softmax.default (half_to_float False).

Before:                                                 After:
    %dq = hwact.dequantize(%q, 0.08)                        %p = hwact.shiftmax(%q, 0.08, 0.0039, -1,
    %s  = aten.softmax.int(%dq, -1)                                             0, 255, 30)
    %p  = hwact.quantize(%s, 0.0039, 0, 255)
"""

from __future__ import annotations

import math

import torch

from hwact.ir.graph import Graph
from hwact.ir.int_nonlinear_ops import softmax_constants, softmax_max_n
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register
from hwact.passes.shift_gelu import LOG2E_SHIFT

hw = torch.ops.hwact
aten = torch.ops.aten
SOFTMAX_OPS = {aten.softmax.int, aten._softmax.default}


def softmax_dim(node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return int(dim)


def row_length(node, dim: int) -> int:
    return int(node.meta["val"].shape[dim])


def choose_clamp(island: Island, channels: int) -> dict:
    lo, hi = island.input_range
    n_cover = max(1, math.ceil(LOG2E_SHIFT * (hi - lo)))
    n_max = softmax_max_n(island.in_scale, channels)
    n = max(1, min(n_cover, n_max))
    return {"n": n, "n_cover": n_cover, "n_max": n_max, "covered": n >= n_cover, "row_length": channels}


@register
class Shiftmax(IslandPass):
    name = "shiftmax"
    preconditions = ("every softmax is a float island hwact.dequantize → aten.softmax → hwact.quantize "
                     "(run fold-quant-scales first)",)
    ops = SOFTMAX_OPS

    def guard(self, graph: Graph, island: Island) -> None:
        """The op's own guards, with the n the pass would pick."""
        channels = row_length(island.op, softmax_dim(island.op))
        softmax_constants(island.in_scale, island.out_scale, choose_clamp(island, channels)["n"], channels)

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        dim = softmax_dim(island.op)
        choice = choose_clamp(island, row_length(island.op, dim))
        return hw.shiftmax.default, (island.q_in, island.in_scale, island.out_scale, dim, island.qmin, island.qmax,
                                     choice["n"]), choice
