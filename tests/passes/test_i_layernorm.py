"""i-layernorm: the LayerNorm island becomes one hwact::i_layernorm with γ, β as int32 constants, close to
the float LayerNorm; LayerNorm without affine parameters; the preconditions (island, last dim only,
β/γ within int32) name the node; ONNX of the replaced graph is bit-exact."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwact.backends.onnx import export_onnx, ort_session
from hwact.errors import PreconditionError
from hwact.ir import int_nonlinear_ops as nl
from hwact.ir.graph import InputSpec, trace
from hwact.passes.i_layernorm import ILayerNorm
from hwact.passes.manager import random_batches, run_passes

hw = torch.ops.hwact


class NormIsland(torch.nn.Module):
    def __init__(self, shape=(32,), affine: bool = True, in_bits: int = 16, gamma_scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(shape, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                self.norm.weight.copy_((torch.rand(shape) + 0.5) * gamma_scale)
                self.norm.bias.copy_(torch.randn(shape) * 0.2)
        self.qmax = 2 ** (in_bits - 1) - 1
        self.in_scale = 4.0 / self.qmax

    def forward(self, x):
        q = hw.quantize(x, self.in_scale, -self.qmax - 1, self.qmax)
        y = self.norm(hw.dequantize(q, self.in_scale))
        return hw.dequantize(hw.quantize(y, 4 / 127, -128, 127), 4 / 127)


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def test_island_becomes_one_i_layernorm_with_int32_parameters():
    module = NormIsland()
    graph = trace(module, [InputSpec("x", (2, 6, 32))])
    x = graph.example_inputs(batch=4, seed=1)[0]
    assert ILayerNorm().check(graph) == []
    graph, changed = ILayerNorm()(graph)
    assert changed == 1
    ops = census(graph)
    assert ops["hwact.i_layernorm.default"] == 1 and "aten.layer_norm.default" not in ops
    node = next(n for n in graph.fx.nodes if n.target is hw.i_layernorm.default)
    gamma_int = getattr(graph.module, node.args[1].target)
    beta_int = getattr(graph.module, node.args[2].target)
    assert gamma_int.dtype == torch.int32 and beta_int.dtype == torch.int32
    want_gamma, want_beta, gamma_scale = nl.layernorm_parameters(module.norm.weight, module.norm.bias, 32)
    assert torch.equal(gamma_int, want_gamma) and torch.equal(beta_int, want_beta) and node.args[5] == gamma_scale
    assert int(gamma_int.abs().max()) == 32767
    (entry,) = graph.meta["hwact_nonlinear"]
    assert entry["channels"] == 32 and entry["input_bounds_known"]
    exact = module.norm(x).clamp(-128 * 4 / 127, 4)
    assert (graph(x) - exact).abs().max() <= 0.55 * 4 / 127


class TwoNormIslands(torch.nn.Module):
    """LayerNorm straight into LayerNorm (Swin: patch-embed norm, then the block's norm1): the first
    island's output quantize is the second island's input."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16)

    def forward(self, x):
        q = hw.quantize(x, 4 / 127, -128, 127)
        q = hw.quantize(self.first(hw.dequantize(q, 4 / 127)), 4 / 127, -128, 127)
        q = hw.quantize(self.second(hw.dequantize(q, 4 / 127)), 4 / 127, -128, 127)
        return hw.dequantize(q, 4 / 127)


def test_back_to_back_islands_both_lower():
    graph = trace(TwoNormIslands(), [InputSpec("x", (2, 16))])
    x = graph.example_inputs(batch=4, seed=3)[0]
    expected = graph(x)
    graph, changed = ILayerNorm()(graph)
    assert changed == 2 and census(graph)["hwact.i_layernorm.default"] == 2
    first, second = [n for n in graph.fx.nodes if n.target is hw.i_layernorm.default]
    assert second.args[0] is first          # the second reads the first's integer output directly
    assert (graph(x) - expected).abs().max() <= 4 * 4 / 127


def test_layernorm_without_affine():
    graph = trace(NormIsland(shape=(16,), affine=False, in_bits=8), [InputSpec("x", (2, 16))])
    x = graph.example_inputs(batch=8, seed=2)[0]
    graph, changed = ILayerNorm()(graph)
    assert changed == 1
    q = hw.quantize(x, 4 / 127, -128, 127).double() * 4 / 127
    exact = F.layer_norm(q, (16,)).clamp(-128 * 4 / 127, 4)
    assert (graph(x).double() - exact).abs().max() <= 0.55 * 4 / 127


def test_preconditions_name_the_node():
    graph = trace(NormIsland(shape=(4, 8)), [InputSpec("x", (2, 4, 8))])
    (violation,) = ILayerNorm().check(graph)
    assert "more than the last dim" in violation
    graph = trace(NormIsland(gamma_scale=1e-7), [InputSpec("x", (2, 32))])
    (violation,) = ILayerNorm().check(graph)
    assert "int32" in violation and "layer_norm" in violation
    plain = trace(torch.nn.LayerNorm(8), [InputSpec("x", (2, 8))])
    with pytest.raises(PreconditionError, match="run fold-quant-scales first"):
        run_passes(plain, ["i-layernorm"], {}, random_batches(plain.inputs, samples=4, batch=4))


def test_replaced_graph_onnx_bit_exact(tmp_path):
    graph = trace(NormIsland(shape=(48,)), [InputSpec("x", (2, 5, 48))])
    graph, _ = ILayerNorm()(graph)
    path = export_onnx(graph, tmp_path / "ln.onnx")
    x = graph.example_inputs(batch=32, seed=4)[0] * 1.5
    x[0, 0] = 0.25  # a constant row: variance 0, output β
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    assert np.array_equal(got, graph(x).numpy())
