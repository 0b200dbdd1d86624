import pytest
import torch
import torch.nn as nn

from hwact import models
from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass
from hwact.passes.manager import random_batches, run_passes


def randomize_bn(module):
    generator = torch.Generator().manual_seed(1)
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=generator))
            bn.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.1)
            if bn.affine:
                bn.weight.data.copy_(torch.randn(c, generator=generator))
                bn.bias.data.copy_(torch.randn(c, generator=generator))
    return module


def batch_norms(graph):
    return [n for n in graph.call_nodes() if "batch_norm" in str(n.target)]


@pytest.mark.parametrize("name,count", [("cnn-tiny", 4), ("resnet18", 20)])
def test_fold_bn_removes_every_batchnorm_within_1e5(name, count):
    module, specs = models.build(name)
    module = randomize_bn(module).eval()
    graph = trace(module, specs)
    assert len(batch_norms(graph)) == count
    x = graph.example_inputs(batch=2, seed=3)
    expected = module(*x)
    graph, changed = make_pass("fold-bn", {})(graph)
    assert changed == count and batch_norms(graph) == []
    assert (graph(*x) - expected).abs().max().item() < 1e-5


def test_fold_bn_handles_conv_without_bias_linear_and_non_affine():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, bias=False)
            self.bn = nn.BatchNorm2d(8, affine=False)
            self.fc = nn.Linear(8, 5)
            self.bn1d = nn.BatchNorm1d(5)

        def forward(self, x):
            return self.bn1d(self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3))))

    net = randomize_bn(Net()).eval()
    graph = trace(net, [InputSpec("x", (1, 3, 8, 8))])
    graph, changed = make_pass("fold-bn", {})(graph)
    assert changed == 2 and batch_norms(graph) == []
    x = torch.randn(4, 3, 8, 8)
    assert (graph(x) - net(x)).abs().max().item() < 1e-5
    conv = next(n for n in graph.call_nodes() if "conv" in str(n.target))
    assert conv.args[2] is not None  # a bias was created for the bias-free conv


def test_bn_after_a_non_foldable_op_is_left_alone():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(torch.relu(x))

    graph = trace(Net().eval(), [InputSpec("x", (1, 3, 4, 4))])
    graph, records = run_passes(graph, ["fold-bn"], {}, random_batches(graph.inputs, 4, 4))
    assert records[0].changed == 0 and records[0].note.startswith("no change")
    assert "kept 1 BatchNorm not fed by a single-use conv/linear" in records[0].note
    assert len(batch_norms(graph)) == 1


def test_training_mode_batchnorm_fails_the_precondition_and_names_the_node():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    net = Net().train()
    ep = torch.export.export(net, (torch.randn(2, 3, 4, 4),))
    from hwact.ir.graph import from_exported

    graph = from_exported(ep, [InputSpec("x", (2, 3, 4, 4))])
    with pytest.raises(PreconditionError, match=r"pass fold-bn .*batch_norm"):
        run_passes(graph, ["fold-bn"], {}, random_batches(graph.inputs, 2, 2))
