"""canonicalize: each rewrite of its docstring on a small torch.export-ed model: the op counts before and
after, and the outputs equal to the module's within the pass tolerance (1e-4) on random inputs that were
not the calibration batches. The pass manager's own check (outputs before/after on the calibration
batches, over the tolerance -> VerificationError) runs on every case too."""

from __future__ import annotations

import collections
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwact.ir.graph import InputSpec, from_exported, trace
from hwact.passes.canonicalize import Canonicalize
from hwact.passes.manager import random_batches, run_passes

TOLERANCE = Canonicalize.tolerance
MIN = torch.finfo(torch.float32).min


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def canonical(module: nn.Module, *specs: InputSpec, graph=None, seeds=(11, 12)):
    """(ops before, ops after, graph after) for canonicalize on the exported `module`; the outputs of the
    result equal the module's on fresh random inputs."""
    graph = graph if graph is not None else trace(module, list(specs))
    before = census(graph)
    batches = random_batches(graph.inputs, samples=8, batch=4)
    graph, records = run_passes(graph, ["canonicalize"], {}, batches)
    assert records[0].max_abs_err <= TOLERANCE
    for seed in seeds:
        inputs = graph.example_inputs(batch=3, seed=seed)
        expected = module(*inputs)
        got = graph(*inputs)
        got = got[0] if isinstance(got, (tuple, list)) else got
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= TOLERANCE
    return before, census(graph), graph


X8 = InputSpec("x", (2, 8))


# ----- identities --------------------------------------------------------------------------------------
class Identities(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = self.drop(self.fc(x)).contiguous().clone()
        h = F.dropout(h, 0.2, training=False).to(torch.float32)
        return h.detach().view(-1, 2, 4).softmax(-1).to(torch.float32)


def test_identities_are_removed():
    before, after, _ = canonical(Identities(), X8)
    assert before["aten.dropout.default"] == 2 and before["aten.clone.default"] == 1
    for op in ("aten.dropout.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
               "aten.to.dtype", "aten._assert_tensor_metadata.default"):
        assert after[op] == 0, op
    assert after["aten.linear.default"] == 1 and after["aten.softmax.int"] == 1


def test_a_real_cast_is_kept():
    class Cast(nn.Module):
        def forward(self, x):
            return (x * 1000).to(torch.int32).to(torch.float32) / 1000

    _, after, _ = canonical(Cast(), X8)
    assert after["aten.to.dtype"] == 2


# ----- in-place ----------------------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc1(x)
        h += x
        return self.fc2(h)


def test_in_place_add_becomes_add():
    before, after, _ = canonical(Residual(), X8)
    assert before["aten.add_.Tensor"] == 1
    assert after["aten.add_.Tensor"] == 0 and after["aten.add.Tensor"] == 1


class ReadAfterMutation(nn.Module):
    """a reads h before h.mul_(2) (the old value); h + a reads it after both in-place ops."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        a = h * 3
        h.mul_(2)
        h.relu_()
        return h + a


def test_in_place_result_is_read_by_later_readers_of_the_mutated_tensor():
    module = ReadAfterMutation()
    graph = trace(module, [X8])
    # torch.export already points h + a at relu_'s result; a graph that reads the mutated tensor itself
    # (what other tracers write, and what the pass must handle) is the same function when run in order
    add = next(n for n in graph.fx.nodes if str(n.target) == "aten.add.Tensor")
    linear = next(n for n in graph.fx.nodes if str(n.target) == "aten.linear.default")
    add.replace_input_with(add.args[0], linear)
    graph.recompile()
    x = graph.example_inputs(batch=3, seed=1)[0]
    assert torch.allclose(graph(x)[0] if isinstance(graph(x), tuple) else graph(x), module(x))
    before, after, graph = canonical(module, graph=graph)
    assert before["aten.mul_.Tensor"] == 1 and before["aten.relu_.default"] == 1
    assert after["aten.mul_.Tensor"] == 0 and after["aten.relu_.default"] == 0
    assert after["aten.mul.Tensor"] == 2 and after["aten.relu.default"] == 1
    add = next(n for n in graph.fx.nodes if str(n.target) == "aten.add.Tensor")
    assert add.args[0].target == torch.ops.aten.relu.default  # the result of the last in-place op
    times_three = next(n for n in graph.fx.nodes if str(n.target) == "aten.mul.Tensor" and n.args[1] == 3)
    assert times_three.args[0].target == torch.ops.aten.linear.default  # still the value before mul_


class WriteThroughView(nn.Module):
    """keep[:, 0] = True writes through a select view of keep: it must stay in place to reach keep."""

    def forward(self, x, ids):
        keep = ids != 0
        keep[:, 0] = True
        return x * keep


def test_in_place_write_through_a_view_is_kept():
    specs = (InputSpec("x", (2, 5)), InputSpec("ids", (2, 5), torch.int64, high=2))
    before, after, _ = canonical(WriteThroughView(), *specs, seeds=(1, 2, 3))
    assert before["aten.fill_.Tensor"] == 1 and after["aten.fill_.Tensor"] == 1


# ----- GELU formulas -----------------------------------------------------------------------------------
class GeluFormulas(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.form = form

    def forward(self, x):
        h = self.fc(x)
        if self.form == "tanh":
            return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))


@pytest.mark.parametrize("form, approximate", [("tanh", "tanh"), ("erf", "none")])
def test_gelu_formula_becomes_one_gelu(form, approximate):
    before, after, graph = canonical(GeluFormulas(form), X8)
    assert before["aten.gelu.default"] == 0
    assert after["aten.gelu.default"] == 1
    assert after["aten.tanh.default"] == 0 and after["aten.erf.default"] == 0 and after["aten.mul.Tensor"] == 0
    gelu = next(n for n in graph.fx.nodes if str(n.target) == "aten.gelu.default")
    assert gelu.kwargs.get("approximate", "none") == approximate


# ----- layers ------------------------------------------------------------------------------------------
class Addmm(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(8, 5))   # GPT-2's Conv1D: [in, out]
        self.bias = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


def test_addmm_becomes_linear():
    before, after, _ = canonical(Addmm(), X8)
    assert before["aten.addmm.default"] == 1
    assert after["aten.addmm.default"] == 0 and after["aten.linear.default"] == 1


@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 0, 1, 1), (2, 1, 2, 1), (1, 2, 1, 2)])
def test_conv1d_becomes_conv2d(stride, padding, dilation, groups):
    conv = nn.Conv1d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    before, after, _ = canonical(conv, InputSpec("x", (2, 4, 16)))
    assert before["aten.conv1d.default"] == 1
    assert after["aten.conv1d.default"] == 0 and after["aten.conv2d.default"] == 1
    assert after["aten.unsqueeze.default"] == 1 and after["aten.squeeze.dim"] == 1


class Pools(nn.Module):
    def forward(self, x):
        a = F.adaptive_avg_pool2d(x, 1)
        b = F.adaptive_avg_pool1d(x.flatten(2), 1)
        c = F.avg_pool2d(x, (5, 6), ceil_mode=True)  # one window over the whole 5x6 input
        return a.flatten(1) + b.flatten(1) + c.flatten(1)


def test_global_pools_become_means():
    before, after, _ = canonical(Pools(), InputSpec("x", (2, 3, 5, 6)))
    assert before["aten.adaptive_avg_pool2d.default"] == 1 and before["aten.adaptive_avg_pool1d.default"] == 1
    assert before["aten.avg_pool2d.default"] == 1
    for op in ("aten.adaptive_avg_pool2d.default", "aten.adaptive_avg_pool1d.default", "aten.avg_pool2d.default"):
        assert after[op] == 0, op
    assert after["aten.mean.dim"] == 3


def test_a_local_avg_pool_is_kept():
    before, after, _ = canonical(nn.AvgPool2d(2), InputSpec("x", (2, 3, 6, 6)))
    assert after["aten.avg_pool2d.default"] == 1 and after["aten.mean.dim"] == 0


class Splits(nn.Module):
    def forward(self, x):
        a, b, c = torch.split(x, 3, dim=-1)          # uneven: 3, 3, 2
        d, e = torch.split(x, [2, 6], dim=1)
        return torch.cat([c, a, b], -1) * 2 + torch.cat([e, d], -1)


def test_splits_become_slices():
    before, after, graph = canonical(Splits(), X8)
    assert before["aten.split.Tensor"] == 1 and before["aten.split_with_sizes.default"] == 1
    assert after["aten.split.Tensor"] == 0 and after["aten.split_with_sizes.default"] == 0
    assert after["<built-in function getitem>"] == 0 and after["aten.slice.Tensor"] == 5
    bounds = sorted(tuple(n.args[2:4]) for n in graph.fx.nodes if str(n.target) == "aten.slice.Tensor")
    assert bounds == [(0, 2), (0, 3), (2, 8), (3, 6), (6, 8)]


class Pads(nn.Module):
    def forward(self, x):
        return F.pad(x, (1, 2), value=0.5) + F.pad(x, (0, 3))


def test_constant_pad_becomes_constant_pad_nd():
    before, after, graph = canonical(Pads(), X8)
    assert before["aten.pad.default"] == 2
    assert after["aten.pad.default"] == 0 and after["aten.constant_pad_nd.default"] == 2
    values = sorted(n.args[2] for n in graph.fx.nodes if str(n.target) == "aten.constant_pad_nd.default")
    assert values == [0.0, 0.5]


class EmptyCat(nn.Module):
    """GPT-2's legacy key/value cache: a 1-D empty tensor concatenated with the keys."""

    def forward(self, x):
        return torch.cat([torch.empty(0), x, torch.empty(0)], dim=1) * 2


def test_empty_cat_inputs_are_dropped():
    before, after, graph = canonical(EmptyCat(), X8)
    cat = next(n for n in graph.fx.nodes if str(n.target) == "aten.cat.default")
    assert len(cat.args[0]) == 1 and cat.args[0][0].op == "placeholder"
    assert after["aten.empty.memory_format"] == 0


# ----- GroupNorm ---------------------------------------------------------------------------------------
def group_norm(groups=2, channels=8, affine=True):
    torch.manual_seed(3)
    norm = nn.GroupNorm(groups, channels, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(1 + 0.3 * torch.randn(channels))
            norm.bias.copy_(0.3 * torch.randn(channels))
    return norm


@pytest.mark.parametrize("shape, groups, affine", [((2, 8, 5, 6), 2, True), ((2, 8, 7), 4, True),
                                                   ((2, 8, 5, 6), 8, False), ((2, 8), 1, True)])
def test_group_norm_becomes_layer_norm_and_per_channel_affine(shape, groups, affine):
    before, after, graph = canonical(group_norm(groups, 8, affine), InputSpec("x", shape))
    assert before["aten.group_norm.default"] == 1
    assert after["aten.group_norm.default"] == 0 and after["aten.layer_norm.default"] == 1
    assert after["aten.mul.Tensor"] == int(affine) and after["aten.add.Tensor"] == int(affine)
    norm = next(n for n in graph.fx.nodes if str(n.target) == "aten.layer_norm.default")
    rest = 8 // groups * math.prod(shape[2:])
    assert norm.args[1] == [rest] and norm.args[2] is None and norm.args[3] is None


def test_native_group_norm_after_run_decompositions():
    module = group_norm(2, 8).eval()
    spec = InputSpec("x", (2, 8, 4, 4))
    ep = torch.export.export(module, (torch.randn(2, 8, 4, 4),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)).run_decompositions()
    graph = from_exported(ep, [spec])
    assert census(graph)["aten.native_group_norm.default"] == 1
    _, after, _ = canonical(module, graph=graph)
    assert after["aten.native_group_norm.default"] == 0 and after["aten.layer_norm.default"] == 1


# ----- additive attention masks ------------------------------------------------------------------------
class MaskedScores(nn.Module):
    """softmax(x·xᵀ + M) with M an additive mask built from the integer input `ids`' padding (id 0)."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form

    def forward(self, x, ids):
        keep = ((ids != 0) | (torch.arange(ids.shape[1]) == 0))[:, None, :]   # every row keeps key 0
        scores = x @ x.transpose(-1, -2)
        if self.form == "where":           # transformers 5 eager attention
            mask = torch.where(keep, torch.zeros(()), MIN)
        elif self.form == "where-inverted":
            mask = torch.where(~keep, float("-inf"), 0.0)
        elif self.form == "one-minus":     # (1 − m)·finfo.min, m bool
            mask = (1.0 - keep.to(torch.float32)) * MIN
        else:                              # Swin-like finite bias: not a mask
            mask = torch.where(keep, 0.0, -100.0)
        return torch.softmax(scores + mask.expand(-1, x.shape[1], -1), -1)


SPECS = (InputSpec("x", (2, 5, 4)), InputSpec("ids", (2, 5), torch.int64, high=3))


@pytest.mark.parametrize("form", ["where", "where-inverted", "one-minus"])
def test_additive_mask_becomes_where(form):
    before, after, graph = canonical(MaskedScores(form), *SPECS)
    assert before["aten.add.Tensor"] == 1
    assert after["aten.add.Tensor"] == 0
    masked = [n for n in graph.fx.nodes if str(n.target) == "aten.where.ScalarOther"
              and n.args[1].target == torch.ops.aten.matmul.default]
    assert len(masked) == 1 and masked[0].args[2] <= -1e30
    assert masked[0].args[0].meta["val"].dtype == torch.bool
    # no float mask tensor is left for the lowering
    float_masks = [n for n in graph.fx.nodes if n.op == "call_function" and n is not masked[0]
                   and str(n.target).startswith("aten.where")]
    assert float_masks == []


def test_a_finite_additive_bias_is_not_a_mask():
    _, after, _ = canonical(MaskedScores("finite"), *SPECS)
    assert after["aten.add.Tensor"] == 1


def test_fully_masked_rows_stay_uniform():
    """s + finfo.min rounds to finfo.min exactly: a row with every key masked is uniform, as before."""
    class AllMasked(nn.Module):
        def forward(self, x, ids):
            mask = torch.where((ids < 0)[:, None, :], 0.0, MIN)  # ids >= 0: every key masked
            return torch.softmax(x @ x.transpose(-1, -2) + mask, -1)

    _, after, graph = canonical(AllMasked(), *SPECS)
    assert after["aten.add.Tensor"] == 0
    x, ids = graph.example_inputs(batch=2, seed=5)
    assert torch.equal(graph(x, ids)[0] if isinstance(graph(x, ids), tuple) else graph(x, ids),
                       torch.full((2, 5, 5), 0.2))


class Heads(nn.Module):
    """Split heads, attend, merge heads: after run_decompositions the merge is a view of a permute whose
    copy (clone) sits upstream."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(x.shape[0], 4, 8))


def test_views_become_reshapes_once_a_copy_is_removed():
    module = Heads().eval()
    ep = torch.export.export(module, (torch.randn(2, 4, 8),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)).run_decompositions()
    graph = from_exported(ep, [InputSpec("x", (2, 4, 8))])
    assert census(graph)["aten.clone.default"] >= 1 and census(graph)["aten.view.default"] >= 1
    _, after, _ = canonical(module, graph=graph)
    assert after["aten.clone.default"] == 0 and after["aten.view.default"] == 0
