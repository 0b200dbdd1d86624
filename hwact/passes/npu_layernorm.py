"""npu-layernorm: replace each LayerNorm float island by hwact::npu_layernorm, a LayerNorm in the int32
arithmetic that TOSA and Arm Ethos-U take (hwact/ir/int_npu_ops.py: an exact centring C·x − Σx, each row
scaled up to the full range by a shift, squares as MUL with a shift, 1/sqrt by CLZ normalization and Newton
MULs; no division, no 64-bit value).

    y = (x − mean) / sqrt(var + eps) · γ + β      over the last dim (C channels)

γ and β become the same int32 constants as in i-layernorm (int_nonlinear_ops.layernorm_parameters):

    gamma_scale = max|γ| / (2^15 − 1),  γ_int = round(γ / gamma_scale),  β_int = round(β / (gamma_scale·2^−F))

The op also takes the input codes' bounds [in_qmin, in_qmax] (the producer's; int16 when unknown), from which
it sizes its shifts: an int16 input costs bits only where a row really spans the int16 range. A LayerNorm over
more than the last dim, or one whose int32 bounds fail (|z·γo| + |βo| >= 2^31 at every output shift, see the op),
fails the precondition with the node named. The pass also picks the op's output shift so (layernorm_out_shift: the
largest keeping z·γo + βo in int32), so the output scale rides in γo, βo and the final RESCALE is a shift.

Before:                                                    After:
    %dq = hwact.dequantize(%q, 6.1e-5)                         %g_int = get_attr[int32], %b_int = get_attr[int32]
    %ln = aten.layer_norm(%dq, [64], %w, %b, 1e-6)             %y = hwact.npu_layernorm(%q, %g_int, %b_int, 6.1e-5,
    %y  = hwact.quantize(%ln, 0.029, -128, 127)                         0.029, 3.1e-5, 1e-6, -32768, 32767, -128, 127,
                                                                        17)
"""

from __future__ import annotations

import torch

from hwact.errors import PreconditionError
from hwact.ir.graph import Graph
from hwact.ir.int_nonlinear_ops import layernorm_parameters
from hwact.ir.int_npu_ops import layernorm_npu_constants, layernorm_out_shift
from hwact.ir.params import add_constant, get_tensor
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register
from hwact.passes.i_layernorm import LAYERNORM_OPS
from hwact.passes.i_layernorm import _layernorm_args as layernorm_args

hw = torch.ops.hwact
INT16 = (-(1 << 15), (1 << 15) - 1)


def input_codes(island: Island) -> tuple[int, int]:
    """The input codes' bounds; int16 when no op declares them (Swin's patch merging concatenates int16 slices)."""
    return island.in_bounds if island.in_bounds_known else INT16


def _integer_parameters(graph: Graph, island: Island):
    shape, weight, bias, eps = layernorm_args(island.op)
    if len(shape) != 1:
        raise PreconditionError(f"{island.name}: LayerNorm over {shape} (more than the last dim) is not supported "
                                "by npu-layernorm")
    channels = int(shape[0])
    gamma_int, beta_int, gamma_scale = layernorm_parameters(get_tensor(graph, weight), get_tensor(graph, bias),
                                                            channels)
    constants = layernorm_npu_constants(channels, island.in_scale, island.out_scale, gamma_scale, eps,
                                        *input_codes(island))
    out_shift = layernorm_out_shift(constants, int(gamma_int.abs().max()), int(beta_int.abs().max()))
    return channels, gamma_int, beta_int, gamma_scale, eps, constants, out_shift


@register
class NpuLayerNorm(IslandPass):
    name = "npu-layernorm"
    preconditions = ("every LayerNorm is a float island hwact.dequantize → aten.layer_norm → hwact.quantize "
                     "(run fold-quant-scales first) over the last dim, its int32 bounds met",)
    ops = LAYERNORM_OPS

    def guard(self, graph: Graph, island: Island) -> None:
        _integer_parameters(graph, island)

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        channels, gamma_int, beta_int, gamma_scale, eps, constants, out_shift = _integer_parameters(graph, island)
        gamma_node = add_constant(graph, f"{island.name}_gamma_int", gamma_int, island.quantize, trainable=False)
        beta_node = add_constant(graph, f"{island.name}_beta_int", beta_int, island.quantize, trainable=False)
        args = (island.q_in, gamma_node, beta_node, island.in_scale, island.out_scale, gamma_scale, eps,
                *input_codes(island), island.qmin, island.qmax, out_shift)
        return hw.npu_layernorm.default, args, {"channels": channels, "gamma_scale": gamma_scale,
                                                "pre_shift": constants.pre_shift,
                                                "max_row_shift": constants.max_row_shift}
