"""Integer core ops: the dyadic rule, rounding on negative and tie values, hand-computed results, and
bit-exactness of every op's ONNX translation under onnxruntime (random + saturating inputs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hwact.errors import PreconditionError
from hwact.ir import int_ops
from hwact.ir.int_ops import dyadic, rounding_shift
from int_helpers import edge_int8, onnx_outputs

hw = torch.ops.hwact


@pytest.mark.parametrize("real", [1e-9, 3.7e-5, 0.0039215, 0.25, 0.5, 0.999999, 1.0, 1.5, 7.25, 1234.5])
def test_dyadic_is_normalized_and_accurate(real):
    m0, shift = dyadic(real)
    assert 2**30 <= m0 < 2**31 and 0 <= shift <= 62
    assert abs(m0 * 2.0**-shift - real) <= real * 2.0**-30


def test_dyadic_refuses_what_int32_cannot_hold():
    for bad in (0.0, -0.5, float("nan"), float("inf"), 2.0**31):
        with pytest.raises(PreconditionError):
            dyadic(bad)
    m0, shift = dyadic(2.0**-40)  # below 2^-32: shift capped at 62, m0 denormalized but exact here
    assert shift == 62 and m0 == 2**22


def test_rounding_shift_rounds_half_up_on_negative_and_tie_values():
    x = torch.tensor([5, 6, 7, -5, -6, -7, 0, 2, -2], dtype=torch.int64)
    # multiplier exactly 1/4: m0 = 2^30, shift = 32; x/4 = 1.25 1.5 1.75 -1.25 -1.5 -1.75 0 0.5 -0.5
    m0, shift = dyadic(0.25)
    assert (m0, shift) == (2**30, 32)
    got = rounding_shift(x, m0, shift).tolist()
    assert got == [1, 2, 2, -1, -1, -2, 0, 1, 0]
    assert got == [math.floor(v / 4 + 0.5) for v in x.tolist()]
    # tensor m0/shift (per channel) give the same
    per = rounding_shift(x, torch.full((9,), m0), torch.full((9,), shift)).tolist()
    assert per == got


def test_requantize_hand_computed_and_saturating():
    q = torch.tensor([100, -100, 127, -128, 3, -3], dtype=torch.int32)
    # S_in/S_out = 0.3 -> 30, -30, 38.1, -38.4, 0.9, -0.9 -> 30 -30 38 -38 1 -1, clamped to [-32, 32]
    out = hw.requantize(q, 0.3, 1.0, -32, 32)
    assert out.tolist() == [30, -30, 32, -32, 1, -1] and out.dtype == torch.int32


def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1000.0, -1000.0, 0.26])
    assert hw.quantize(x, 1.0, -128, 127).tolist() == [0, 2, 2, 0, -2, 127, -128, 0]
    assert hw.quantize(x, 0.5, 0, 255).tolist() == [1, 3, 5, 0, 0, 255, 0, 1]
    assert torch.equal(hw.dequantize(torch.tensor([3, -4], dtype=torch.int32), 0.5), torch.tensor([1.5, -2.0]))


def test_int_linear_hand_computed():
    q = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    w = torch.tensor([[1, 0, -1], [2, 2, 2]], dtype=torch.int8)
    bias = torch.tensor([10, -1], dtype=torch.int32)
    m0, shift = int_ops.dyadic_tensors(torch.tensor([0.5, 0.25]))
    # acc = [1 - 3 + 10, 12 - 1] = [8, 11]; * [0.5, 0.25] = [4, 2.75] -> [4, 3]
    assert hw.int_linear(q, w, bias, m0, shift, False, -128, 127).tolist() == [[4, 3]]
    assert hw.int_linear(q, w, bias, m0, shift, False, 0, 3).tolist() == [[3, 3]]


def test_int_add_rounds_each_branch_once():
    a = torch.tensor([3, -3, 100], dtype=torch.int32)
    b = torch.tensor([1, 1, 100], dtype=torch.int32)
    # a*0.5 -> 1.5 -1.5 50 -> 2 -1 50; b*0.25 -> 0.25 .25 25 -> 0 0 25
    assert hw.int_add(a, b, 0.5, 0.25, -60, 60).tolist() == [2, -1, 60]


class _Linear(torch.nn.Module):
    def __init__(self, w, bias, m0, shift, unsigned, qmin, qmax):
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("bias", bias)
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.args = (unsigned, qmin, qmax)

    def forward(self, q):
        return hw.int_linear(q, self.w, self.bias, self.m0, self.shift, *self.args)


class _Conv(_Linear):
    def forward(self, q):
        return hw.int_conv2d(q, self.w, self.bias, self.m0, self.shift, [2, 1], [1, 0], [1, 1], 2, *self.args)


class _Ops(torch.nn.Module):
    """Every per-tensor op in one graph."""

    def forward(self, x, a, b):
        q = hw.quantize(x, 0.037, -128, 127)
        r = hw.requantize(a, 0.011, 0.0093, -128, 127)
        s = hw.int_add(a, b, 0.61, 0.37, -32768, 32767)
        m = hw.int_matmul(a, b.transpose(-1, -2), False, True, 0.0042, -128, 127)
        p = hw.int_max_pool2d(b.reshape(-1, 1, 4, 6), [2, 2], [2, 2], [1, 1], True)
        return q, hw.dequantize(q, 0.037), r, s, m, p


def _check_onnx(module, inputs, tmp_path):
    expected = module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = onnx_outputs(module, list(inputs), tmp_path / "m.onnx")
    for e, g in zip(expected, got):
        assert g.dtype == e.numpy().dtype and np.array_equal(g, e.numpy())


def _worst_case(q: torch.Tensor, w: torch.Tensor, low: int, high: int) -> None:
    """Plant the largest products: sample 0 all at the input extreme, weight rows 0/1 all ±127. Adjacent
    products then sum to 2 · 255 · 127 > 2^15 (the int16 saturation of onnxruntime's u8s8 AVX2 kernel)."""
    q.reshape(q.shape[0], -1)[0] = high
    q.reshape(q.shape[0], -1)[1] = low
    w[0] = 127
    w[1] = -127


@pytest.mark.parametrize("unsigned", [False, True])
def test_int_linear_onnx_bit_exact(tmp_path, unsigned):
    gen = torch.Generator().manual_seed(1)
    w = edge_int8((24, 48), gen, -127, 127).to(torch.int8)
    bias = torch.randint(-5000, 5000, (24,), generator=gen, dtype=torch.int32)
    m0, shift = int_ops.dyadic_tensors(torch.rand(24, generator=gen) * 0.01 + 1e-4)
    low, high = (0, 255) if unsigned else (-128, 127)
    q = edge_int8((64, 5, 48), gen, low, high)
    _worst_case(q, w, low, high)
    _check_onnx(_Linear(w, bias, m0, shift, unsigned, -32768, 32767), (q,), tmp_path)


@pytest.mark.parametrize("unsigned", [False, True])
def test_int_conv2d_onnx_bit_exact(tmp_path, unsigned):
    gen = torch.Generator().manual_seed(2)
    w = edge_int8((6, 2, 3, 3), gen, -127, 127).to(torch.int8)
    bias = torch.randint(-3000, 3000, (6,), generator=gen, dtype=torch.int32)
    m0, shift = int_ops.dyadic_tensors(torch.rand(6, generator=gen) * 0.02 + 1e-4)
    low, high = (0, 255) if unsigned else (-128, 127)
    q = edge_int8((16, 4, 9, 7), gen, low, high)
    _worst_case(q, w, low, high)
    _check_onnx(_Conv(w, bias, m0, shift, unsigned, -32768, 32767), (q,), tmp_path)


def test_per_tensor_ops_onnx_bit_exact(tmp_path):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 4, 6, generator=gen) * 3
    x.view(-1)[:6] = torch.tensor([1e6, -1e6, 0.037 * 2.5, -0.037 * 2.5, 0.037 * 0.5, 0.0])
    a = edge_int8((32, 4, 6), gen)
    b = edge_int8((32, 4, 6), gen, 0, 255)
    a[0], b[0] = -128, 255  # int_matmul's largest products (int8 x uint8)
    _check_onnx(_Ops(), (x, a, b), tmp_path)


def test_onnx_floor_shift_is_exact_over_the_whole_int64_range():
    """onnx_floor_shift run by onnxruntime (onnxscript eager mode) equals Python's >> on the extremes."""
    values = [-(1 << 63), -(1 << 63) + 1, -(1 << 40) - 1, -5, -4, -3, -1, 0, 1, 3, (1 << 62) + 7, (1 << 63) - 1]
    v = np.array(values, dtype=np.int64)
    for shift in (0, 1, 2, 5, 31, 62):
        got = np.asarray(int_ops.onnx_floor_shift(v, shift).value)
        assert got.tolist() == [x >> shift for x in values], shift
    shifts = np.arange(63, dtype=np.int64)
    got = np.asarray(int_ops.onnx_floor_shift(np.full(63, -12345678901, dtype=np.int64), shifts).value)
    assert got.tolist() == [-12345678901 >> s for s in range(63)]
