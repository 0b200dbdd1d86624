"""exact_matmul (hwact/ir/int_ops.py): integer products equal int64 matmul bit for bit, on every path (the
int8 GEMM on a VNNI CPU, one float32 GEMM, float32 slices of K, float64, int64), including operands at the
8-bit extremes where a plain float32 GEMM rounds; int_linear / int_matmul give what their int64 form gave.
The tests marked with the `gemm` fixture run twice where the int8 GEMM is exact: with it and without it."""

from __future__ import annotations

import pytest
import torch

from hwact.ir import int_ops
from hwact.ir.int_ops import exact_matmul
from int_helpers import edge_int8

hw = torch.ops.hwact


@pytest.fixture(params=["int8", "float"])
def gemm(request, monkeypatch):
    """Which GEMM exact_matmul may use: "int8" (torch._int_mm, only where it is exact) or "float" only."""
    if request.param == "int8" and not int_ops._int8_gemm_is_exact():
        pytest.skip("no VNNI dot product on this CPU: torch._int_mm is not used here")
    if request.param == "float":
        monkeypatch.setattr(int_ops, "_int8_gemm_is_exact", lambda: False)
    return request.param


def _int64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.to(torch.int64), b.to(torch.int64))


def _odd_near_limit(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose dot product passes 2^24 through odd partial sums (127·127 = 16129 is odd): a float32
    accumulator rounds them, so only an exact method gets every row right."""
    a = torch.full((3, k), 127, dtype=torch.int32)
    a[1, ::2] = -127
    a[2, :5] = torch.tensor([-128, 1, 0, 3, -1], dtype=torch.int32)
    b = torch.full((k, 2), 127, dtype=torch.int32)
    b[::3, 1] = -128
    return a, b


@pytest.mark.parametrize("k", [1, 7, 384, 1031, 1536, 4096])
@pytest.mark.parametrize("signed", [True, False])
def test_exact_matmul_equals_int64_on_edge_values(k, signed, gemm):
    gen = torch.Generator().manual_seed(k)
    low, high = (-128, 127) if signed else (0, 255)
    a = edge_int8((2, 9, k), gen, low, high)
    a[0, 0] = high
    a[0, 1] = low
    b = edge_int8((k, 11), gen, -127, 127)
    b[:, 0] = 127
    b[:, 1] = -127
    assert torch.equal(exact_matmul(a, b), _int64(a, b))


def test_small_and_odd_shapes(gemm):
    """Every M, K, N from 1 to 9 and a few odd sizes, weights as the transposed view int_linear passes: torch
    2.13's _int_mm returns wrong values for K = 1 (N >= 2), which exact_matmul must never reach."""
    gen = torch.Generator().manual_seed(9)
    sizes = list(range(1, 10)) + [17, 65]
    for m, k, n in [(m, k, n) for m in (1, 3, 9, 17) for k in sizes for n in sizes]:
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int32)
        w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
        assert torch.equal(exact_matmul(a, w.t()), _int64(a, w.t())), (m, k, n)


def test_plain_float32_rounds_where_exact_matmul_does_not(gemm):
    a, b = _odd_near_limit(1536)     # K·B = 1536 · 127 · 128 > 2^24: two float32 slices
    want = _int64(a, b)
    assert int(want.abs().max()) > int_ops.FLOAT32_EXACT
    plain = torch.matmul(a.float(), b.float()).to(torch.int64)
    assert not torch.equal(plain, want)          # the bound is real: one float32 GEMM is wrong here
    assert torch.equal(exact_matmul(a, b), want)


@pytest.mark.parametrize("k", [70_001, 3])
def test_float64_and_int64_paths(k):
    gen = torch.Generator().manual_seed(5)
    if k == 3:   # values far beyond 8 bits: K·B > 2^53, only int64 is exact
        a = torch.tensor([[2**30, -(2**30) + 1, 7]], dtype=torch.int64)
        b = torch.tensor([[2**29 + 3], [2**29 - 1], [-5]], dtype=torch.int64)
    else:        # 8-bit operands, K·B far above 4 float32 slices: one float64 GEMM
        a = edge_int8((2, k), gen)
        b = edge_int8((k, 3), gen, -127, 127)
    assert torch.equal(exact_matmul(a, b), _int64(a, b))


def test_batched_vector_and_empty_operands(gemm):
    gen = torch.Generator().manual_seed(6)
    a = edge_int8((2, 3, 5, 1100), gen, 0, 255)
    b = edge_int8((2, 3, 1100, 4), gen)
    assert torch.equal(exact_matmul(a, b), _int64(a, b))
    v = edge_int8((1100,), gen)
    assert torch.equal(exact_matmul(a, v), _int64(a, v))
    empty = torch.zeros((4, 0), dtype=torch.int32)
    assert torch.equal(exact_matmul(empty, torch.zeros((0, 3), dtype=torch.int32)), torch.zeros((4, 3), dtype=torch.int64))


def test_int8_gemm_at_its_largest_k_and_beyond(monkeypatch):
    """Worst-case operands (every product −128 · −128, or 255 · −128 through the uint8 offset) at K = 2^16, the
    largest K the int32 sums of the int8 GEMM take; one more column goes to the float GEMMs."""
    if not int_ops._int8_gemm_is_exact():
        pytest.skip("no VNNI dot product on this CPU: torch._int_mm is not used here")
    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(tuple(a.shape)) or int_mm(a, b))
    k = int_ops.INT8_GEMM_MAX_K
    for fill in (-128, 255):
        a = torch.full((2, k), fill, dtype=torch.int32)
        a[1, ::2] = 0
        b = torch.full((k, 3), -128, dtype=torch.int32)
        assert torch.equal(exact_matmul(a, b), _int64(a, b))
    assert calls == [(2, k), (2, k)]
    a, b = torch.full((2, k + 1), -128, dtype=torch.int32), torch.full((k + 1, 3), -128, dtype=torch.int32)
    assert torch.equal(exact_matmul(a, b), _int64(a, b)) and len(calls) == 2


def test_reduced_float32_precision_falls_back_to_float64(monkeypatch):
    monkeypatch.setattr(int_ops, "_int8_gemm_is_exact", lambda: False)
    a, b = _odd_near_limit(1536)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")   # a user's setting may allow bf16 / TF32 GEMMs
        assert not int_ops._ieee_float32_matmul()
        assert torch.equal(exact_matmul(a, b), _int64(a, b))
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("unsigned", [False, True])
def test_int_linear_and_int_matmul_equal_their_int64_form(unsigned, gemm):
    gen = torch.Generator().manual_seed(7)
    low, high = (0, 255) if unsigned else (-128, 127)
    q = edge_int8((3, 17, 1536), gen, low, high)
    q[0] = high
    w = edge_int8((40, 1536), gen, -127, 127).to(torch.int8)
    w[0], w[1] = 127, -127
    bias = torch.randint(-2**20, 2**20, (40,), generator=gen, dtype=torch.int32)
    m0, shift = int_ops.dyadic_tensors(torch.rand(40, generator=gen) * 1e-3 + 1e-6)
    got = hw.int_linear(q, w, bias, m0, shift, unsigned, -32768, 32767)
    acc = _int64(q, w.t()) + bias.to(torch.int64)
    want = torch.clamp(int_ops.rounding_shift(acc, m0, shift), -32768, 32767).to(torch.int32)
    assert torch.equal(got, want)
    a, b = q[:, :, :1200].reshape(3, 17, 1200), edge_int8((3, 1200, 9), gen)
    got = hw.int_matmul(a, b, unsigned, False, 3e-6, -128, 127)
    assert torch.equal(got, int_ops.requantize_values(_int64(a, b), 3e-6, -128, 127))
