"""lut-activations: replace each float island around a function of one input (SiLU, sigmoid, tanh,
hard-swish, hard-sigmoid, ELU, Mish, leaky ReLU, softplus, hard-tanh / ReLU6) by a lookup table
(hwact::int_lut, hwact/ir/int_elementwise_ops.py), bit-identical to the island.

The island fold-quant-scales leaves, q_in → dequantize(S_in) → f → quantize(S_out, qmin, qmax), maps
each input code to one output code, and q_in takes only the codes [qmin_in, qmax_in] its producer declares
(Island.in_bounds: 256 codes for int8/uint8, 65536 for int16). The pass evaluates the island itself on
every one of them, with the graph's own ops, and stores the results:

    table[i] = hwact.quantize(f(hwact.dequantize(qmin_in + i, S_in)), S_out, qmin, qmax)    i = 0 .. N − 1
             = clamp(round_half_to_even(f(float32(qmin_in + i) · S_in) / S_out), qmin, qmax)   (float32)
    N        = qmax_in − qmin_in + 1 <= 65536

f is the island's aten op called with the island's own extra arguments (leaky ReLU's slope, ELU's alpha,
softplus's beta and threshold, hard-tanh's bounds, GELU's approximate=...), in float32, so the table holds
exactly the codes the island computes and the lowered graph's outputs equal the island graph's
(tolerance 0: the pass manager checks this on the calibration batches).

One caveat, measured per island: PyTorch's CPU kernels compute f on the vectorized body of a tensor and
on its tail (or a strided tensor) with different code, which can differ by one float ulp (SiLU, sigmoid,
ELU, Mish, softplus, GELU; the piecewise-linear ones never). The table takes the vectorized value and
the pass evaluates the other path too: a code whose quantized value differs between the two (the float
result within one ulp of a rounding tie, not seen in practice) depends on where it sits in the tensor,
so no table can match the island everywhere. Such codes are counted per layer (path_dependent_codes) and,
when any exist, the run declares no tolerance and says so in its note instead of claiming exactness.

An island whose input codes have unknown bounds (q_in not made by a hwact op that declares them, e.g. an
aten.cat or a graph input) is refused: a table sized for int8 would be indexed outside it. So is one
whose op reads another tensor (not a function of one input) or gives a non-finite value on some code.
GELU is left to shift-gelu (the int8-shiftgelu recipe); lut-gelu (hwact/passes/lut_gelu.py) is this pass
for GELU.

Before:                                              After:
    %dq = hwact.dequantize(%q, 0.047)                    %t = get_attr[int32, 256]
    %s  = aten.silu(%dq)                                 %y = hwact.int_lut(%q, %t, -128, -128, 127)
    %y  = hwact.quantize(%s, 0.023, -128, 127)
"""

from __future__ import annotations

import torch
import torch.fx

from hwact.errors import PreconditionError
from hwact.ir.graph import Graph
from hwact.ir.int_elementwise_ops import TABLE_LIMIT  # (importing it registers hwact::int_lut)
from hwact.ir.params import add_constant
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register

hw = torch.ops.hwact
aten = torch.ops.aten

BLOCK = 4096   # codes per evaluation: a multiple of every vectorized step (2 · 16 float32 lanes on AVX-512)


def _overloads(*names: str) -> set:
    """aten.<name>.default for each name this torch has (the in-place forms are named with a trailing _)."""
    return {getattr(aten, name).default for name in names if hasattr(aten, name)}


LUT_OPS = _overloads("silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardswish_",
                     "hardsigmoid", "hardsigmoid_", "elu", "elu_", "mish", "mish_", "leaky_relu", "leaky_relu_",
                     "softplus", "hardtanh", "hardtanh_", "relu6", "relu6_")


def table_span(island: Island) -> tuple[int, int]:
    """(qmin_in, qmax_in) the table covers; PreconditionError when the island cannot become a table."""
    others = [n for n in island.op.all_input_nodes if n is not island.dequantize]
    if others:
        raise PreconditionError(f"{island.op.target} reads {', '.join(n.name for n in others)} besides its "
                                "input: not a function of one input")
    if not island.in_bounds_known:
        raise PreconditionError(f"the codes of its input {island.q_in.name} have unknown bounds (no hwact op "
                                "declares them): a table sized for int8 could be indexed outside it",
                                hint="keep this op in float, or produce its input with a hwact op")
    low, high = island.in_bounds
    if high - low + 1 > TABLE_LIMIT:
        raise PreconditionError(f"its input codes span [{low}, {high}]: {high - low + 1} table entries, "
                                f"more than the {TABLE_LIMIT} of an int16 input")
    return low, high


def _island_codes(island: Island, x: torch.Tensor) -> torch.Tensor:
    """The island's own computation on float input x: quantize(f(x, *its other arguments))."""
    node = island.op
    y = node.target(x, *node.args[1:], **node.kwargs)
    if y.shape != x.shape or not torch.isfinite(y).all():
        raise PreconditionError(f"{node.target} is not a finite element function on the input codes")
    return hw.quantize(y, island.out_scale, island.qmin, island.qmax)


def island_table(island: Island) -> tuple[torch.Tensor, int]:
    """(the int32 table of the island on every code of its span, the number of path-dependent codes).

    The vectorized path: contiguous blocks of BLOCK codes (a multiple of every vector step, below the
    kernels' parallel grain of 32768, so no block is split into threads with scalar tails), the last one
    padded. The element-wise path: the same inputs as a stride-2 view, which the kernels walk one by one."""
    low, high = table_span(island)
    codes = torch.arange(low, high + 1, dtype=torch.int32)
    size = codes.numel()
    padded = torch.cat([codes, codes.new_full((-size % BLOCK,), low)])
    with torch.no_grad():
        vectorized = torch.cat([_island_codes(island, hw.dequantize(block, island.in_scale))
                                for block in padded.split(BLOCK)])[:size]
        x = hw.dequantize(codes, island.in_scale)
        elementwise = _island_codes(island, torch.stack([x, x], dim=1)[:, 0])
    return vectorized.to(torch.int32).contiguous(), int((vectorized != elementwise).sum())


@register
class LutActivations(IslandPass):
    name = "lut-activations"
    preconditions = ("every SiLU, sigmoid, tanh, hard-swish, hard-sigmoid, ELU, Mish, leaky ReLU, softplus and "
                     "hard-tanh is a float island hwact.dequantize → op → hwact.quantize (run fold-quant-scales "
                     "first) of one input whose code bounds a hwact op declares (at most 65536 codes)",)
    ops = LUT_OPS
    tolerance = 0.0

    def guard(self, graph: Graph, island: Island) -> None:
        table_span(island)

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        table, path_dependent = island_table(island)
        if path_dependent:
            self.tolerance = None   # this run cannot promise bit-identity (module docstring)
            self.note = ("some table codes depend on PyTorch's vectorized vs element-wise kernel path "
                         "(path_dependent_codes in the details): not claimed bit-identical")
        node = add_constant(graph, f"{island.name}_lut", table, island.quantize, trainable=False)
        low, high = island.in_bounds
        return hw.int_lut.default, (island.q_in, node, low, island.qmin, island.qmax), {
            "op": str(island.op.target), "table_size": table.numel(), "in_qmin": low, "in_qmax": high,
            "path_dependent_codes": path_dependent}
