"""shift-gelu: replace each GELU float island by I-ViT's integer ShiftGELU (hwact::shift_gelu).

    GELU(x) ≈ x · σ(1.702 x),  σ(a) = e^(a-m) / (e^(a-m) + e^(-m)),  e^t by shifts (ALGORITHMS.md §1.4;
    the integer arithmetic is in hwact/ir/int_nonlinear_ops.py)

Exponent clamp n, per layer. The shift exponential clamps its log2 exponent at -n. The input codes span
the real range [S_in·qmin_in, S_in·qmax_in] = [lo, hi] (qmin_in/qmax_in from the op producing q_in),
so the exponents a - m and -m (m = max(row max, 0) <= max(hi, 0)) lie in
[-1.702·1.4375·(max(hi,0) - min(lo,0)), 0]. The pass takes

    n_cover = ceil(1.702 · 1.4375 · (max(hi, 0) - min(lo, 0)))     no exponent is ever clamped
    n_max   = the largest n with |x0| · 2^(n+15) < 2^63            (int64 guard, x0 = floor(-1/(1.702 S_in)))
    n       = max(1, min(n_cover, n_max))

and records covered = (n >= n_cover). When not covered, the clamp can only lift e^(a-m) to 2^-n while
e^(-m) >= 2^-(1.702·1.4375·hi); the recorded gate_floor_bits = n - ceil(1.702·1.4375·max(hi,0)) bounds
that σ error by 2^-gate_floor_bits. (I-ViT fixes n = 23: once a row max passes ≈ 9.4, σ collapses to
0.5 — the cliff measured in benchmarks/results/int_gelu.md.) Both approximate modes of aten.gelu
(erf, tanh) are replaced by the same op.

Before:                                                 After:
    %dq = hwact.dequantize(%q, 0.063)                       %y = hwact.shift_gelu(%q, 0.063, 0.05,
    %g  = aten.gelu(%dq)                                                          -128, 127, 44)
    %y  = hwact.quantize(%g, 0.05, -128, 127)
"""

from __future__ import annotations

import math

import torch

from hwact.ir.graph import Graph
from hwact.ir.int_nonlinear_ops import SHIFT_GELU_LAMBDA, gelu_constants, gelu_max_n
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register

hw = torch.ops.hwact
GELU_OPS = {torch.ops.aten.gelu.default}
LOG2E_SHIFT = 1.4375  # x + (x >> 1) - (x >> 4)


def choose_clamp(island: Island, lam: float) -> dict:
    """The exponent clamp n for one GELU island and whether it covers the island's input range."""
    lo = min(island.input_range[0], 0.0)
    hi = max(island.input_range[1], 0.0)
    slope = lam * LOG2E_SHIFT
    n_cover = max(1, math.ceil(slope * (hi - lo)))
    n_max = gelu_max_n(island.in_scale, lam)
    n = max(1, min(n_cover, n_max))
    return {"n": n, "n_cover": n_cover, "n_max": n_max, "covered": n >= n_cover,
            "gate_floor_bits": n - math.ceil(slope * hi)}


@register
class ShiftGelu(IslandPass):
    name = "shift-gelu"
    preconditions = ("every GELU is a float island hwact.dequantize → aten.gelu → hwact.quantize "
                     "(run fold-quant-scales first)",)
    ops = GELU_OPS

    def guard(self, graph: Graph, island: Island) -> None:
        """The op's own guards, with the n the pass would pick."""
        gelu_constants(island.in_scale, island.out_scale, choose_clamp(island, SHIFT_GELU_LAMBDA)["n"],
                       SHIFT_GELU_LAMBDA)

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        choice = choose_clamp(island, SHIFT_GELU_LAMBDA)
        return hw.shift_gelu.default, (island.q_in, island.in_scale, island.out_scale, island.qmin, island.qmax,
                                       choice["n"]), choice
