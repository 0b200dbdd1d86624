"""i-layernorm: replace each LayerNorm float island by integer LayerNorm (hwact::i_layernorm).

    y = (x − mean) / sqrt(var + eps) · γ + β      over the last dim (C channels)

The integer op (hwact/ir/int_nonlinear_ops.py) centres the int16-saturated codes with P fraction bits,
takes the integer Newton square root of Σ d² (fixed iteration count, exact floor(sqrt)), forms
z = (x − mean)/std · 2^F and accumulates z · γ_int + β_int, requantized dyadically to S_out. The pass
turns the float γ, β (get_attr weight/bias; none: 1 and 0) into int32 constants:

    gamma_scale = max|γ| / (2^15 − 1),  γ_int = round(γ / gamma_scale),  β_int = round(β / (gamma_scale·2^−F))

(I-ViT keeps γ as a float per-channel scale folded into the next requantize; here γ is an integer
multiplier so the op's output is a plain per-tensor int8 tensor.) A LayerNorm over more than the last
dim, or whose β/max|γ| puts β_int outside int32, fails the precondition with the node named.

Before:                                                    After:
    %dq = hwact.dequantize(%q, 0.0012)                         %g_int = get_attr[int32], %b_int = get_attr[int32]
    %ln = aten.layer_norm(%dq, [64], %w, %b, 1e-6)             %y = hwact.i_layernorm(%q, %g_int, %b_int, 0.0012,
    %y  = hwact.quantize(%ln, 0.031, -128, 127)                         0.031, 3.1e-5, 1e-6, -128, 127)
"""

from __future__ import annotations

import torch

from hwact.errors import PreconditionError
from hwact.ir.graph import Graph
from hwact.ir.int_nonlinear_ops import layernorm_constants, layernorm_parameters
from hwact.ir.params import add_constant, get_tensor
from hwact.passes._islands import Island, IslandPass
from hwact.passes.base import register

hw = torch.ops.hwact
aten = torch.ops.aten
LAYERNORM_OPS = {aten.layer_norm.default}


def _layernorm_args(node):
    args = list(node.args) + [None] * (5 - len(node.args))
    shape, weight, bias = args[1], args[2], args[3]
    eps = args[4] if args[4] is not None else node.kwargs.get("eps", 1e-5)
    return list(shape), weight, bias, float(eps)


def _integer_parameters(graph: Graph, island: Island):
    shape, weight, bias, eps = _layernorm_args(island.op)
    if len(shape) != 1:
        raise PreconditionError(f"{island.name}: LayerNorm over {shape} (more than the last dim) is not supported "
                                "by i-layernorm")
    channels = int(shape[0])
    gamma_int, beta_int, gamma_scale = layernorm_parameters(get_tensor(graph, weight), get_tensor(graph, bias),
                                                            channels)
    layernorm_constants(channels, island.in_scale, island.out_scale, gamma_scale, eps)  # overflow guards
    return channels, gamma_int, beta_int, gamma_scale, eps


@register
class ILayerNorm(IslandPass):
    name = "i-layernorm"
    preconditions = ("every LayerNorm is a float island hwact.dequantize → aten.layer_norm → hwact.quantize "
                     "(run fold-quant-scales first) over the last dim with β_int within int32",)
    ops = LAYERNORM_OPS

    def guard(self, graph: Graph, island: Island) -> None:
        _integer_parameters(graph, island)

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        channels, gamma_int, beta_int, gamma_scale, eps = _integer_parameters(graph, island)
        gamma_node = add_constant(graph, f"{island.name}_gamma_int", gamma_int, island.quantize, trainable=False)
        beta_node = add_constant(graph, f"{island.name}_beta_int", beta_int, island.quantize, trainable=False)
        _, eps_int, precision, _, _ = layernorm_constants(channels, island.in_scale, island.out_scale, gamma_scale, eps)
        args = (island.q_in, gamma_node, beta_node, island.in_scale, island.out_scale, gamma_scale, eps, island.qmin,
                island.qmax)
        return hw.i_layernorm.default, args, {"channels": channels, "gamma_scale": gamma_scale, "eps_int": eps_int,
                                              "input_fraction_bits": precision}
