"""lower-delta: delta_act + Linear -> stateful hwact::delta_linear; the op's reference semantics."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from delta_helpers import delta_graph, delta_model, lowered, walk  # noqa: E402

from hwact.errors import InputError, PreconditionError  # noqa: E402
from hwact.ir.delta_ops import delta_layers  # noqa: E402
from hwact.passes.lower_delta import DELTA_LINEAR, LowerDelta, set_threshold  # noqa: E402


def dense_integer(layer, x):
    """The dense result of one lowered layer: float32(weight @ codes + bias_acc) * scale per frame."""
    codes = torch.clamp(torch.round(x / layer["step"]), -layer["levels"], layer["levels"]).to(torch.int64)
    acc = (codes @ layer["weight"].to(torch.int64).t() + layer["bias_acc"].to(torch.int64)).to(torch.int32)
    return acc.to(torch.float32) * layer["scale"]


def test_pass_replaces_every_linear_and_stays_close_to_the_trained_model():
    model = delta_model()
    graph = delta_graph(model)
    x = walk(3, 20, 24)
    trained = graph(x)
    graph, count = LowerDelta()(graph)
    assert count == 3
    ops = [n.target for n in graph.call_nodes()]
    assert ops.count(DELTA_LINEAR) == 3
    assert torch.ops.aten.linear.default not in ops and torch.ops.hwact.delta_act.default not in ops
    out = graph(x)
    # int8 weights with the step folded in (random, untrained weights here): within 5% of the range
    assert (out - trained).abs().max() <= 0.05 * trained.abs().max()
    assert (out.argmax(-1) == trained.argmax(-1)).float().mean() > 0.9


def test_threshold_zero_reproduces_the_dense_model_exactly_at_every_frame():
    graph = lowered(threshold=0.0)
    layer = delta_layers(graph)[0]
    x = walk(4, 30, 24, seed=3)
    y, state, acc, frame = torch.ops.hwact.delta_linear(x, layer["step"], layer["levels"], layer["weight"],
                                                        layer["scale"], layer["bias_acc"], layer["threshold"], 0)
    assert torch.equal(y, dense_integer(layer, x))
    assert frame.tolist() == [30]
    assert torch.equal(state, torch.clamp(torch.round(x[:, -1] / layer["step"]), -127, 127).to(torch.int32))


def test_state_carries_across_calls_and_key_frames_resynchronise():
    graph = lowered()
    layer = delta_layers(graph)[0]
    args = (layer["step"], layer["levels"], layer["weight"], layer["scale"], layer["bias_acc"])
    x = walk(2, 24, 24, seed=5)
    threshold = torch.tensor(0.35)
    whole = torch.ops.hwact.delta_linear(x, *args, threshold, 6)
    first = torch.ops.hwact.delta_linear(x[:, :10], *args, threshold, 6)
    second = torch.ops.hwact.delta_linear(x[:, 10:], *args, threshold, 6, *first[1:])
    assert torch.equal(torch.cat([first[0], second[0]], dim=1), whole[0])
    for a, b in zip(second[1:], whole[1:]):
        assert torch.equal(a, b)
    dense = dense_integer(layer, x)
    no_key = torch.ops.hwact.delta_linear(x, *args, threshold, 0)[0]
    assert not torch.equal(no_key, dense)                     # the threshold drops small changes...
    for t in range(0, 24, 6):                                  # ...key frames (every 6th) are exact
        assert torch.equal(whole[0][:, t], dense[:, t])
    assert not torch.equal(whole[0][:, 1:6], dense[:, 1:6])


def test_threshold_bounds_the_drift_of_each_input():
    graph = lowered()
    layer = delta_layers(graph)[1]
    x = walk(2, 40, 40, seed=1, scale=0.1).abs()
    threshold = 0.2
    _, state, _, _ = torch.ops.hwact.delta_linear(x, layer["step"], 127, layer["weight"], layer["scale"],
                                                  layer["bias_acc"], torch.tensor(threshold), 0)
    codes = torch.clamp(torch.round(x[:, -1] / layer["step"]), -127, 127)
    limit = torch.clamp(torch.ceil(threshold / layer["step"]), min=1)
    assert ((codes - state).abs() < limit).all()


def test_bias_is_added_once_through_the_accumulator_start():
    graph = lowered()
    layer = delta_layers(graph)[0]
    x = torch.zeros(1, 5, 24)                                 # no input change at all: nothing fires
    y, state, acc, _ = torch.ops.hwact.delta_linear(x, layer["step"], 127, layer["weight"], layer["scale"],
                                                    layer["bias_acc"], torch.tensor(0.0), 0)
    assert torch.equal(acc[0], layer["bias_acc"]) and int(state.abs().sum()) == 0
    assert torch.equal(y[0, -1], layer["bias_acc"].to(torch.float32) * layer["scale"])


def test_set_threshold_changes_the_graph_at_run_time():
    graph = lowered()
    x = walk(2, 20, 24)
    exact = graph(x)
    set_threshold(graph, 0.5, key_interval=0)
    assert not torch.equal(graph(x), exact)
    set_threshold(graph, 0.0)
    assert torch.equal(graph(x), exact)
    with pytest.raises(InputError, match=">= 0"):
        set_threshold(graph, -0.1)


def test_bad_threshold_and_precondition_errors():
    with pytest.raises(InputError, match="threshold must be >= 0"):
        LowerDelta(delta_threshold=-1.0)
    with pytest.raises(InputError, match="key-frame"):
        LowerDelta(key_interval=-2)

    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act = delta_model().layers[0]

        def forward(self, x):
            return torch.relu(self.act(x))

    module = Bad().eval()
    example = torch.randn(2, 4, 24)
    from hwact.ir.graph import InputSpec, from_exported

    graph = from_exported(torch.export.export(module, (example,)), [InputSpec("x", (2, 4, 24))])
    violations = LowerDelta().check(graph)
    assert len(violations) == 1 and "not by a Linear" in violations[0]
    with pytest.raises(PreconditionError, match="lower-delta"):
        LowerDelta()(graph)
