import onnx
import pytest
import torch

from hwact import models
from hwact.backends.onnx import export_onnx, verify
from hwact.errors import InputError
from hwact.ir.graph import trace
from hwact.nn.helu import HeLU
from hwact.passes.base import make_pass
from hwact.passes.manager import random_batches


def test_helu_forward_is_relu_and_backward_has_hysteresis():
    x = torch.tensor([-1.0, -0.2, -0.05, 0.0, 0.3], requires_grad=True)
    y = HeLU(alpha=0.1)(x)
    assert torch.equal(y, torch.relu(x.detach()))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # gradient flows where x > -alpha


def test_gelu_to_helu_matches_relu_forward_and_trains_with_helu_gradient():
    relu_graph, _ = make_pass("gelu-to-relu", {})(trace(*models.build("vit-tiny")))
    helu_graph, changed = make_pass("gelu-to-helu", {"helu_alpha": 0.2})(trace(*models.build("vit-tiny")))
    assert changed == 2
    ops = [str(n.target) for n in helu_graph.call_nodes()]
    assert ops.count("hwact.helu.default") == 2 and "aten.gelu.default" not in ops
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(helu_graph(x), relu_graph(x), rtol=0, atol=0)
    # gradients differ from ReLU's exactly through units in (-alpha, 0]
    loss_helu = helu_graph.module(x).square().sum()
    loss_helu.backward()
    loss_relu = relu_graph.module(x).square().sum()
    loss_relu.backward()
    w_helu = dict(helu_graph.module.named_parameters())["blocks.0.mlp.fc1.weight"].grad
    w_relu = dict(relu_graph.module.named_parameters())["blocks.0.mlp.fc1.weight"].grad
    assert not torch.allclose(w_helu, w_relu)


def test_helu_exports_as_plain_relu(tmp_path):
    module, specs = models.build("vit-tiny")
    graph, _ = make_pass("gelu-to-helu", {})(trace(module, specs))
    path = export_onnx(graph, tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Relu") == 2 and not any(n.domain for n in onnx.load(str(path)).graph.node)
    assert verify(graph, path, random_batches(graph.inputs, 4, 4))["max_abs_err"] < 1e-5


def test_negative_alpha_is_rejected():
    with pytest.raises(InputError, match="helu-alpha"):
        make_pass("gelu-to-helu", {"helu_alpha": -1.0})
