"""npu-softmax: replace each softmax float island by hwact::npu_softmax, a softmax in the int32 arithmetic that
TOSA and Arm Ethos-U take (hwact/ir/int_npu_ops.py: the exponential from int8 TABLEs, CLZ normalization, a
Newton reciprocal in MULs; no division, no 64-bit value).

    softmax(x)_i = e^(x_i − max) / Σ_j e^(x_j − max)

Exponential form, per layer (the op's `wide`): the input codes span [lo, hi] (their producer's bounds).

    hi − lo <= 255 (int8 scores)                     narrow: one exact table entry per code difference
    wider (int16, masked scores), or no op declares  wide: the base-2 exponent in steps of 1/256 (0.14 % relative)

The softmax must run over the last dim (the op reduces along the channel axis, which Ethos-U reduces natively);
another dim fails the precondition.

Before:                                                 After:
    %dq = hwact.dequantize(%q, 0.0093)                      %p = hwact.npu_softmax(%q, 0.0093, 0.00062, -1,
    %s  = aten.softmax.int(%dq, -1)                                                0, 255, False)
    %p  = hwact.quantize(%s, 0.00062, 0, 255)
"""

from __future__ import annotations

import torch

from hwact.errors import PreconditionError
from hwact.ir.graph import Graph
from hwact.ir.int_npu_ops import softmax_npu_constants
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register
from hwact.passes.shiftmax import SOFTMAX_OPS, row_length, softmax_dim

hw = torch.ops.hwact


def is_wide(island: Island) -> bool:
    lo, hi = island.in_bounds
    return hi - lo > 255 or not island.in_bounds_known


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
        softmax_npu_constants(island.in_scale, island.out_scale, row_length(island.op, dim), is_wide(island))

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        dim = _last_dim(island)
        wide = is_wide(island)
        return hw.npu_softmax.default, (island.q_in, island.in_scale, island.out_scale, dim, island.qmin,
                                        island.qmax, wide), {"wide": wide, "row_length": row_length(island.op, dim)}
