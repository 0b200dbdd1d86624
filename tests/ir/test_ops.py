"""hwact op declarations (hwact.ir.ops): named arguments, output bounds, and the shared recorder."""

from __future__ import annotations

import pytest
import torch

from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.ir.ops import OP_SPECS, bind_args, load_all_ops, op_args, output_bounds, set_op_args
from hwact.ir.record import Recorder, record
from hwact.passes._islands import input_bounds

hw = torch.ops.hwact


class Codes(torch.nn.Module):
    """quantize → max pool (codes passed on) → ReLU clamp → dequantize."""

    def forward(self, x):
        q = hw.quantize(x, 0.1, -100, 90)
        pooled = hw.int_max_pool2d(q, [2, 2], [2, 2], [0, 0], False)
        return hw.dequantize(torch.clamp(pooled, 0), 0.1)


def _graph():
    load_all_ops()
    return trace(Codes(), [InputSpec("x", (2, 1, 4, 4))])


def _node(graph, op):
    return next(n for n in graph.call_nodes() if n.target is op)


def test_every_hwact_op_declares_its_arguments():
    load_all_ops()
    names = [n for n in dir(torch.ops.hwact) if isinstance(getattr(torch.ops.hwact, n), torch._ops.OpOverloadPacket)]
    assert names and all(getattr(torch.ops.hwact, n).default in OP_SPECS for n in names)
    assert OP_SPECS[hw.int_conv2d.default].names[-2:] == ("qmin", "qmax")


def test_op_args_by_name_from_args_kwargs_and_defaults():
    graph = _graph()
    node = _node(graph, hw.quantize.default)
    node.args, node.kwargs = node.args[:2], {"qmax": 90, "qmin": -100}
    quantize = op_args(node)
    assert (quantize.scale, quantize.qmin, quantize.qmax) == (0.1, -100, 90)
    assert quantize.x.op == "placeholder"
    linear = bind_args(hw.delta_linear.default, tuple(range(8)))
    assert (linear.key_interval, linear.state, linear.frame) == (7, None, None)   # declared defaults
    with pytest.raises(TypeError, match="not a declared hwact op"):
        op_args(_node(graph, torch.ops.aten.clamp.default))
    with pytest.raises(TypeError, match="do not match"):
        bind_args(hw.dequantize.default, (1, 2, 3))


def test_output_bounds_follow_the_declaration_and_never_default():
    graph = _graph()
    assert output_bounds(_node(graph, hw.quantize.default)) == (-100, 90)
    with pytest.raises(PreconditionError, match="declares no integer output bounds"):
        output_bounds(_node(graph, hw.dequantize.default))
    with pytest.raises(PreconditionError, match="passes on the codes of its argument 'q'"):
        output_bounds(_node(graph, hw.int_max_pool2d.default))
    # through the pool (codes_of) and the ReLU clamp, as the island passes read them
    assert input_bounds(op_args(_node(graph, hw.dequantize.default)).q) == (0, 90)


def test_set_op_args_keeps_each_argument_where_it_was():
    graph = _graph()
    node = _node(graph, hw.quantize.default)
    node.args, node.kwargs = node.args[:3], {"qmax": 90}
    set_op_args(node, scale=0.2, qmax=80)
    assert node.args[1:] == (0.2, -100) and node.kwargs == {"qmax": 80}
    with pytest.raises(TypeError, match="has no argument 'zero_point'"):
        set_op_args(node, zero_point=0)


def test_recorder_sees_every_node_with_its_inputs():
    graph = _graph()
    x = torch.randn(2, 1, 4, 4)
    seen = {}
    record(graph.module, [(x,)], lambda node, value: seen.setdefault(node.name, value))
    assert set(seen) == {n.name for n in graph.fx.nodes}
    out = graph(x)
    assert torch.equal(seen[_node(graph, hw.dequantize.default).name], out[0] if isinstance(out, (tuple, list)) else out)
    inputs = {}

    def note_inputs(node, value):
        if node.target is hw.quantize.default:
            inputs["quantize"] = recorder.inputs(node)

    recorder = Recorder(graph.module, note_inputs)
    recorder.run_batches([(x,)])
    args, _ = inputs["quantize"]
    assert torch.equal(args[0], x) and args[1:] == (0.1, -100, 90)
