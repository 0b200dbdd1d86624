"""shiftmax: the softmax island (aten.softmax.int and aten._softmax) becomes one hwact::shiftmax with the
clamp n chosen from the input range, the precondition names a softmax outside an island, and the
int8-relu recipe lowers the zoo ViT to integer ops only."""

from __future__ import annotations

import collections

import pytest
import torch

from hwact import models
from hwact.errors import PreconditionError
from hwact.ir import int_nonlinear_ops as nl
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import all_passes
from hwact.passes.recipes import RECIPES
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.shiftmax import Shiftmax

hw = torch.ops.hwact


class SoftmaxIsland(torch.nn.Module):
    def __init__(self, amax: float, dim: int = -1, private: bool = False):
        super().__init__()
        self.in_scale, self.dim, self.private = amax / 127, dim, private

    def forward(self, x):
        q = hw.quantize(x, self.in_scale, -128, 127)
        z = hw.dequantize(q, self.in_scale)
        p = torch.ops.aten._softmax(z, self.dim, False) if self.private else torch.softmax(z, dim=self.dim)
        return hw.dequantize(hw.quantize(p, 1 / 255, 0, 255), 1 / 255)


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


@pytest.mark.parametrize("private", [False, True])
def test_island_becomes_one_shiftmax(private):
    graph = trace(SoftmaxIsland(6.0, private=private), [InputSpec("x", (2, 4, 17))])
    x = graph.example_inputs(batch=3, seed=2)[0] * 2
    graph, changed = Shiftmax()(graph)
    assert changed == 1
    ops = census(graph)
    assert ops["hwact.shiftmax.default"] == 1 and "aten.softmax.int" not in ops and "aten._softmax.default" not in ops
    (entry,) = graph.meta["hwact_nonlinear"]
    # x − max spans 6 + 6.05 real: n_cover = ceil(1.4375 · 12.05) = 18 <= n_max, row length 17
    assert entry["n"] == entry["n_cover"] == 18 and entry["covered"] and entry["row_length"] == 17
    assert entry["n_max"] == nl.softmax_max_n(6 / 127, 17)
    q = hw.quantize(x, 6 / 127, -128, 127)
    assert torch.equal(graph(x), hw.dequantize(hw.shiftmax(q, 6 / 127, 1 / 255, -1, 0, 255, 18), 1 / 255))
    assert (graph(x) - torch.softmax(x.clamp(-6, 6), dim=-1)).abs().max() < 0.045


def test_softmax_over_a_middle_dim_keeps_the_dim():
    graph = trace(SoftmaxIsland(3.0, dim=1), [InputSpec("x", (2, 5, 7))])
    graph, _ = Shiftmax()(graph)
    node = next(n for n in graph.fx.nodes if n.target is hw.shiftmax.default)
    assert node.args[3] == 1 and graph.meta["hwact_nonlinear"][0]["row_length"] == 5


def test_wide_long_rows_clip_n_at_the_guard():
    graph = trace(SoftmaxIsland(40.0), [InputSpec("x", (2, 4, 1024))])
    graph, _ = Shiftmax()(graph)
    (entry,) = graph.meta["hwact_nonlinear"]
    assert entry["n_cover"] == 116 and entry["n"] == entry["n_max"] == nl.softmax_max_n(40 / 127, 1024)
    assert not entry["covered"]


def test_precondition_names_a_softmax_outside_an_island():
    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    graph = trace(Plain(), [InputSpec("x", (2, 8))])
    (violation,) = Shiftmax().check(graph)
    assert "softmax" in violation and "run fold-quant-scales first" in violation
    with pytest.raises(PreconditionError, match="shiftmax"):
        run_passes(graph, ["shiftmax"], {}, random_batches(graph.inputs, samples=4, batch=4))


def test_vit_digits_int8_relu_recipe_is_integer_only():
    all_passes()
    module, inputs = models.build("vit-digits")
    graph = trace(module, inputs)
    batches = random_batches(graph.inputs, samples=16, batch=16)
    graph, records = run_passes(graph, list(RECIPES["int8-relu"].passes), {}, batches, postconditions=RECIPES["int8-relu"].postconditions)
    changed = {r.name: r.changed for r in records}
    assert changed["shiftmax"] == 4 and changed["i-layernorm"] == 9
    ops = census(graph)
    assert ops["hwact.shiftmax.default"] == 4 and ops["hwact.i_layernorm.default"] == 9
    assert "aten.softmax.int" not in ops and "hwact.shift_gelu.default" not in ops
    # the integer softmax/LayerNorm keep the lowered model's classes on most samples
    assert records[-2].top1_agreement >= 0.8 and records[-3].top1_agreement >= 0.8


def test_precondition_reports_the_op_guard_before_running():
    # 1024 logits at S = 1e-10: even n = 1 gives C · |x0| · 2 = 2·10^13 > 2^42
    graph = trace(SoftmaxIsland(127e-10), [InputSpec("x", (2, 1024))])
    (violation,) = Shiftmax().check(graph)
    assert "row sum" in violation and "softmax" in violation
