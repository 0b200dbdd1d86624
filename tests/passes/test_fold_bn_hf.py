"""fold-bn on models it did not write: Hugging Face ResNet, MobileNetV2 and EfficientNet (hf_suite), the
LeViT-style Linear -> flatten -> BatchNorm1d, and the decomposed `_native_batch_norm_legit_no_training`."""

import pytest
import torch
import torch.nn as nn

from hwact.ir.graph import InputSpec, from_exported, trace
from hwact.passes.base import make_pass
from hwact.passes.manager import random_batches, run_passes
from tests.passes.test_fold_bn import batch_norms, randomize_bn

aten = torch.ops.aten


@pytest.mark.parametrize("name,count", [("resnet", 8), ("mobilenet_v2", 52), ("efficientnet", 22)])
def test_hf_cnns_fold_every_batchnorm_after_explicit_padding(name, count):
    pytest.importorskip("transformers")
    from hwact import hf_suite

    model, entry = hf_suite.build(name)
    x = entry.inputs(2, torch.Generator().manual_seed(0))
    graph = from_exported(hf_suite.export(name), [InputSpec(entry.input_names[0], tuple(x[0].shape))])
    assert len(batch_norms(graph)) == count
    with torch.no_grad():
        expected = model(*x)
    if name == "efficientnet":  # its convs have padding="same"/"valid": fold-bn alone folds none of them
        _, changed = make_pass("fold-bn", {})(graph.copy())
        assert changed == 0
    graph, records = run_passes(graph, ["explicit-padding", "fold-bn", "cleanup"], {},
                                random_batches(graph.inputs, 2, 2))
    assert [r.changed for r in records][1] == count and batch_norms(graph) == []
    assert records[0].max_abs_err == 0.0
    assert not [n for n in graph.call_nodes() if str(n.target).endswith(".padding")]
    assert (graph(*x) - expected).abs().max().item() < 1e-4  # fold-bn's tolerance


class LinearBn(nn.Module):
    """A linear and a BatchNorm1d that reads its output through `into`; `back` gives the result its shape."""

    def __init__(self, into, back=lambda z, y: z, bn_features=5, fc=(6, 5), share=False):
        super().__init__()
        self.fc, self.bn, self.share = nn.Linear(*fc), nn.BatchNorm1d(bn_features), share
        self.into, self.back = into, back

    def forward(self, x):
        y = self.fc(x)
        out = self.back(self.bn(self.into(y)), y)
        return out + y if self.share else out


# LeViT's MLPLayerWithBN: bn(linear(x).flatten(0, 1)).reshape_as(linear(x))
LEVIT = (lambda y: y.flatten(0, 1), lambda z, y: z.reshape_as(y))
RESHAPE = (lambda y: y.reshape(-1, 5), lambda z, y: z.reshape(y.shape))
UNSQUEEZE = (lambda y: y.reshape(-1, 5, 1), lambda z, y: z.reshape(y.shape))   # BatchNorm1d on (N, C, L=1)
DIRECT = (lambda y: y,)
FEATURES_AND_TOKENS = (lambda y: y.flatten(1),)    # (B, L·C): L·C channels, feature c repeated every C
TRANSPOSED = (lambda y: y.transpose(1, 2),)        # (B, C, L): C channels, moved there by a transpose


def run_fold(net, shape):
    net = randomize_bn(net).eval()
    graph = trace(net, [InputSpec("x", shape)])
    graph, records = run_passes(graph, ["fold-bn"], {}, random_batches(graph.inputs, 4, 2))
    x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (graph(x) - net(x)).abs().max().item() < 1e-5
    return graph, records[0]


@pytest.mark.parametrize("views", [LEVIT, RESHAPE, UNSQUEEZE], ids=["levit", "reshape", "unsqueeze"])
def test_linear_reshape_batchnorm1d_folds_into_the_linear(views):
    graph, record = run_fold(LinearBn(*views), (2, 4, 6))
    assert record.changed == 1 and batch_norms(graph) == []
    linear = next(n for n in graph.call_nodes() if n.target is aten.linear.default)
    assert str(linear.args[1].target).startswith("folded_weight")


def test_linear_2d_unsqueezed_to_n_c_1_folds():
    graph, record = run_fold(LinearBn(*UNSQUEEZE), (2, 6))
    assert record.changed == 1 and batch_norms(graph) == []


@pytest.mark.parametrize("views,bn_features,fc,why", [
    (DIRECT, 4, (6, 5), "4, 5) is not the 5 output features of linear"),     # (B, 4, 5): BN over the 4 tokens
    (DIRECT, 4, (4, 4), "4, 4) has dims after the channel dim 1"),              # (B, 4, 4): dim 1 is 4, but tokens
    (FEATURES_AND_TOKENS, 20, (6, 5), "20) is not the 5 output features"),      # (B, 20): feature c repeated
    (TRANSPOSED, 5, (6, 5), "fed by aten.transpose.int"),
], ids=["tokens", "square", "flattened", "transposed"])
def test_linear_batchnorm_whose_channels_are_not_the_features_is_kept(views, bn_features, fc, why):
    graph, record = run_fold(LinearBn(*views, bn_features=bn_features, fc=fc), (2, 4, fc[0]))
    assert record.changed == 0 and len(batch_norms(graph)) == 1
    assert "kept 1 BatchNorm not fed by a single-use conv/linear: batch_norm (" in record.note
    assert why in record.note


def test_linear_whose_values_are_also_read_elsewhere_is_kept():
    graph, record = run_fold(LinearBn(*LEVIT, share=True), (2, 4, 6))
    assert record.changed == 0 and "linear has 2 users" in record.note


def test_decomposed_native_batch_norm_folds_through_its_getitem():
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                                     nn.BatchNorm2d(2))).eval()
    x = torch.randn(2, 3, 6, 6)
    graph = from_exported(torch.export.export(net, (x,)).run_decompositions(), [InputSpec("x", (2, 3, 6, 6))])
    assert [n.target for n in batch_norms(graph)] == [aten._native_batch_norm_legit_no_training.default] * 2
    graph, changed = make_pass("fold-bn", {})(graph)
    assert changed == 2 and batch_norms(graph) == []
    assert not [n for n in graph.call_nodes() if "getitem" in str(n.target)]
    with torch.no_grad():
        assert (graph(x) - net(x)).abs().max().item() < 1e-5


def test_string_padded_conv_is_named_in_the_note():
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.BatchNorm2d(4))).eval()
    graph, record = run_fold(net, (2, 3, 6, 6))
    assert record.changed == 0 and "run explicit-padding first" in record.note
