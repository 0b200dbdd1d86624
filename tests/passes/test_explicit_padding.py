import pytest
import torch
import torch.nn as nn

from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass
from hwact.passes.manager import random_batches, run_passes

aten = torch.ops.aten
_STRING_PADDED = (aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding)


def convs(graph):
    return [n for n in graph.call_nodes() if "conv" in str(n.target)]


def check_exact(module, shape, expected_pads: int):
    torch.manual_seed(0)
    module = module.eval()
    graph = trace(module, [InputSpec("x", shape)])
    before = len(convs(graph))
    assert before and all(n.target in _STRING_PADDED for n in convs(graph))
    graph, changed = make_pass("explicit-padding", {})(graph)
    assert changed == before
    assert not [n for n in graph.call_nodes() if n.target in _STRING_PADDED]
    assert len([n for n in graph.call_nodes() if n.target is aten.constant_pad_nd.default]) == expected_pads
    generator = torch.Generator().manual_seed(5)
    for batch in (1, 3):
        x = torch.randn(batch, *shape[1:], generator=generator)
        assert torch.equal(graph(x), module(x))  # bit-identical: tolerance 0
    return graph


@pytest.mark.parametrize("kernel,dilation,pads", [
    (3, 1, 0),          # odd kernel: 1 per side
    (5, 1, 0),
    (2, 1, 1),          # even kernel: total 1, one extra zero at the end of each dim
    (4, 1, 1),          # total 3: 1 per side and one extra at the end
    (2, 2, 0),          # dilation 2 makes the effective kernel odd: total 2, 1 per side
    (4, 2, 0),
    ((2, 3), 1, 1),     # extra zero along H only
    ((3, 4), (1, 2), 0),  # 2·(4 − 1) = 6 along W: 3 per side
    ((3, 4), (1, 3), 1),  # 3·(4 − 1) = 9 along W: 4 per side and one extra
])
def test_same_conv2d_is_bit_identical(kernel, dilation, pads):
    conv = nn.Conv2d(3, 4, kernel, padding="same", dilation=dilation)
    graph = check_exact(conv, (2, 3, 9, 8), pads)
    rewritten = next(n for n in graph.call_nodes() if n.target is aten.conv2d.default)
    assert all(isinstance(p, int) for p in rewritten.args[4])


def test_same_with_even_kernel_pads_only_the_odd_zero_and_keeps_the_rest_as_conv_padding():
    graph = check_exact(nn.Conv2d(2, 2, (4, 2), padding="same", bias=False), (1, 2, 6, 6), 1)
    pad = next(n for n in graph.call_nodes() if n.target is aten.constant_pad_nd.default)
    conv = next(n for n in graph.call_nodes() if n.target is aten.conv2d.default)
    # H: total 3 = 1 + 2 (one extra at the bottom), W: total 1 = 0 + 1 (one extra at the right)
    assert pad.args[1] == [0, 1, 0, 1] and pad.args[2] == 0.0
    assert conv.args[0] is pad and conv.args[4] == [1, 0]
    assert pad.meta["val"].shape[1:] == (2, 7, 7)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_valid_is_padding_zero(stride):
    graph = check_exact(nn.Conv2d(3, 5, 3, stride=stride, padding="valid"), (2, 3, 10, 10), 0)
    conv = next(n for n in graph.call_nodes() if n.target is aten.conv2d.default)
    assert conv.args[3] == [stride, stride] and conv.args[4] == [0, 0]


def test_grouped_depthwise_same_keeps_groups():
    graph = check_exact(nn.Conv2d(6, 6, 3, padding="same", groups=6, bias=False), (2, 6, 7, 7), 0)
    conv = next(n for n in graph.call_nodes() if n.target is aten.conv2d.default)
    assert conv.args[6] == 6


@pytest.mark.parametrize("kernel,dilation,padding,pads", [
    (3, 1, "same", 0), (4, 1, "same", 1), (2, 2, "same", 0), (3, 2, "same", 0), (3, 1, "valid", 0),
])
def test_conv1d(kernel, dilation, padding, pads):
    check_exact(nn.Conv1d(3, 4, kernel, padding=padding, dilation=dilation), (2, 3, 11), pads)


def test_conv3d_same_even_kernel():
    check_exact(nn.Conv3d(2, 3, (2, 3, 2), padding="same"), (1, 2, 5, 5, 5), 1)


def test_several_convs_in_one_graph_and_the_pass_manager_verifies_tolerance_zero():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.ReLU(), nn.Conv2d(4, 4, 2, padding="same"),
                        nn.Conv2d(4, 4, 3, stride=2, padding="valid"), nn.Conv2d(4, 2, 1, padding=1))
    graph = trace(net.eval(), [InputSpec("x", (2, 3, 8, 8))])
    graph, records = run_passes(graph, ["explicit-padding"], {}, random_batches(graph.inputs, 4, 2))
    assert records[0].changed == 3
    assert records[0].max_abs_err == 0.0
    assert [n.target for n in convs(graph)] == [aten.conv2d.default] * 4


def test_a_graph_without_string_padding_is_unchanged():
    graph = trace(nn.Conv2d(3, 4, 3, padding=1).eval(), [InputSpec("x", (1, 3, 6, 6))])
    graph, changed = make_pass("explicit-padding", {})(graph)
    assert changed == 0
