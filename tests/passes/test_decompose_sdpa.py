"""decompose-sdpa: every form of scaled_dot_product_attention the pass takes (no mask, bool mask, additive
float mask with finite / finfo.min / −inf values, is_causal with L = S and L ≠ S, enable_gqa, an explicit
scale) is replaced by matmul / mul / where / softmax / matmul and gives F.scaled_dot_product_attention's
outputs within the pass's tolerance (1e-4) on random inputs. No row is ever fully masked (where SDPA and
its decomposition both give NaN or the mean of v, depending on the kernel)."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F

from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass
from hwact.passes.decompose_sdpa import DecomposeSdpa

SDPA = "aten.scaled_dot_product_attention.default"
TOLERANCE = DecomposeSdpa.tolerance


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def key_padding(lengths: list[int], source: int) -> torch.Tensor:
    """[B, 1, 1, S] bool: key j of batch b is attended when j < lengths[b] (every row keeps a key)."""
    return (torch.arange(source)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


class Attention(torch.nn.Module):
    """SDPA on (q, k, v) inputs with a fixed mask buffer (or None) and fixed keyword options."""

    def __init__(self, mask: torch.Tensor | None = None, **options):
        super().__init__()
        self.register_buffer("mask", mask)
        self.options = options

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, **self.options)


def shapes(heads=4, kv_heads=4, length=6, source=6, embed=8, batch=2):
    return [InputSpec("q", (batch, heads, length, embed)), InputSpec("k", (batch, kv_heads, source, embed)),
            InputSpec("v", (batch, kv_heads, source, embed))]


def decomposed(module, specs):
    graph = trace(module, specs)
    assert census(graph)[SDPA] == 1
    graph, changed = make_pass("decompose-sdpa", {})(graph)
    assert changed == 1 and census(graph)[SDPA] == 0
    assert census(graph)["aten.softmax.int"] == 1 and census(graph)["aten.matmul.default"] == 2
    return graph


def check_matches(module, specs, seeds=(1, 2, 3)):
    graph = decomposed(module, specs)
    for seed in seeds:
        inputs = graph.example_inputs(batch=2, seed=seed)
        inputs = [t * 3 for t in inputs]  # scores well spread: the softmax is far from uniform
        expected = module(*inputs)
        got = graph(*inputs)
        got = got[0] if isinstance(got, (tuple, list)) else got
        assert torch.isfinite(got).all()
        assert (got - expected).abs().max() <= TOLERANCE
    return graph


def test_no_mask():
    graph = check_matches(Attention(), shapes())
    assert census(graph)["aten.where.ScalarOther"] == 0


def test_bool_mask():
    mask = key_padding([4, 6], 6)
    graph = check_matches(Attention(mask), shapes())
    assert census(graph)["aten.where.ScalarOther"] == 1


def test_bool_mask_per_query_row():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 1, 6, 6, generator=generator) > 0.5
    mask[..., 0] = True  # every row keeps a key
    check_matches(Attention(mask), shapes())


def test_finite_additive_mask_like_swin():
    # Swin's shifted-window mask: 0 inside a window, -100 across windows: a real (finite) bias
    generator = torch.Generator().manual_seed(1)
    mask = torch.where(torch.rand(1, 1, 6, 6, generator=generator) > 0.5, -100.0, 0.0)
    mask += 0.1 * torch.randn(1, 1, 6, 6, generator=generator)  # and some finite bias values besides
    check_matches(Attention(mask), shapes())


@pytest.mark.parametrize("fill", [torch.finfo(torch.float32).min, float("-inf")])
def test_additive_mask_with_a_masking_value(fill):
    keep = key_padding([3, 6], 6)
    mask = torch.where(keep, 0.0, fill).expand(2, 1, 6, 6).clone()
    mask[..., :2] += 0.5  # finite entries may carry a bias too
    mask[..., :2] = torch.where(keep[..., :2], mask[..., :2], fill)
    graph = check_matches(Attention(mask), shapes())
    ops = census(graph)
    assert ops["aten.gt.Scalar"] == 1 and ops["aten.where.ScalarOther"] == 2 and ops["aten.add.Tensor"] == 1


def test_causal_square():
    check_matches(Attention(is_causal=True), shapes(length=6, source=6))


@pytest.mark.parametrize("length, source", [(3, 7), (7, 5)])
def test_causal_with_different_lengths_is_aligned_top_left(length, source):
    # torch's SDPA: query i attends keys j <= i (tril(ones(L, S)), diagonal 0), whatever L and S
    check_matches(Attention(is_causal=True), shapes(length=length, source=source))


def test_grouped_query_attention():
    graph = check_matches(Attention(enable_gqa=True), shapes(heads=4, kv_heads=2))
    assert census(graph)["aten.repeat_interleave.self_int"] == 2


def test_explicit_scale():
    graph = check_matches(Attention(scale=0.7), shapes())
    muls = [n for n in graph.fx.nodes if str(n.target) == "aten.mul.Tensor"]
    assert [n.args[1] for n in muls] == [0.7]


def test_mask_scale_and_gqa_together():
    mask = key_padding([5, 6], 6)
    check_matches(Attention(mask, enable_gqa=True, scale=0.3), shapes(heads=4, kv_heads=1))
