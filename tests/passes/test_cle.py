import pytest
import torch
import torch.nn as nn

from hwact import models
from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.nn.helu import HeLU
from hwact.passes.base import make_pass
from hwact.passes.cle import find_pairs
from hwact.passes.manager import random_batches, run_passes
from hwact.quant.layers import input_ranges, output_ranges, range_spread

from test_fold_bn import randomize_bn


def pair_ranges(graph):
    return [(output_ranges(p.first.weight(graph)), input_ranges(p.second.weight(graph), p.second.groups))
            for p in find_pairs(graph)]


def spread_product(graph):
    total = 1.0
    for r1, r2 in pair_ranges(graph):
        total *= range_spread(r1) * range_spread(r2)
    return total


def skewed(module, seed=0):
    """Give every layer's output channels very different magnitudes (what BN folding often does)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                factors = torch.exp(torch.randn(layer.weight.shape[0], generator=generator) * 1.5)
                layer.weight.mul_(factors.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    return module


def test_cnn_tiny_after_fold_bn_is_equalized_and_unchanged():
    module, specs = models.build("cnn-tiny")
    graph = trace(randomize_bn(module).eval(), specs)
    batches = random_batches(graph.inputs, 16, 8)
    graph, _ = run_passes(graph, ["fold-bn"], {}, batches)
    before = spread_product(graph)
    x = graph.example_inputs(batch=4, seed=5)  # not among the calibration batches
    expected = graph(*x)
    plain, _ = make_pass("cle", {"absorb_bias": False})(graph.copy())
    assert (plain(*x) - expected).abs().max().item() < 1e-4  # scaling alone is exact everywhere
    graph, records = run_passes(graph, ["cle"], {}, batches)  # the manager verifies within the tolerance
    assert records[0].changed == 3 and records[0].max_abs_err < 1e-4
    assert graph.meta["hwact_cle"]["absorbed_channels"] > 0
    # absorption is exact on the calibration data, approximate where an unseen z_i falls below c_i
    assert (graph(*x) - expected).abs().max().item() < 1e-2
    for r1, r2 in pair_ranges(graph):  # both ranges of every pair equal sqrt(r1·r2) after convergence
        torch.testing.assert_close(r1, r2, rtol=2e-3, atol=1e-6)
    assert spread_product(graph) < before / 10


def test_transformer_mlp_linear_relu_linear_on_3d_input():
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 16)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    net = skewed(Mlp()).eval()
    graph = trace(net, [InputSpec("x", (1, 5, 16))])
    r1_before = output_ranges(net.fc1.weight)
    r2_before = input_ranges(net.fc2.weight, 1)
    graph, changed = make_pass("cle", {})(graph)
    assert changed == 1
    x = torch.randn(3, 5, 16)
    assert (graph(x) - net(x)).abs().max().item() < 1e-4
    (r1, r2), = pair_ranges(graph)
    torch.testing.assert_close(r1, torch.sqrt(r1_before * r2_before), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(r2, r1, rtol=1e-5, atol=1e-7)
    assert range_spread(r1) < range_spread(r1_before) / 2


def test_conv_depthwise_conv_chain_with_leaky_relu_and_helu():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(8, 6, 1)
            self.helu = HeLU(0.1)

        def forward(self, x):
            return self.pw(self.helu(self.dw(nn.functional.leaky_relu(self.conv(x), 0.1))))

    net = skewed(Net(), seed=3).eval()
    graph = trace(net, [InputSpec("x", (1, 3, 6, 6))])
    pairs = find_pairs(graph)
    assert [(p.first.groups, p.second.groups) for p in pairs] == [(1, 8), (8, 1)]
    before = spread_product(graph)
    batches = random_batches(graph.inputs, 16, 8)
    graph, records = run_passes(graph, ["cle"], {}, batches)
    assert records[0].changed == 2 and records[0].max_abs_err < 1e-4
    assert graph.meta["hwact_cle"]["sweeps"] > 1  # a chain needs several sweeps
    x = torch.randn(2, 3, 6, 6)
    assert (graph(x) - net(x)).abs().max().item() < 1e-4
    assert spread_product(graph) < before / 10


def test_high_bias_absorption_moves_a_large_bias_into_the_next_layer():
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    net = Mlp().eval()
    with torch.no_grad():
        net.fc1.bias[:4] = 20.0  # channels 0..3 are always far above zero
    graph = trace(net, [InputSpec("x", (1, 4))])
    batches = random_batches(graph.inputs, 256, 64)
    graph, records = run_passes(graph, ["cle"], {}, batches)
    assert graph.meta["hwact_cle"]["absorbed_channels"] == 4
    assert records[0].max_abs_err < 1e-4
    graph2 = trace(net, [InputSpec("x", (1, 4))])
    graph2, _ = make_pass("cle", {"absorb_bias": False})(graph2)
    assert graph2.meta["hwact_cle"]["absorbed_channels"] == 0
    x = torch.cat([b[0] for b in batches])

    def hidden(g):
        (pair,) = find_pairs(g)
        return torch.relu(torch.nn.functional.linear(x, pair.first.weight(g), pair.first.bias(g)))

    # the absorbed channels lost most of their constant offset (c = mean − 3·std per channel)
    assert (hidden(graph)[:, :4].min(0).values < 0.3 * hidden(graph2)[:, :4].min(0).values).all()
    torch.testing.assert_close(hidden(graph)[:, 4:], hidden(graph2)[:, 4:])
    assert (graph(x) - net(x)).abs().max().item() < 1e-4


def test_gelu_fails_the_precondition_and_names_the_node():
    module, specs = models.build("vit-digits")
    graph = trace(module, specs)
    violations = make_pass("cle", {}).check(graph)
    assert len(violations) == 4
    assert violations[0].startswith("gelu (aten.gelu.default) between linear_2 and linear_3 [blocks.0.mlp.fc1]")
    with pytest.raises(PreconditionError, match="run gelu-to-relu"):
        run_passes(graph, ["cle"], {}, random_batches(graph.inputs, 8, 8))
    graph, records = run_passes(graph, ["gelu-to-relu", "cle"], {}, random_batches(graph.inputs, 8, 8))
    assert records[1].changed == 4  # the four transformer MLPs fc1 -> ReLU -> fc2


def test_relu6_and_branching_outputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)                       # two users: not a pair
            y = self.b(torch.relu(h)) + h
            return self.d(nn.functional.relu6(self.c(y)))

    graph = trace(Net().eval(), [InputSpec("x", (1, 4))])
    assert make_pass("cle", {}).check(graph) == []   # only a GELU (which gelu-to-relu removes) refuses the pass
    graph, changed = make_pass("cle", {})(graph)
    assert changed == 0                              # a -> b: a has two users; c -> d: ReLU6 between them
    (skipped,) = graph.meta["hwact_cle"]["skipped"]
    assert skipped.startswith("hardtanh") or skipped.startswith("relu6")
    assert "ReLU6" in skipped and "linear_2 and linear_3" in skipped


def test_nothing_to_equalize_is_reported():
    graph = trace(nn.Sequential(nn.Linear(4, 4)).eval(), [InputSpec("x", (1, 4))])
    graph, records = run_passes(graph, ["cle"], {}, random_batches(graph.inputs, 4, 4))
    assert records[0].changed == 0 and records[0].note.startswith("no change")
