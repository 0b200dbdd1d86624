"""lut-activations and lut-gelu: every element-function island becomes one hwact.int_lut whose outputs are
bit-identical to the island's (every input code, int8 / uint8 / int16 inputs, each op with its own
arguments), the per-layer record, the refusals (unknown input bounds, too many codes, not an island), the
kernel-path caveat, a conv model through calibrate → fold-quant-scales → lut-activations with tolerance 0,
and its ONNX export bit-exact under onnxruntime."""

from __future__ import annotations

import collections
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwact.backends.onnx import export_onnx, ort_session
from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.passes.lut_activations import LUT_OPS, LutActivations
from hwact.passes.lut_gelu import LutGelu
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.shift_gelu import ShiftGelu

hw = torch.ops.hwact
aten = torch.ops.aten
BOUNDS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
WIDTH = 256   # input codes per sample


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


class Island(nn.Module):
    """quantize(bounds) → dequantize → f → quantize → dequantize: the island fold-quant-scales leaves."""

    def __init__(self, f, in_scale: float, bounds: tuple[int, int], out_scale: float, out_bounds=(-128, 127)):
        super().__init__()
        self.f, self.in_scale, self.bounds, self.out_scale, self.out_bounds = f, in_scale, bounds, out_scale, out_bounds

    def forward(self, x):
        y = self.f(hw.dequantize(hw.quantize(x, self.in_scale, *self.bounds), self.in_scale))
        return hw.dequantize(hw.quantize(y, self.out_scale, *self.out_bounds), self.out_scale)


def island_graph(f, in_scale=0.05, bounds=BOUNDS["int8"], out_scale=0.02, out_bounds=(-128, 127)):
    return trace(Island(f, in_scale, bounds, out_scale, out_bounds), [InputSpec("x", (1, WIDTH))])


def every_code(in_scale: float, bounds: tuple[int, int]) -> torch.Tensor:
    """Inputs that quantize to every code of `bounds` (and beyond it, saturating), WIDTH per sample."""
    codes = torch.arange(bounds[0] - 3, bounds[1] + 4, dtype=torch.float32)
    codes = torch.cat([codes, codes.new_full((-codes.numel() % WIDTH,), 0.0)])
    return (codes * in_scale).reshape(-1, 1, WIDTH)


FUNCTIONS = {
    "silu": F.silu, "silu_": lambda x: F.silu(x, inplace=True), "sigmoid": torch.sigmoid,
    "sigmoid_": lambda x: x.sigmoid_(), "tanh": torch.tanh, "tanh_": lambda x: x.tanh_(),
    "hardswish": F.hardswish, "hardswish_": lambda x: F.hardswish(x, inplace=True),
    "hardsigmoid": F.hardsigmoid, "hardsigmoid_": lambda x: F.hardsigmoid(x, inplace=True),
    "elu": lambda x: F.elu(x, alpha=0.7), "elu_": lambda x: F.elu(x, inplace=True),
    "mish": F.mish, "mish_": lambda x: F.mish(x, inplace=True),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "leaky_relu_": lambda x: F.leaky_relu(x, 0.01, inplace=True),
    "softplus": lambda x: F.softplus(x, beta=2.0, threshold=5.0),
    "hardtanh": lambda x: F.hardtanh(x, -1.0, 2.0), "relu6": F.relu6, "relu6_": lambda x: F.relu6(x, inplace=True),
}


@pytest.mark.parametrize("bits", ["int8", "uint8", "int16"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_island_becomes_a_bit_identical_table(name, bits):
    bounds = BOUNDS[bits]
    in_scale = 6.0 / bounds[1]
    graph = island_graph(FUNCTIONS[name], in_scale, bounds, 0.031)
    (op,) = [n.target for n in graph.call_nodes() if n.target in LUT_OPS]
    x = every_code(in_scale, bounds)
    expected = torch.cat([graph(part) for part in x.split(512)])
    assert LutActivations().check(graph) == []
    graph, changed = LutActivations()(graph)
    assert changed == 1
    ops = census(graph)
    assert ops["hwact.int_lut.default"] == 1 and str(op) not in ops
    got = torch.cat([graph(part) for part in x.split(512)])
    assert torch.equal(got, expected)   # tolerance 0, on every input code
    (entry,) = graph.meta["hwact_nonlinear"]
    assert entry["pass"] == "lut-activations" and entry["op"] == str(op) and entry["input_bounds_known"]
    assert (entry["in_qmin"], entry["in_qmax"]) == bounds and entry["table_size"] == bounds[1] - bounds[0] + 1
    assert entry["path_dependent_codes"] == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_lut_gelu_takes_gelu_and_lut_activations_leaves_it_to_shift_gelu(approximate):
    graph = island_graph(lambda x: F.gelu(x, approximate=approximate), 4 / 127, out_scale=0.03)
    x = every_code(4 / 127, BOUNDS["int8"])
    expected = graph(x.reshape(-1, WIDTH))
    assert LutActivations()(graph)[1] == 0 and ShiftGelu().check(graph) == []
    graph, changed = LutGelu()(graph)
    assert changed == 1 and census(graph)["hwact.int_lut.default"] == 1 and "aten.gelu.default" not in census(graph)
    assert torch.equal(graph(x.reshape(-1, WIDTH)), expected)
    (entry,) = graph.meta["hwact_nonlinear"]
    assert entry["pass"] == "lut-gelu" and entry["table_size"] == 256


def lut_table(graph) -> tuple[tuple, torch.Tensor]:
    (node,) = [n for n in graph.call_nodes() if n.target is hw.int_lut.default]
    return node.args, getattr(graph.module, node.args[1].target)


def test_table_holds_the_quantized_function_at_the_island_scales():
    graph, _ = LutActivations()(island_graph(torch.sigmoid, 0.05, BOUNDS["int8"], 2.0**-8, (0, 255)))
    (q, _, in_qmin, qmin, qmax), values = lut_table(graph)
    assert (q.target, in_qmin, qmin, qmax) == (hw.quantize.default, -128, 0, 255)
    assert values.dtype == torch.int32 and values.shape == (256,)
    reals = torch.sigmoid(torch.arange(-128, 128, dtype=torch.float64) * 0.05) * 256
    assert (values.to(torch.float64) - reals.clamp(0, 255)).abs().max() <= 0.5 + 1e-4   # round to nearest
    assert values[128] == 128 and values[0] == 0 and values[-1] == 255   # σ(0) · 256, σ(-6.4), σ(6.35) · 256 > 255


def test_table_rounds_ties_half_to_even_as_hwact_quantize():
    # leaky ReLU at S_in = 1/4, S_out = 1/2: code c -> c/2 exactly (c >= 0), 0.2·c/2 below zero
    graph, _ = LutActivations()(island_graph(lambda x: F.leaky_relu(x, 0.2), 0.25, BOUNDS["int8"], 0.5))
    _, values = lut_table(graph)
    assert values[128 + 1] == 0 and values[128 + 3] == 2 and values[128 + 5] == 2 and values[128 + 7] == 4
    assert values[128 - 5] == 0 and values[128 - 25] == -2 and values[128 - 15] == -2   # -0.5, -2.5, -1.5


def test_unknown_input_bounds_are_refused():
    class Negated(nn.Module):  # the codes come from aten.neg: no hwact op declares their bounds
        def forward(self, x):
            q = torch.neg(hw.quantize(x, 0.05, -128, 127))
            return hw.dequantize(hw.quantize(F.silu(hw.dequantize(q, 0.05)), 0.02, -128, 127), 0.02)

    graph = trace(Negated(), [InputSpec("x", (1, 8))])
    (violation,) = LutActivations().check(graph)
    assert violation.startswith("silu") and "unknown bounds" in violation
    with pytest.raises(PreconditionError, match="unknown bounds"):
        run_passes(graph, ["lut-activations"], {}, random_batches(graph.inputs, samples=4, batch=4))


def test_more_codes_than_int16_are_refused():
    graph = island_graph(torch.tanh, 1e-4, (-40000, 40000))
    (violation,) = LutActivations().check(graph)
    assert "80001 table entries" in violation


def test_an_op_outside_an_island_is_named():
    class Plain(nn.Module):
        def forward(self, x):
            return F.silu(x) * 2

    (violation,) = LutActivations().check(trace(Plain(), [InputSpec("x", (2, 8))]))
    assert "silu" in violation and "run fold-quant-scales first" in violation


def _path_dependent_scale(in_scale: float) -> tuple[float, int] | None:
    """An output scale at which one SiLU input code quantizes differently on the vectorized and the
    element-wise kernel path (their float results one ulp apart, straddling a rounding tie), or None."""
    codes = torch.arange(-128, 128, dtype=torch.int32)
    x = hw.dequantize(codes, in_scale)
    vectorized, elementwise = F.silu(x), F.silu(torch.stack([x, x], dim=1)[:, 0])
    for i in (vectorized != elementwise).nonzero().flatten().tolist():
        tie = np.float32(abs(float(vectorized[i]) + float(elementwise[i])))
        for candidate in [tie] + [np.nextafter(tie, np.float32(direction * np.inf)) for direction in (1, -1)]:
            scale = float(candidate)
            pair = [hw.quantize(y[i:i + 1], scale, -128, 127).item() for y in (vectorized, elementwise)]
            if pair[0] != pair[1]:
                return scale, int(codes[i])
    return None


def test_a_path_dependent_code_is_counted_and_exactness_not_claimed():
    found = _path_dependent_scale(0.05)
    if found is None:
        pytest.skip("this CPU's SiLU kernels agree on every code at this scale")
    out_scale, _ = found
    the_pass = LutActivations()
    graph, changed = the_pass(island_graph(F.silu, 0.05, BOUNDS["int8"], out_scale))
    (entry,) = graph.meta["hwact_nonlinear"]
    assert changed == 1 and entry["path_dependent_codes"] >= 1
    assert the_pass.tolerance is None and "path_dependent_codes" in the_pass.note
    assert LutActivations.tolerance == 0.0


# ----- a conv model: calibrate → fold-quant-scales → lut-activations ------------------------------------

class GatedConvNet(nn.Module):
    """conv → SiLU → conv → sigmoid gate (x · σ(s), squeeze-excite style) → hard-swish → residual → ELU
    → pooled head: element functions on int8, uint8 and int16 (after the residual add) codes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = F.silu(self.c1(x))
        gate = torch.sigmoid(self.c2(h.mean((2, 3), keepdim=True)))
        h = F.hardswish(h * gate)
        h = F.elu(h + self.c3(h))
        return self.fc(torch.tanh(h).mean((2, 3)))


def test_conv_model_tables_are_bit_identical_and_onnx_bit_exact(tmp_path):
    graph = trace(GatedConvNet(), [InputSpec("x", (2, 3, 8, 8))])
    batches = random_batches(graph.inputs, samples=32, batch=8)
    graph, _ = run_passes(graph, ["calibrate", "fold-quant-scales"], {}, batches)
    before = copy.deepcopy(graph)
    # run by the pass manager: verified on the calibration batches against its tolerance 0
    graph, (record,) = run_passes(graph, ["lut-activations"], {}, batches)
    assert record.changed == 5 and record.max_abs_err == 0.0
    ops = census(graph)
    for name in ("silu", "sigmoid", "hardswish", "elu", "tanh"):
        assert f"aten.{name}.default" not in ops
    assert ops["hwact.int_lut.default"] == 5
    entries = record.details["hwact_nonlinear"]
    assert [e["op"].split(".")[1] for e in entries] == ["silu", "sigmoid", "hardswish", "elu", "tanh"]
    sizes = {e["op"].split(".")[1]: e["table_size"] for e in entries}
    assert sizes["elu"] == 65536 and sizes["silu"] == 256   # ELU reads the int16 residual sum
    # fresh inputs, some far outside the calibrated range (saturating codes)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(16, 3, 8, 8, generator=generator) * torch.tensor([1.0, 4.0, 0.3]).reshape(1, 3, 1, 1)
    assert torch.equal(graph(x), before(x))
    path = export_onnx(graph, tmp_path / "lut.onnx")
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    assert np.array_equal(got, graph(x).numpy())


def test_the_manager_runs_the_graph_again_only_after_a_pass_that_changed_what_it_computes(monkeypatch):
    """Issue 14 (speed): the verification run after each pass is most of a pass's time on these models
    (lut-activations' tables are a few ms); calibrate annotates ranges only, so its outputs are the ones
    before it, not run again, with the same record."""
    from hwact.passes import manager

    runs = []
    real = manager._outputs
    monkeypatch.setattr(manager, "_outputs",
                        lambda graph, batches, where: runs.append(where) or real(graph, batches, where))
    graph = trace(GatedConvNet(), [InputSpec("x", (2, 3, 8, 8))])
    batches = random_batches(graph.inputs, samples=16, batch=8)
    graph, records = run_passes(graph, ["calibrate", "fold-quant-scales", "lut-activations"], {}, batches)
    assert [r.changed > 0 for r in records] == [True, True, True]
    assert runs == ["the graph given to the passes", "pass fold-quant-scales (after: calibrate)",
                    "pass lut-activations (after: calibrate, fold-quant-scales)"]
    calibrate = records[0]
    assert (calibrate.max_abs_err, calibrate.mean_abs_err, calibrate.cosine,
            calibrate.top1_agreement) == (0.0, 0.0, 1.0, 1.0)

    # what counts as a change: the code, a tensor replaced or modified in place; metadata does not
    state = manager._state(graph)
    graph.meta["anything"] = 1
    next(iter(graph.call_nodes())).meta["hwact_range"] = (0.0, 1.0)
    assert manager._same_computation(state, graph)
    table = next(n for n in graph.fx.nodes if n.op == "get_attr" and "lut" in str(n.target))
    with torch.no_grad():
        getattr(graph.module, table.target).add_(0)
    assert not manager._same_computation(state, graph)
    state = manager._state(graph)
    setattr(graph.module, table.target, getattr(graph.module, table.target).clone())
    assert not manager._same_computation(state, graph)
    state = manager._state(graph)
    graph.recompile()
    assert manager._same_computation(state, graph)
    node = next(n for n in graph.call_nodes() if n.target is hw.int_lut.default)
    node.args = (node.args[0], node.args[1], node.args[2] - 1, *node.args[3:])
    graph.recompile()
    assert not manager._same_computation(state, graph)
