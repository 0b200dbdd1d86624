"""shift-gelu and lambda-shift-gelu: the island is found and replaced by one integer op, the clamp n is
chosen and reported per layer, the precondition names a GELU outside an island, the lowered zoo ViT is
integer-only and its ONNX runs bit-exactly under onnxruntime."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hwact import models
from hwact.backends.onnx import export_onnx, ort_session
from hwact.errors import PreconditionError
from hwact.ir import int_nonlinear_ops as nl
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import all_passes
from hwact.passes.recipes import RECIPES
from hwact.passes.lambda_shift_gelu import LambdaShiftGelu
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.shift_gelu import ShiftGelu

hw = torch.ops.hwact


class GeluIsland(torch.nn.Module):
    """quantize → dequantize → GELU → quantize → dequantize: the island fold-quant-scales leaves."""

    def __init__(self, amax: float, approximate: str = "none", out_scale: float = 0.05, qmin: int = -128):
        super().__init__()
        self.in_scale, self.approximate, self.out_scale, self.qmin = amax / 127, approximate, out_scale, qmin

    def forward(self, x):
        q = hw.quantize(x, self.in_scale, -128, 127)
        y = F.gelu(hw.dequantize(q, self.in_scale), approximate=self.approximate)
        return hw.dequantize(hw.quantize(y, self.out_scale, self.qmin, 127), self.out_scale)


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def island_graph(amax=4.0, **kw):
    return trace(GeluIsland(amax, **kw), [InputSpec("x", (2, 3, 16))])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_island_becomes_one_shift_gelu(approximate):
    graph = island_graph(4.0, approximate=approximate)
    x = (graph.example_inputs(batch=4, seed=1)[0] * 1.5).clamp(-3.9, 3.9)  # inside the ±4 input range
    assert ShiftGelu().check(graph) == []
    graph, changed = ShiftGelu()(graph)
    assert changed == 1
    ops = census(graph)
    assert "aten.gelu.default" not in ops and ops["hwact.shift_gelu.default"] == 1
    assert ops["hwact.quantize.default"] == 1 and ops["hwact.dequantize.default"] == 1
    (entry,) = graph.meta["hwact_nonlinear"]
    # range ±4 (codes -128..127 at 4/127): n_cover = ceil(1.702·1.4375·(4 + 4.03)) = 20
    assert entry["n"] == entry["n_cover"] == 20 and entry["covered"] and entry["input_bounds_known"]
    q = hw.quantize(x, 4 / 127, -128, 127)
    expected = hw.dequantize(hw.shift_gelu(q, 4 / 127, 0.05, -128, 127, 20), 0.05)
    assert torch.equal(graph(x), expected)
    assert (graph(x) - F.gelu(x, approximate=approximate)).abs().max() < 0.08


def test_wide_range_is_reported_uncovered_with_the_largest_safe_n():
    graph, _ = ShiftGelu()(island_graph(16.0))
    (entry,) = graph.meta["hwact_nonlinear"]
    scale = 16 / 127
    assert entry["n"] == entry["n_max"] == nl.gelu_max_n(scale) and not entry["covered"]
    assert entry["n_cover"] > entry["n_max"] and entry["gate_floor_bits"] >= 5


def test_precondition_names_a_gelu_outside_an_island():
    class Plain(torch.nn.Module):
        def forward(self, x):
            return F.gelu(x) * 2

    graph = trace(Plain(), [InputSpec("x", (2, 8))])
    violations = ShiftGelu().check(graph)
    assert len(violations) == 1 and "gelu" in violations[0] and "run fold-quant-scales first" in violations[0]
    with pytest.raises(PreconditionError, match="run fold-quant-scales first"):
        run_passes(graph, ["shift-gelu"], {}, random_batches(graph.inputs, samples=4, batch=4))
    assert LambdaShiftGelu().check(graph) == violations


def test_graph_without_gelu_changes_nothing():
    class NoGelu(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x)

    graph = trace(NoGelu(), [InputSpec("x", (2, 8))])
    _, records = run_passes(graph, ["shift-gelu"], {}, random_batches(graph.inputs, samples=4, batch=4))
    assert records[0].changed == 0 and "nothing matched" in records[0].note


def test_lambda_shift_gelu_fits_a_better_gate_than_1702():
    graph, changed = LambdaShiftGelu()(island_graph(8.0))
    assert changed == 1 and census(graph)["hwact.lambda_shift_gelu.default"] == 1
    (entry,) = graph.meta["hwact_nonlinear"]
    assert 1.2 <= entry["lambda"] <= 2.2 and entry["lambda"] != 1.702
    assert entry["fit_mean_abs_err"] < entry["mean_abs_err_at_1.702"]
    node = next(n for n in graph.fx.nodes if n.target is hw.lambda_shift_gelu.default)
    assert node.args[-1] == entry["lambda"] and node.args[-2] == entry["n"]


def test_island_graph_onnx_bit_exact(tmp_path):
    graph, _ = ShiftGelu()(island_graph(10.0, qmin=0))
    path = export_onnx(graph, tmp_path / "gelu.onnx")
    x = graph.example_inputs(batch=64, seed=3)[0] * 4
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    assert np.array_equal(got, graph(x).numpy())


def test_vit_digits_int8_shiftgelu_recipe_is_integer_only_and_onnx_bit_exact(tmp_path):
    all_passes()
    module, inputs = models.build("vit-digits")
    graph = trace(module, inputs)
    batches = random_batches(graph.inputs, samples=16, batch=16)
    graph, records = run_passes(graph, list(RECIPES["int8-shiftgelu"].passes), {}, batches, postconditions=RECIPES["int8-shiftgelu"].postconditions)
    changed = {r.name: r.changed for r in records}
    assert changed["shift-gelu"] == 4 and changed["i-layernorm"] == 9 and changed["shiftmax"] == 4
    ops = census(graph)
    for float_op in ("aten.gelu.default", "aten.softmax.int", "aten.layer_norm.default"):
        assert float_op not in ops
    assert ops["hwact.dequantize.default"] == 1  # only the output
    entries = graph.meta["hwact_nonlinear"]
    assert [e["pass"] for e in entries].count("shift-gelu") == 4 and all(e["covered"] for e in entries if "n" in e)
    x = batches[0][0]
    assert records[-2].top1_agreement >= 0.9  # shiftmax vs i-layernorm graph: same classes
    path = export_onnx(graph, tmp_path / "vit.onnx")
    got = ort_session(path).run(None, {inputs[0].name: x.numpy()})[0]
    assert np.array_equal(got, graph(x).numpy())


def test_precondition_reports_the_op_guard_before_running():
    graph = island_graph(127e-19)  # S = 1e-19: |x0| = 5.9e18 has 63 bits, beyond int64 for any n >= 0
    (violation,) = ShiftGelu().check(graph)
    assert "overflows int64" in violation and "gelu" in violation
    assert LambdaShiftGelu().check(graph) == [violation]
