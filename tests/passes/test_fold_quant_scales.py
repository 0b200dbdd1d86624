"""fold-quant-scales and assert-integer-only: what the lowering produces, how close it stays to the float
model, bit-exact ONNX, the overflow guard, and the integer-only check naming float nodes."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from hwact import models
from hwact.backends.onnx import export_onnx, ort_session
from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.ir.summary import float_compute_nodes
from hwact.passes.fold_quant_scales import quantize_weight, scale_for
from hwact.passes.manager import random_batches, run_passes

hw = torch.ops.hwact


class Mlp(torch.nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(12, 32)
        self.fc2 = torch.nn.Linear(32, 12)
        self.head = torch.nn.Linear(12, 5)
        self.scale = scale

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        y = x + self.fc2(h) * 0.5
        return self.head(y * self.scale)


def lowered(module, shape, passes=("calibrate", "fold-quant-scales"), samples=64):
    graph = trace(module, [InputSpec("x", shape)])
    batches = random_batches(graph.inputs, samples=samples, batch=16)
    graph, records = run_passes(graph, list(passes), {}, batches)
    return graph, records


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def test_scale_choice():
    assert scale_for(0.0, 5.1) == (5.1 / 255, 0, 255)
    assert scale_for(-2.54, 1.0) == (2.54 / 127, -128, 127)
    assert scale_for(-1.0, 3.2767, (-32768, 32767)) == (3.2767 / 32767, -32768, 32767)
    assert scale_for(0.0, 0.0) == (1.0, 0, 255)
    q, scales = quantize_weight(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]] and scales.tolist() == [1.0 / 127, 1.0]


def test_mlp_lowers_to_integer_ops_only():
    graph, records = lowered(Mlp(), (1, 12))
    ops = census(graph)
    assert ops["hwact.int_linear.default"] == 3
    assert ops["hwact.int_add.default"] == 1
    assert ops["hwact.quantize.default"] == 1 and ops["hwact.dequantize.default"] == 1
    assert "aten.relu.default" not in ops and "aten.linear.default" not in ops
    assert float_compute_nodes(graph) == []
    fused = [r for r in graph.meta["hwact_integer"] if r["fused_relu"]]
    assert [r["node"] for r in fused] == ["linear"] and fused[0]["output_bits"] == "uint8"
    lowering = records[-1]
    assert lowering.name == "fold-quant-scales" and lowering.cosine > 0.999 and lowering.changed >= 6


def test_mlp_matches_float_model_within_quantization_error():
    module = Mlp()
    graph, _ = lowered(module, (1, 12))
    x = torch.randn(256, 12, generator=torch.Generator().manual_seed(7))
    expected = module(x).detach()
    got = graph(x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    err = (got - expected).abs()
    # inputs beyond the calibrated range saturate (a few outliers); the bulk stays within a few steps
    assert err.mean() < 0.005 * expected.abs().max()
    assert torch.quantile(err.reshape(-1), 0.99) < 0.03 * expected.abs().max()
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.95


def test_cnn_integer_graph_onnx_bit_exact(tmp_path):
    module, inputs = models.build("cnn-tiny")
    graph = trace(module, inputs)
    batches = random_batches(graph.inputs, samples=16, batch=8)
    graph, _ = run_passes(graph, ["fold-bn", "calibrate", "fold-quant-scales"], {}, batches,
                          postconditions=("integer-only",))
    ops = census(graph)
    assert ops["hwact.int_conv2d.default"] == 3 and ops["hwact.int_linear.default"] == 1
    assert ops["aten.sum.dim_IntList"] == 1  # the global average pool
    path = export_onnx(graph, tmp_path / "cnn.onnx")
    session = ort_session(path)
    for seed in range(3):
        x = graph.example_inputs(batch=32, seed=seed)[0] * (1 + 4 * seed)  # seed 2: saturating inputs
        expected = graph(x)
        expected = expected[0] if isinstance(expected, (tuple, list)) else expected
        got = session.run(None, {"x": x.numpy()})[0]
        assert np.array_equal(got, expected.numpy())


def test_vit_leaves_exactly_the_float_islands():
    module, inputs = models.build("vit-digits")
    graph, _ = lowered(module, inputs[0].shape, samples=16)
    ops = census(graph)
    assert ops["hwact.int_linear.default"] == 17 and ops["hwact.int_matmul.default"] == 8
    assert ops["hwact.int_add.default"] == 9 and ops["hwact.int_conv2d.default"] == 1
    islands = {str(n.target) for n in float_compute_nodes(graph)} - {"hwact.dequantize.default"}
    assert islands == {"aten.layer_norm.default", "aten.softmax.int", "aten.gelu.default"}
    for node in graph.fx.nodes:
        if node.target in (torch.ops.aten.gelu.default, torch.ops.aten.softmax.int):
            assert node.args[0].target is hw.dequantize.default
            (user,) = node.users
            assert user.target is hw.quantize.default


def test_integer_only_postcondition_names_the_float_node():
    module, inputs = models.build("vit-digits")
    graph = trace(module, inputs)
    batches = random_batches(graph.inputs, samples=8, batch=8)
    with pytest.raises(PreconditionError) as raised:
        run_passes(graph, ["calibrate", "fold-quant-scales"], {}, batches, postconditions=("integer-only",))
    message = str(raised.value)
    assert "postcondition 'integer-only'" in message and "aten.gelu.default" in message and "computes in float" in message
    # every float node is named (layer norms, GELUs, softmaxes of the 4 blocks), past the five shown in full
    lowered, _ = run_passes(trace(module, inputs), ["calibrate", "fold-quant-scales"], {}, batches)
    names = [n.name for n in float_compute_nodes(lowered)]
    assert len(names) > 5 and all(name in message for name in names)


def test_precondition_requires_calibration():
    graph = trace(Mlp(), [InputSpec("x", (1, 12))])
    with pytest.raises(PreconditionError, match="run calibrate first"):
        run_passes(graph, ["fold-quant-scales"], {}, random_batches(graph.inputs, samples=8, batch=8))


def test_overflow_guard_names_the_layer():
    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(140000, 2)

        def forward(self, x):
            return self.fc(torch.relu(x))

    # the ReLU leaves int8 values in [0, 127]: 140000 inputs * 127 * 127 > 2^31
    graph = trace(Wide(), [InputSpec("x", (1, 140000))])
    with pytest.raises(PreconditionError, match=r"linear: int32 accumulator can overflow"):
        run_passes(graph, ["calibrate", "fold-quant-scales"], {}, random_batches(graph.inputs, samples=8, batch=8))
