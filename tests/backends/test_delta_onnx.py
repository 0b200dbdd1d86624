"""ONNX streaming step model with explicit state: bit-exact with the reference over whole sequences."""

import numpy as np
import onnx
import pytest

from delta_helpers import delta_model, lowered, walk
from hwact.backends import delta_c, delta_onnx


@pytest.mark.parametrize("threshold,key_interval", [(0.0, 0), (0.3, 7)])
def test_step_model_matches_reference_over_a_sequence(tmp_path, threshold, key_interval):
    graph = lowered(delta_model(steps=(0.125, 0.0625, 0.0625)), threshold=threshold, key_interval=key_interval)
    path = delta_onnx.export_step(graph, tmp_path / "step.onnx")
    model = onnx.load(str(path))
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs == ["x", "threshold_0", "threshold_1", "threshold_2", "state_0", "state_1", "state_2",
                      "acc_0", "acc_1", "acc_2", "frame"]
    assert outputs[0] == "y" and outputs[-1] == "frame_out" and len(outputs) == 8
    assert {n.op_type for n in model.graph.node} >= {"MatMul", "Round"}
    x = walk(3, 30, 24, seed=1).numpy()
    expected, _ = delta_c.reference_stream(graph, walk(3, 30, 24, seed=1))
    assert delta_onnx.verify_step(path, graph, x, expected.numpy())["bit_exact"]
    # the threshold is an input: raising it at run time changes the output like the reference does
    session = delta_onnx.session(path)
    raised = delta_onnx.run_stream(session, graph, x, threshold=0.5)
    reference_raised, _ = delta_c.reference_stream(graph, walk(3, 30, 24, seed=1), threshold=0.5)
    assert np.array_equal(raised, reference_raised.numpy())


def test_dense_onnx_is_the_dequantized_mlp(tmp_path):
    graph = lowered()
    path = delta_onnx.export_dense(graph, tmp_path / "dense.onnx")
    x = walk(2, 10, 24, seed=2)
    exact, _ = delta_c.reference_stream(graph, x)
    session = delta_onnx.session(path)
    y = np.stack([session.run(None, {"x": x[:, t].numpy()})[0] for t in range(10)], axis=1)
    assert np.abs(y - exact.numpy()).max() < 0.05 * np.abs(exact.numpy()).max()
