"""Structural tests of the rewrite passes, in the TVM style: build a small input graph, run one pass, compare
the graph it returns with the expected graph written out below.

A graph is compared as the list `structure(graph)`: one line per call_function node, in graph order,
`op(inputs)`, then `output(...)`. An input is named as in the graph for a placeholder (`x`) and a weight
(the get_attr target, `fc1.weight`), and by its op's short name for a computed value, numbered in graph
order when the name repeats (`linear`, `linear_1`), whatever names the pass gave its nodes. Numbers are
shown to 4 significant digits. Numerical checks of the same passes are in the per-pass test files.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from hwact.ir.graph import Graph, InputSpec, op_name, trace
from hwact.ir.logic_ops import LogicNetlistModule
from hwact.ir.netlist import Netlist
from hwact.nn.delta import DeltaGRU, FrameCNN, FrameMLP
from hwact.passes.base import make_pass

hw = torch.ops.hwact


def structure(graph: Graph) -> list[str]:
    """The graph as `op(inputs)` lines, computed values named by op (see the module docstring)."""
    nodes = graph.fx.nodes
    taken = {str(n.target) if n.op == "get_attr" else n.name for n in nodes if n.op in ("placeholder", "get_attr")}
    names: dict[torch.fx.Node, str] = {}

    def show(value) -> str:
        if isinstance(value, torch.fx.Node):
            return names.get(value) or (str(value.target) if value.op == "get_attr" else value.name)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(show(v) for v in value) + "]"
        if isinstance(value, float):
            return format(value, ".4g")
        if isinstance(value, torch.dtype):
            return str(value).removeprefix("torch.")
        return str(value)

    lines = []
    for node in nodes:
        if node.op == "output":
            results = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            lines.append(f"output({', '.join(show(r) for r in results)})")
        if node.op != "call_function":
            continue
        op = op_name(node)
        inputs = [show(a) for a in node.args] + [f"{k}={show(v)}" for k, v in node.kwargs.items()]
        lines.append(f"{op}({', '.join(inputs)})")
        short = op.split(".")[1] if op.count(".") == 2 else op
        name, repeat = short, 0
        while name in taken:
            repeat += 1
            name = f"{short}_{repeat}"
        taken.add(name)
        names[node] = name
    return lines


def after(name: str, graph: Graph, changed: int, options: dict | None = None) -> list[str]:
    """Run pass `name` once on `graph`, check it reports `changed` rewrites; the structure of its result."""
    graph, count = make_pass(name, options or {})(graph)
    assert count == changed
    return structure(graph)


# ----- activation swaps --------------------------------------------------------------------------------

class TwoGelus(nn.Module):
    """An aten.gelu and the erf formula 0.5·h·(1 + erf(h/√2)) (six nodes) on the same value."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(F.gelu(h) + 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2))))


def test_gelu_to_relu():
    assert after("gelu-to-relu", trace(TwoGelus(), [InputSpec("x", (2, 4))]), 2) == [
        "aten.linear.default(x, fc1.weight, fc1.bias)",
        "aten.relu.default(linear)",
        "aten.relu.default(linear)",
        "aten.add.Tensor(relu, relu_1)",
        "aten.linear.default(add, fc2.weight, fc2.bias)",
        "output(linear_1)",
    ]


def test_gelu_to_helu():
    assert after("gelu-to-helu", trace(TwoGelus(), [InputSpec("x", (2, 4))]), 2, {"helu_alpha": 0.05}) == [
        "aten.linear.default(x, fc1.weight, fc1.bias)",
        "hwact.helu.default(linear, 0.05)",
        "hwact.helu.default(linear, 0.05)",
        "aten.add.Tensor(helu, helu_1)",
        "aten.linear.default(add, fc2.weight, fc2.bias)",
        "output(linear_1)",
    ]


# ----- exact float folds -------------------------------------------------------------------------------

class ConvBnLinearBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
        self.fc, self.bn1 = nn.Linear(4, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.bn1(self.fc(y))


def test_fold_bn():
    # before: conv2d(x, conv.weight) → batch_norm → relu → mean → linear → batch_norm
    assert after("fold-bn", trace(ConvBnLinearBn(), [InputSpec("x", (2, 3, 6, 6))]), 2) == [
        "aten.conv2d.default(x, folded_weight_0, folded_bias_0)",
        "aten.relu.default(conv2d)",
        "aten.mean.dim(relu, [2, 3])",
        "aten.linear.default(mean, folded_weight_1, folded_bias_1)",
        "output(linear)",
    ]


class StringPaddedConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.same3, self.same2 = nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 2, padding="same", bias=False)
        self.valid = nn.Conv2d(4, 2, 3, stride=2, padding="valid")

    def forward(self, x):
        return self.valid(self.same2(self.same3(x)))


def test_explicit_padding():
    # 3x3 "same": 1 per side; 2x2 "same": one zero appended at the bottom and right, then no conv padding
    assert after("explicit-padding", trace(StringPaddedConvs(), [InputSpec("x", (2, 3, 6, 6))]), 3) == [
        "aten.conv2d.default(x, same3.weight, same3.bias, [1, 1], [1, 1], [1, 1], 1)",
        "aten.constant_pad_nd.default(conv2d, [0, 1, 0, 1], 0)",
        "aten.conv2d.default(constant_pad_nd, same2.weight, None, [1, 1], [0, 0], [1, 1], 1)",
        "aten.conv2d.default(conv2d_1, valid.weight, valid.bias, [2, 2], [0, 0], [1, 1], 1)",
        "output(conv2d_2)",
    ]


class LayerScales(nn.Module):
    """A per-channel scale after a linear (scale second) and after a conv (scale first), and a per-element
    product, which is not a layer scale."""

    def __init__(self):
        super().__init__()
        self.fc, self.conv = nn.Linear(6, 4), nn.Conv2d(4, 5, 1)
        self.gamma_fc = nn.Parameter(torch.rand(4))
        self.gamma_conv = nn.Parameter(torch.rand(5, 1, 1))
        self.full = nn.Parameter(torch.rand(4, 4, 4))

    def forward(self, x):
        y = self.fc(x) * self.gamma_fc
        z = self.gamma_conv * self.conv(y.permute(0, 3, 1, 2))
        return z, self.fc(x) * self.full


def test_fold_layer_scale():
    assert after("fold-layer-scale", trace(LayerScales(), [InputSpec("x", (2, 4, 4, 6))]), 2) == [
        "aten.linear.default(x, scaled_weight_0, scaled_bias_0)",
        "aten.permute.default(linear, [0, 3, 1, 2])",
        "aten.conv2d.default(permute, scaled_weight_1, scaled_bias_1)",
        "aten.linear.default(x, fc.weight, fc.bias)",
        "aten.mul.Tensor(linear_1, full)",
        "output(conv2d, mul)",
    ]


class ConstantBias(nn.Module):
    """A bias gathered from weights only (a constant), a dead product and an unused parameter."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(5, 2))
        self.register_buffer("index", torch.tensor([4, 0, 2]))
        self.unused = nn.Parameter(torch.randn(3))

    def forward(self, x):
        _dead = x * 3
        return x + self.table[self.index].t()


def test_cleanup():
    graph = trace(ConstantBias(), [InputSpec("x", (2, 2, 3))])
    assert structure(graph) == [
        "aten.mul.Tensor(x, 3)",
        "aten.index.Tensor(table, [index])",
        "aten.t.default(index_1)",
        "aten.add.Tensor(x, t)",
        "output(add)",
    ]
    # 1 constant folded, 6 dead nodes (mul, index, t and the 3 get_attr), 3 weights dropped
    assert after("cleanup", graph, 10) == ["aten.add.Tensor(x, folded_const_0)", "output(add)"]


# ----- exported-model forms ---------------------------------------------------------------------------

class ExportedForms(nn.Module):
    """Eval dropout, an in-place residual add, a transformers-style additive mask from integer ids, GroupNorm."""

    def __init__(self):
        super().__init__()
        self.fc, self.drop, self.norm = nn.Linear(4, 4), nn.Dropout(0.1), nn.GroupNorm(2, 4)

    def forward(self, x, ids):
        h = self.drop(self.fc(x))
        h += x
        mask = torch.where((ids != 0)[:, None, :], torch.zeros(()), torch.finfo(torch.float32).min)
        return self.norm(torch.softmax(h @ h.transpose(-1, -2) + mask, -1).transpose(1, 2))


def test_canonicalize():
    graph = trace(ExportedForms(), [InputSpec("x", (2, 4, 4)), InputSpec("ids", (2, 4), torch.int64, high=3)])
    # dropout removed, add_ -> add, add(scores, where(m, 0, finfo.min)) -> where(m, scores, finfo.min),
    # group_norm -> reshape, layer_norm over a group, reshape, x·w[c] + b[c]
    assert after("canonicalize", graph, 4) == [
        "aten.linear.default(x, fc.weight, fc.bias)",
        "aten.add.Tensor(linear, x)",
        "aten.ne.Scalar(ids, 0)",
        "aten.unsqueeze.default(ne, 1)",
        "aten.transpose.int(add, -1, -2)",
        "aten.matmul.default(add, transpose)",
        "aten.where.ScalarOther(unsqueeze, matmul, -3.403e+38)",
        "aten.softmax.int(where, -1)",
        "aten.transpose.int(softmax, 1, 2)",
        "aten.reshape.default(transpose_1, [-1, 2, 8])",
        "aten.layer_norm.default(reshape, [8], None, None, 1e-05)",
        "aten.reshape.default(layer_norm, [-1, 4, 4])",
        "aten.mul.Tensor(reshape_1, group_norm_weight_0)",
        "aten.add.Tensor(mul, group_norm_bias_0)",
        "output(add_1)",
    ]


class CausalAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_decompose_sdpa():
    graph = trace(CausalAttention(), [InputSpec(n, (2, 2, 3, 4)) for n in "qkv"])
    assert after("decompose-sdpa", graph, 1) == [
        "aten.transpose.int(k, -2, -1)",
        "aten.matmul.default(q, transpose)",
        "aten.mul.Tensor(matmul, 0.5)",                       # 1/√4
        "aten.where.ScalarOther(causal_mask_0, mul, -inf)",   # tril(ones(3, 3)), a constant
        "aten.softmax.int(where, -1)",
        "aten.matmul.default(softmax, v)",
        "output(matmul_1)",
    ]


# ----- integer lowering --------------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x))) * 0.5


def test_fold_quant_scales():
    graph = trace(Residual(), [InputSpec("x", (2, 4))])
    x = torch.linspace(-2, 2, 32).reshape(8, 4)          # calibrated input range ±2: S_x = 2/127
    graph, _ = make_pass("calibrate", {"calibration_batches": [(x,)]})(graph)
    assert after("fold-quant-scales", graph, 5) == [
        "hwact.quantize.default(x, 0.01575, -128, 127)",
        # the ReLU is fused into fc1 as the clamp [0, 255]; fc2 then reads an unsigned input
        "hwact.int_linear.default(quantize, linear_wq_0, linear_bq_0, linear_m0_0, linear_shift_0, False, 0, 255)",
        "hwact.int_linear.default(int_linear, linear_1_wq_0, linear_1_bq_0, linear_1_m0_0, linear_1_shift_0, "
        "True, -128, 127)",
        # the · 0.5 is folded into the residual addition's multiplier, the sum is int16
        "hwact.int_add.default(quantize, int_linear_1, 208.9, 49.11, -32768, 32767)",
        "hwact.dequantize.default(int_add, 7.539e-05)",
        "output(dequantize)",
    ]


class Island(nn.Module):
    """The float island fold-quant-scales leaves around an op it cannot lower:
    quantize → dequantize → op → quantize → dequantize."""

    def __init__(self, op, in_scale: float, in_bits: int, out_scale: float, out_range: tuple[int, int]):
        super().__init__()
        self.op, self.in_scale, self.out_scale, self.out_range = op, in_scale, out_scale, out_range
        self.in_range = (-2 ** (in_bits - 1), 2 ** (in_bits - 1) - 1)

    def forward(self, x):
        y = self.op(hw.dequantize(hw.quantize(x, self.in_scale, *self.in_range), self.in_scale))
        return hw.dequantize(hw.quantize(y, self.out_scale, *self.out_range), self.out_scale)


def island(op, in_scale: float, out_scale: float, out_range=(-128, 127), in_bits: int = 8) -> Graph:
    return trace(Island(op, in_scale, in_bits, out_scale, out_range), [InputSpec("x", (2, 3, 16))])


def test_shift_gelu():
    # input range ±4: n = ceil(1.702 · 1.4375 · (4 + 4.03)) = 20
    assert after("shift-gelu", island(F.gelu, 4 / 127, 0.05), 1) == [
        "hwact.quantize.default(x, 0.0315, -128, 127)",
        "hwact.shift_gelu.default(quantize, 0.0315, 0.05, -128, 127, 20)",
        "hwact.dequantize.default(shift_gelu, 0.05)",
        "output(dequantize)",
    ]


def test_shiftmax():
    # x − max spans 6 + 6.05: n = ceil(1.4375 · 12.05) = 18; softmax over dim -1, output uint8
    assert after("shiftmax", island(lambda z: torch.softmax(z, dim=-1), 6 / 127, 1 / 255, (0, 255)), 1) == [
        "hwact.quantize.default(x, 0.04724, -128, 127)",
        "hwact.shiftmax.default(quantize, 0.04724, 0.003922, -1, 0, 255, 18)",
        "hwact.dequantize.default(shiftmax, 0.003922)",
        "output(dequantize)",
    ]


def test_i_layernorm():
    # γ, β become int32 weights; γ's scale is 2^-15 (3.052e-05), ε stays 1e-5
    assert after("i-layernorm", island(nn.LayerNorm(16), 4 / 32767, 4 / 127, in_bits=16), 1) == [
        "hwact.quantize.default(x, 0.0001221, -32768, 32767)",
        "hwact.i_layernorm.default(quantize, layer_norm_gamma_int_0, layer_norm_beta_int_0, 0.0001221, 0.0315, "
        "3.052e-05, 1e-05, -128, 127)",
        "hwact.dequantize.default(i_layernorm, 0.0315)",
        "output(dequantize)",
    ]


def test_lut_activations():
    # the island on int16 codes becomes one table of 65536 int32 entries (a weight), indexed from -32768
    assert after("lut-activations", island(F.silu, 4 / 32767, 0.03, in_bits=16), 1) == [
        "hwact.quantize.default(x, 0.0001221, -32768, 32767)",
        "hwact.int_lut.default(quantize, silu_lut_0, -32768, -128, 127)",
        "hwact.dequantize.default(int_lut, 0.03)",
        "output(dequantize)",
    ]


def test_lut_gelu():
    # tanh-approximate GELU on int8 codes, uint8 output: 256 entries indexed from -128, clamped to [0, 255]
    assert after("lut-gelu", island(lambda z: F.gelu(z, approximate="tanh"), 4 / 127, 0.03, (0, 255)), 1) == [
        "hwact.quantize.default(x, 0.0315, -128, 127)",
        "hwact.int_lut.default(quantize, gelu_lut_0, -128, 0, 255)",
        "hwact.dequantize.default(int_lut, 0.03)",
        "output(dequantize)",
    ]


# ----- layer lowerings ---------------------------------------------------------------------------------

def test_lower_logic():
    # 4 inputs, gate 4 = AND(0, 1), gate 5 = XOR(2, 3); 2 classes of one output each
    netlist = Netlist(4, [1, 6], [0, 2], [1, 3], [4, 5], 2)
    graph = trace(LogicNetlistModule(netlist, torch.zeros(4, 1)), [InputSpec("x", (2, 4))])
    assert after("lower-logic", graph, 1) == [
        "aten.unsqueeze.default(x, -1)",
        "aten.gt.Tensor(unsqueeze, thresholds)",
        "aten.flatten.using_ints(gt, 1)",
        "aten._assert_tensor_metadata.default(flatten, dtype=bool, device=cpu, layout=torch.strided)",
        "aten.to.dtype(flatten, uint8)",
        "hwact.logic_netlist.default(to, logic_netlist_ops_simplified, logic_netlist_a_simplified, "
        "logic_netlist_b_simplified, logic_netlist_outputs_simplified, 2)",
        "output(logic_netlist)",
    ]


def test_lower_delta_linear():
    # before: delta_act(x, |raw_step| + 1e-6) → linear → relu → delta_act → linear
    torch.manual_seed(0)
    model = FrameMLP(6, (5,), 3).to_delta()
    assert after("lower-delta", trace(model, [InputSpec("x", (2, 4, 6))]), 2) == [
        "hwact.delta_linear.default(x, delta0_step, 127, delta0_weight, delta0_scale, delta0_bias_acc, "
        "delta0_threshold, 0, None, None, None)",
        "getitem(delta_linear, 0)",
        "aten.relu.default(getitem)",
        "hwact.delta_linear.default(relu, delta1_step, 127, delta1_weight, delta1_scale, delta1_bias_acc, "
        "delta1_threshold, 0, None, None, None)",
        "getitem(delta_linear_1, 0)",
        "output(getitem_1)",
    ]


def test_lower_delta_conv():
    # before: delta_act → flatten(0, 1) → conv2d → unflatten → relu → delta_act → flatten(2) → linear
    torch.manual_seed(0)
    model = FrameCNN(2, (4, 4), (3,), 2).to_delta()
    assert after("lower-delta", trace(model, [InputSpec("x", (2, 3, 2, 4, 4))]), 2) == [
        "hwact.delta_conv2d.default(x, dconv0_step, 127, dconv0_weight, dconv0_scale, dconv0_bias_acc, "
        "dconv0_threshold, 0, [1, 1], [1, 1], [1, 1], None, None, None)",
        "getitem(delta_conv2d, 0)",
        "aten.relu.default(getitem)",
        "aten.flatten.using_ints(relu, 2)",
        "hwact.delta_linear.default(flatten, delta1_step, 127, delta1_weight, delta1_scale, delta1_bias_acc, "
        "delta1_threshold, 0, None, None, None)",
        "getitem(delta_linear, 0)",
        "output(getitem_1)",
    ]


class GruHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru, self.head = DeltaGRU(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.gru(x))


def test_lower_delta_gru():
    # before: hwact.delta_gru_float(x, step_x, step_h, 127, W_ih, W_hh, b_ih, b_hh, 0, 0) → linear
    assert after("lower-delta", trace(GruHead(), [InputSpec("x", (2, 5, 3))]), 1) == [
        "hwact.delta_gru.default(x, delta_gru0_step_x, delta_gru0_step_h, 127, delta_gru0_weight_x, "
        "delta_gru0_weight_h, delta_gru0_scale_x, delta_gru0_scale_h, delta_gru0_bias_x, delta_gru0_bias_h, "
        "delta_gru0_threshold, 0, None, None, None, None, None, None)",
        "getitem(delta_gru, 0)",
        "aten.linear.default(getitem, head.weight, head.bias)",
        "output(linear)",
    ]
