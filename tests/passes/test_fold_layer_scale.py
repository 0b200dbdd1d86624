"""fold-layer-scale: a constant per-channel scale after a linear/conv is folded into it, exactly; a scale
that is not per output channel is left alone; with it ConvNeXt lowers to an integer-only graph."""

import collections

import torch
import torch.nn as nn

from hwact import models
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass
from hwact.passes.manager import random_batches, run_passes


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.conv = nn.Linear(6, 4), nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.gamma_fc = nn.Parameter(torch.rand(4) + 0.1)
        self.gamma_conv = nn.Parameter(torch.rand(5, 1, 1) + 0.1)
        self.full = nn.Parameter(torch.rand(4, 4, 4) + 0.1)    # per element: not foldable

    def forward(self, x):                                     # x: (N, 4, 4, 6)
        y = self.fc(x) * self.gamma_fc                         # layer scale on the linear's last axis
        z = self.gamma_conv * self.conv(y.permute(0, 3, 1, 2))  # on the conv's channel axis, scale first
        return z, self.fc(x) * self.full


def test_per_channel_scales_fold_exactly_and_others_stay():
    net = Scaled().eval()
    graph = trace(net, [InputSpec("x", (2, 4, 4, 6))])
    x = graph.example_inputs(batch=3, seed=1)[0]
    expected = net(x)
    graph, changed = make_pass("fold-layer-scale", {})(graph)
    assert changed == 2 and census(graph)["aten.mul.Tensor"] == 1   # only the per-element product is left
    for got, want in zip(graph(x), expected):
        assert (got - want).abs().max() < 1e-5


def test_convnext_int8_relu_is_integer_only():
    module, specs = models.build("convnext-tiny")
    graph = trace(module, specs)
    batches = random_batches(graph.inputs, 8, 4)
    graph, records = run_passes(graph, ["gelu-to-relu", "fold-layer-scale", "calibrate", "fold-quant-scales",
                                        "i-layernorm"], {}, batches, postconditions=("integer-only",))
    assert records[1].changed == 2 and records[1].max_abs_err < 1e-5   # one layer scale per block
    assert "aten.mul.Tensor" not in census(graph) and "aten.layer_norm.default" not in census(graph)
