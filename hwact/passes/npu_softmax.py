"""npu-softmax: replace each softmax float island by hwact::npu_softmax, a softmax in the int32 arithmetic that
TOSA and Arm Ethos-U take (hwact/ir/int_npu_ops.py: an exact exponential table, CLZ normalization, a Newton
reciprocal in MULs; no division, no 64-bit value).

    softmax(x)_i = e^(x_i − max) / Σ_j e^(x_j − max),  e^(−k · step) = E[k] / A for k = 0..255

Exponent step, per layer: the input codes span [lo, hi] (their producer's bounds).

    span <= 255 codes:   step = S_in                         every code difference has its own table entry (exact)
    wider (int16):       step = max(S_in, min((hi − lo) · S_in, ln(4 A_max)) / 255)

(A_max = 65535: past ln(4 A_max) every entry rounds to 0, so a masked score, int16's lowest code, gets weight 0.) The softmax must run over the last dim (the op
reduces along the channel axis, which Ethos-U reduces natively); another dim fails the precondition.

Before:                                                 After:
    %dq = hwact.dequantize(%q, 0.0093)                      %p = hwact.npu_softmax(%q, 0.0093, 0.00062, -1,
    %s  = aten.softmax.int(%dq, -1)                                                0, 255, 0.0093)
    %p  = hwact.quantize(%s, 0.00062, 0, 255)
"""

from __future__ import annotations

import math

import torch

from hwact.errors import PreconditionError
from hwact.ir.graph import Graph
from hwact.ir.int_npu_ops import EXP_AMPLITUDE, EXP_TABLE_SIZE, softmax_npu_constants
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register
from hwact.passes.shiftmax import SOFTMAX_OPS, row_length, softmax_dim

hw = torch.ops.hwact


def choose_step(island: Island) -> float:
    lo, hi = island.in_bounds
    if hi - lo < EXP_TABLE_SIZE:
        return island.in_scale
    cover = min((hi - lo) * island.in_scale, math.log(4 * EXP_AMPLITUDE))
    return max(island.in_scale, cover / (EXP_TABLE_SIZE - 1))


def _last_dim(island: Island) -> int:
    dim = softmax_dim(island.op)
    rank = island.op.meta["val"].dim()
    if dim % rank != rank - 1:
        raise PreconditionError(f"{island.name}: softmax over dim {dim} of a rank-{rank} tensor; npu-softmax takes "
                                "the last dim only")
    return dim


@register
class NpuSoftmax(IslandPass):
    name = "npu-softmax"
    preconditions = ("every softmax is a float island hwact.dequantize → aten.softmax → hwact.quantize "
                     "(run fold-quant-scales first) over the last dim",)
    ops = SOFTMAX_OPS

    def guard(self, graph: Graph, island: Island) -> None:
        dim = _last_dim(island)
        softmax_npu_constants(island.in_scale, island.out_scale, row_length(island.op, dim), choose_step(island))

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        dim = _last_dim(island)
        step = choose_step(island)
        return hw.npu_softmax.default, (island.q_in, island.in_scale, island.out_scale, dim, island.qmin,
                                        island.qmax, step), {"exp_step": step, "row_length": row_length(island.op, dim),
                                                             "exact_exponent": step == island.in_scale}
