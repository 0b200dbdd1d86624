import math
from collections import Counter

import pytest
import torch

from hwact import models
from hwact.ir.activations import find_sites, gelu_sites
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass


def census(graph):
    return Counter(str(n.target) for n in graph.call_nodes())


def swap(graph, **options):
    return make_pass("gelu-to-relu", options)(graph)


@pytest.mark.parametrize("name", ["vit-tiny", "swin-tiny", "convnext-tiny", "bert-tiny"])
@pytest.mark.parametrize("form", ["module", "functional", "tanh", "erf-formula", "tanh-formula"])
def test_every_gelu_form_becomes_one_relu(name, form):
    module, specs = models.build(name, gelu=form)
    graph = trace(module, specs)
    sites = gelu_sites(graph)
    expected = {"vit-tiny": 2, "swin-tiny": 4, "convnext-tiny": 2, "bert-tiny": 2}[name]
    assert len(sites) == expected
    relu_before = census(graph)["aten.relu.default"]
    graph, changed = swap(graph)
    ops = census(graph)
    assert changed == expected
    assert ops["aten.gelu.default"] == 0 and ops["aten.erf.default"] == 0 and ops["aten.pow.Tensor_Scalar"] == 0
    assert ops["aten.relu.default"] == relu_before + expected
    assert gelu_sites(graph) == []
    if name == "bert-tiny":  # the pooler's tanh is not a GELU and must survive
        assert ops["aten.tanh.default"] == 1


@pytest.mark.parametrize("form", ["module", "tanh", "erf-formula", "tanh-formula"])
def test_swapped_graph_computes_relu(form):
    module, specs = models.build("vit-tiny", gelu=form)
    reference = models.build("vit-tiny", gelu="module")[0]
    for block in reference.blocks:
        block.mlp.act = torch.nn.ReLU()
    reference.load_state_dict(module.state_dict())
    graph, _ = swap(trace(module, specs))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(graph(x), reference(x), rtol=0, atol=1e-6)


def test_formula_variants_are_matched():
    class Variants(torch.nn.Module):
        def forward(self, x):
            a = x * 0.5 * (1.0 + torch.erf(x * (1 / math.sqrt(2))))          # *0.7071 instead of /1.414
            b = x * (1.0 + torch.erf(x / math.sqrt(2))) / 2                   # /2 at the end
            c = 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))) * x
            return a + b + c

    graph = trace(Variants(), [InputSpec("x", (2, 8))])
    assert sorted(s.form for s in gelu_sites(graph)) == ["erf-formula", "erf-formula", "tanh-formula"]
    graph, changed = swap(graph)
    x = torch.randn(4, 8)
    torch.testing.assert_close(graph(x), 3 * torch.relu(x))
    assert changed == 3


def test_lookalikes_are_not_matched():
    class Lookalikes(torch.nn.Module):
        def forward(self, x):
            wrong_scale = 0.5 * x * (1 + torch.erf(x / 2.0))
            wrong_cubic = 0.5 * x * (1 + torch.tanh(0.7978845608 * (x + 0.1 * x ** 3)))
            return wrong_scale + wrong_cubic + torch.tanh(x)

    graph = trace(Lookalikes(), [InputSpec("x", (2, 8))])
    assert gelu_sites(graph) == []
    assert [s.form for s in find_sites(graph)] == ["tanh", "tanh"]  # plain tanh sites, not GELU
    _, changed = swap(graph)
    assert changed == 0


def test_only_and_skip_choose_sites_by_module_path():
    module, specs = models.build("swin-tiny")
    graph, changed = swap(trace(module, specs), only=("stages.1.*",))
    assert changed == 2
    assert {s.module for s in gelu_sites(graph)} == {"stages.0.0.mlp.act", "stages.0.1.mlp.act"}
    graph, changed = swap(trace(module, specs), skip=("stages.0.0.*", "stages.1.1*"))
    assert changed == 2
    assert {s.module for s in gelu_sites(graph)} == {"stages.0.0.mlp.act", "stages.1.1.mlp.act"}


def test_activation_sites_report_form_and_module():
    module, specs = models.build("bert-tiny")
    sites = [s.describe() for s in find_sites(trace(module, specs))]
    assert sites[0]["form"] == "tanh-approximate" and sites[0]["module"] == "layers.0.ffn.act"
    assert sites[-1]["form"] == "tanh" and sites[-1]["op"] == "aten.tanh.default"
