"""Integer non-linearities (ShiftGELU, lambda-ShiftGELU, Shiftmax, I-LayerNorm): hand-computed values, an
independent pure-Python re-derivation, edge values, overflow guards, closeness to the float functions,
and bit-exactness of the ONNX translations under onnxruntime."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hwact.errors import PreconditionError
from hwact.ir import int_nonlinear_ops as nl
from int_helpers import OpModule, assert_onnx_bit_exact, edge_int8

hw = torch.ops.hwact


# ----- building blocks -----------------------------------------------------------------------------
def py_shift_exp(x: int, x0: int, n: int) -> int:
    """The shift exponential on one python int (floor semantics written out with //)."""
    x = x + x // 2 - x // 16
    x = max(x, n * x0)
    q = x // x0
    r = x - x0 * q
    return (r // 2 - x0) * 2 ** (n - q)


def test_shift_exp_hand_computed():
    # S = 1/4 -> x0 = -4. x = 0: e = 4 -> 4·2^n.  x = -4 (real -1): 1.4375x -> -5, q = 1, r = -1,
    # e = floor(-1/2) + 4 = 3 -> 3·2^(n-1) (true 4·2^n·2^-1.4427 = 1.47·2^n; here 1.5·2^n).
    assert nl.exp_zero_point(0.25) == -4
    x = torch.tensor([0, -4, -1000], dtype=torch.int64)
    n = 10
    got = nl.shift_exp(x, -4, n).tolist()
    assert got[:2] == [4 * 2**10, 3 * 2**9]
    # far below the clamp: x' = max(-1000·1.4375, -40) -> q = 10, r = 0, e = 4 -> 4·2^0
    assert got[2] == 4
    for v in range(-300, 1):
        assert nl.shift_exp(torch.tensor([v]), -7, 12).item() == py_shift_exp(v, -7, 12)



@pytest.mark.parametrize("x0, n, drop", [(-4, 10, 0), (-7, 12, 3), (-613, 40, 0), (-(1 << 20), 42, 7), (-1, 0, 0)])
def test_tabulated_shift_exp_equals_shift_exp_over_the_whole_domain(x0, n, drop):
    # every x - max of int16-saturated inputs, [-65535, 0]: the table is read at each of them
    d = torch.arange(-nl.EXP_DOMAIN, 1, dtype=torch.int64)
    assert torch.equal(nl.tabulated_shift_exp(d, x0, n, drop), nl.shift_exp(d, x0, n) >> drop)
    low, table = nl.shift_exp_table(x0, n, drop)
    assert len(table) == -low + 1 <= 65536
    assert len(nl.shift_exp_table(-20, 30, 0)[1]) == 419   # an int8 layer's table: n·|x0|/1.4375 entries
    assert nl.tabulated_shift_exp(torch.tensor([[-65535, 0]]), x0, n, drop).tolist() == \
        [[py_shift_exp(-65535, x0, n) >> drop, py_shift_exp(0, x0, n) >> drop]]

def test_isqrt_newton_is_exact():
    generator = torch.Generator().manual_seed(3)
    values = torch.cat([torch.arange(1, 5000, dtype=torch.int64),
                        torch.randint(1, 2**44, (20000,), generator=generator, dtype=torch.int64),
                        torch.tensor([k * k for k in (2**21, 2**22 - 1, 123456)] +
                                     [k * k - 1 for k in (2**21, 2**22 - 1, 123456)], dtype=torch.int64)])
    values = torch.cat([values, torch.randint(1, 2**62, (20000,), generator=generator, dtype=torch.int64),
                        torch.tensor([4**k for k in range(31)] + [4**k - 1 for k in range(1, 32)], dtype=torch.int64)])
    got = nl.isqrt_newton(values)
    assert got.tolist() == [math.isqrt(v) for v in values.tolist()]


# ----- ShiftGELU -----------------------------------------------------------------------------------
def py_shift_gelu(row: list[int], in_scale: float, out_scale: float, qmin: int, qmax: int, n: int,
                  lam: float = 1.702) -> list[int]:
    x0 = math.floor(-1.0 / (lam * in_scale))
    drop = max(0, (-x0).bit_length() + n + 15 - 62)
    m0, shift = nl.dyadic(in_scale * 2.0**-15 / out_scale)
    m = max(max(row), 0)
    out = []
    for x in row:
        e1, e2 = py_shift_exp(x - m, x0, n) >> drop, py_shift_exp(-m, x0, n) >> drop
        sig = (e1 * 2**15) // max(e1 + e2, 1)
        out.append(min(max((x * sig * m0 + 2 ** (shift - 1)) >> shift, qmin), qmax))
    return out


def test_shift_gelu_hand_computed_values():
    # S_in = S_out = 1/4: codes 0, 4, -4, 8 are reals 0, 1, -1, 2 -> GELU 0, 0.841, -0.159, 1.955
    q = torch.tensor([[0, 4, -4, 8]], dtype=torch.int32)
    out = hw.shift_gelu(q, 0.25, 0.25, -128, 127, 20)
    assert out.dtype == torch.int32
    # x = 8: S_g = 1.702/4 -> x0 = -3; e1 = 3·2^20; -8·1.4375 -> -11, q = 3, r = -2, e = 2 -> e2 = 2·2^17;
    # σ = 3/3.25 (exact 0.968; the coarse x0 costs) -> 8·0.923 = 7.38 -> 7
    assert out.tolist() == [[0, 3, -1, 7]]
    assert out.tolist() == [py_shift_gelu([0, 4, -4, 8], 0.25, 0.25, -128, 127, 20)]


def test_shift_gelu_matches_python_rederivation_on_random_rows():
    generator = torch.Generator().manual_seed(1)
    for in_scale, out_scale, n in [(8 / 127, 8 / 127, 30), (0.03, 0.05, 17), (16 / 127, 0.1, 44), (16 / 127, 0.1, 59)]:
        q = edge_int8((6, 19), generator)
        got = hw.shift_gelu(q, in_scale, out_scale, -128, 127, n)
        want = [py_shift_gelu(r, in_scale, out_scale, -128, 127, n) for r in q.tolist()]
        assert got.tolist() == want



@pytest.mark.parametrize("low, high", [(-128, 127), (-128, -3), (0, 90), (-2000, 31)])
def test_shift_gelu_grid_equals_elementwise_evaluation(monkeypatch, low, high):
    """Tensors with more elements than (x, row max) pairs read ShiftGELU from a grid of those pairs: the same
    integers as evaluating every element (GELU_GRID_LIMIT 0) and as the pure-Python rederivation."""
    generator = torch.Generator().manual_seed(high)
    q = torch.randint(low, high + 1, (6, 40, 200), generator=generator, dtype=torch.int32)
    q[0, 0, :2] = torch.tensor([low, high])
    q[1, 1] = low                                        # a constant row
    evaluated = []
    values = nl._gelu_values

    def counted(x, *rest, **kw):
        evaluated.append(x.numel())
        return values(x, *rest, **kw)

    monkeypatch.setattr(nl, "_gelu_values", counted)
    got = hw.shift_gelu(q, 0.05, 0.04, -128, 127, 25)
    grid = (high - low + 1) * (max(high, 0) + 1)
    assert evaluated == ([grid] if grid <= min(nl.GELU_GRID_LIMIT, q.numel()) else [q.numel()])
    assert evaluated[0] < q.numel() or low == -2000     # int8 ranges take the grid
    monkeypatch.setattr(nl, "GELU_GRID_LIMIT", 0)
    assert torch.equal(got, hw.shift_gelu(q, 0.05, 0.04, -128, 127, 25)) and evaluated[-1] == q.numel()
    for row in (q[0, 0], q[1, 1], q[5, 39]):
        assert hw.shift_gelu(row[None], 0.05, 0.04, -128, 127, 25)[0].tolist() == \
            py_shift_gelu(row.tolist(), 0.05, 0.04, -128, 127, 25)
    assert got[0, 0].tolist() == py_shift_gelu(q[0, 0].tolist(), 0.05, 0.04, -128, 127, 25)


def test_shift_gelu_and_shiftmax_match_python_on_int16_rows_spanning_the_exp_domain():
    # int16 codes (and beyond, saturated): x - max reaches -65535, the far end of the exp table
    generator = torch.Generator().manual_seed(5)
    q = torch.randint(-40000, 40000, (4, 23), generator=generator, dtype=torch.int32)
    q[0, :2] = torch.tensor([-32768, 32767])
    q[1, :2] = torch.tensor([-50000, 50000])
    saturated = q.clamp(-32768, 32767).tolist()
    got = hw.shift_gelu(q, 1e-3, 2e-3, -32768, 32767, 30)
    assert got.tolist() == [py_shift_gelu(r, 1e-3, 2e-3, -32768, 32767, 30) for r in saturated]
    got = hw.shiftmax(q, 1e-3, 1 / 32767, -1, -32768, 32767, 20)
    assert got.tolist() == [py_shiftmax_row(r, 1e-3, 1 / 32767, -32768, 32767, 20) for r in saturated]

@pytest.mark.parametrize("amax", [4.0, 8.0, 12.0, 16.0])
def test_shift_gelu_close_to_gelu_with_the_largest_safe_clamp(amax):
    scale = amax / 127
    q = torch.arange(-127, 128, dtype=torch.int32).reshape(1, -1)  # the row max is the range's top
    exact = F.gelu(q.double() * scale)
    err = (hw.shift_gelu(q, scale, scale, -128, 127, nl.gelu_max_n(scale)).double() * scale - exact).abs()
    # measured: mean 0.013 / 0.011 / 0.0098 / 0.0077, max 0.040 / 0.070 / 0.102 / 0.106
    assert err.mean() < 0.015 and err.max() < 0.11


def test_shift_gelu_cliff_with_ivit_fixed_n23():
    # I-ViT's n = 23 clamps exponents below -23 (|x - xmax| > 9.4): beyond that σ collapses
    scale = 16 / 127
    q = torch.arange(-127, 128, dtype=torch.int32).reshape(1, -1)
    exact = F.gelu(q.double() * scale)
    err = (hw.shift_gelu(q, scale, scale, -128, 127, 23).double() * scale - exact).abs()
    assert err.mean() > 1.0  # measured 2.33: the cliff the per-layer n avoids


def test_shift_gelu_edges_zero_saturation_and_int16_input():
    zero = torch.zeros(2, 5, dtype=torch.int32)
    assert hw.shift_gelu(zero, 0.1, 0.1, -128, 127, 30).tolist() == zero.tolist()
    # output saturation: GELU(12.7) = 12.7 at out_scale 0.05 is 254 -> 127
    big = torch.tensor([[127, -128]], dtype=torch.int32)
    assert hw.shift_gelu(big, 0.1, 0.05, -128, 127, 30).tolist()[0][0] == 127
    # uint8 output clamp: negatives go to 0
    assert hw.shift_gelu(torch.tensor([[-50, 50]], dtype=torch.int32), 0.05, 0.05, 0, 255, 30).tolist() == [[0, 49]]
    # inputs beyond int16 are saturated first
    far = torch.tensor([[100000, 5]], dtype=torch.int32)
    clipped = torch.tensor([[32767, 5]], dtype=torch.int32)
    assert torch.equal(hw.shift_gelu(far, 1e-3, 1e-2, -32768, 32767, 30),
                       hw.shift_gelu(clipped, 1e-3, 1e-2, -32768, 32767, 30))


def test_shift_gelu_overflow_guard_on_adversarial_scale():
    q = torch.zeros(1, 4, dtype=torch.int32)
    with pytest.raises(PreconditionError, match="overflows int64"):
        hw.shift_gelu(q, 1e-15, 1e-3, -128, 127, 23)  # |x0| ≈ 5.9e14 (50 bits): 50 + 23 > 62
    scale = 1e-15
    n = nl.gelu_max_n(scale)
    hw.shift_gelu(q, scale, 1e-3, -128, 127, n)  # the largest safe n passes
    with pytest.raises(PreconditionError):
        hw.shift_gelu(q, scale, 1e-3, -128, 127, n + 1)
    with pytest.raises(PreconditionError, match="clamp n"):
        hw.shift_gelu(q, 0.1, 0.1, -128, 127, 63)


def test_lambda_shift_gelu_equals_shift_gelu_at_1702_and_differs_elsewhere():
    generator = torch.Generator().manual_seed(2)
    q = edge_int8((4, 16), generator)
    base = hw.shift_gelu(q, 0.05, 0.05, -128, 127, 30)
    assert torch.equal(hw.lambda_shift_gelu(q, 0.05, 0.05, -128, 127, 30, 1.702), base)
    assert not torch.equal(hw.lambda_shift_gelu(q, 0.05, 0.05, -128, 127, 30, 1.2), base)
    assert hw.lambda_shift_gelu(q, 0.05, 0.05, -128, 127, 30, 1.2).tolist() == \
        [py_shift_gelu(r, 0.05, 0.05, -128, 127, 30, lam=1.2) for r in q.tolist()]
    with pytest.raises(PreconditionError, match="lambda"):
        hw.lambda_shift_gelu(q, 0.05, 0.05, -128, 127, 30, 0.0)


# ----- Shiftmax ------------------------------------------------------------------------------------
def py_shiftmax_row(row: list[int], in_scale: float, out_scale: float, qmin: int, qmax: int, n: int) -> list[int]:
    x0 = math.floor(-1.0 / in_scale)
    m0, shift = nl.dyadic(2.0**-16 / out_scale)
    top = max(row)
    e = [py_shift_exp(x - top, x0, n) for x in row]
    factor = 2**62 // sum(e)
    probs = [(v * factor + 2**45) >> 46 for v in e]
    return [min(max((p * m0 + 2 ** (shift - 1)) >> shift, qmin), qmax) for p in probs]


def test_shiftmax_hand_computed_and_python_rederivation():
    # equal logits: each e equal -> p = 2^16/4 = 16384 at 2^-16 -> 0.25 -> at 1/255: 63.75 -> 64
    q = torch.full((1, 4), 7, dtype=torch.int32)
    assert hw.shiftmax(q, 0.1, 1 / 255, -1, 0, 255, 16).tolist() == [[64, 64, 64, 64]]
    # one dominant logit: 127 vs -128 at S = 0.1 (gap 25.5) -> p ≈ 1 -> 255, the rest at the clamp floor 0
    q = torch.tensor([[127, -128, -128]], dtype=torch.int32)
    assert hw.shiftmax(q, 0.1, 1 / 255, -1, 0, 255, 16).tolist() == [[255, 0, 0]]
    generator = torch.Generator().manual_seed(4)
    q = edge_int8((5, 11), generator)
    got = hw.shiftmax(q, 0.07, 1 / 127, -1, -128, 127, 20)
    assert got.tolist() == [py_shiftmax_row(r, 0.07, 1 / 127, -128, 127, 20) for r in q.tolist()]


def test_shiftmax_along_other_dim_matches_transposed():
    generator = torch.Generator().manual_seed(5)
    q = edge_int8((3, 9, 6), generator)
    a = hw.shiftmax(q, 0.05, 1 / 255, 1, 0, 255, 18)
    b = hw.shiftmax(q.transpose(1, 2).contiguous(), 0.05, 1 / 255, -1, 0, 255, 18).transpose(1, 2)
    assert torch.equal(a, b)


def test_shiftmax_close_to_softmax():
    generator = torch.Generator().manual_seed(6)
    for amax in (2.0, 6.0, 12.0):
        scale = amax / 127
        q = edge_int8((32, 17), generator)
        n = min(nl.softmax_max_n(scale, 17), 24)
        p = hw.shiftmax(q, scale, 1 / 255, -1, 0, 255, n).double() / 255
        exact = torch.softmax(q.double() * scale, dim=-1)
        # the 1.4375 log2(e) and linear 2^f approximations; measured max 0.011 / 0.032 / 0.036
        assert (p - exact).abs().max() < 0.045
        assert ((p.sum(-1) - 1).abs() < 0.02).all()  # measured <= 2/255


def test_shiftmax_overflow_guard():
    q = torch.zeros(2, 64, dtype=torch.int32)
    with pytest.raises(PreconditionError, match="row sum"):
        hw.shiftmax(q, 1e-7, 1 / 255, -1, 0, 255, 16)  # 64 · 10^7 · 2^16 > 2^42
    n = nl.softmax_max_n(0.01, 64)
    hw.shiftmax(q, 0.01, 1 / 255, -1, 0, 255, n)
    with pytest.raises(PreconditionError):
        hw.shiftmax(q, 0.01, 1 / 255, -1, 0, 255, n + 1)


# ----- I-LayerNorm ---------------------------------------------------------------------------------
def test_layernorm_parameters_and_hand_computed_value():
    gamma_int, beta_int, gamma_scale = nl.layernorm_parameters(torch.tensor([2.0, 1.0]), torch.tensor([0.5, 0.0]), 2)
    assert gamma_int.tolist() == [32767, 16384] and abs(gamma_scale - 2 / 32767) < 1e-15
    frac = nl.layernorm_fraction_bits(2)  # 15 - ceil(log2 sqrt 2) = 14
    assert frac == 14 and beta_int.tolist() == [round(0.5 / (gamma_scale * 2.0**-14)), 0]
    # x = [1, 3] (S = 1): mean 2, d = [-1, 1], var 1 -> normalized [-1, 1] -> y = [-2 + 0.5, 1] at S_out 0.5
    q = torch.tensor([[1, 3]], dtype=torch.int32)
    out = hw.i_layernorm(q, gamma_int, beta_int, 1.0, 0.5, gamma_scale, 0.0, -128, 127)
    assert out.tolist() == [[-3, 2]]


def _layernorm_case(channels: int, generator: torch.Generator):
    gamma = torch.rand(channels, generator=generator) + 0.5
    beta = torch.randn(channels, generator=generator) * 0.3
    return gamma, beta, *nl.layernorm_parameters(gamma, beta, channels)


@pytest.mark.parametrize("channels", [8, 64, 192])
def test_i_layernorm_close_to_layer_norm(channels):
    generator = torch.Generator().manual_seed(channels)
    gamma, beta, gamma_int, beta_int, gamma_scale = _layernorm_case(channels, generator)
    in_scale, out_scale = 6 / 127, 4 / 127
    q = edge_int8((16, channels), generator)
    out = hw.i_layernorm(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, 1e-5, -128, 127)
    exact = F.layer_norm(q.double() * in_scale, (channels,), gamma.double(), beta.double(), 1e-5)
    err = (out.double() * out_scale - exact.clamp(-128 * out_scale, 127 * out_scale)).abs()
    assert err.max() <= 0.55 * out_scale  # half an output step + normalization error (measured 0.498-0.509)


def test_i_layernorm_constant_rows_give_beta_and_int16_inputs_work():
    gamma_int, beta_int, gamma_scale = nl.layernorm_parameters(torch.ones(4), torch.tensor([0.5, -0.5, 0.0, 1.0]), 4)
    q = torch.full((2, 4), -300, dtype=torch.int32)  # var 0: output is β
    out = hw.i_layernorm(q, gamma_int, beta_int, 0.01, 0.25, gamma_scale, 1e-5, -128, 127)
    assert out.tolist() == [[2, -2, 0, 4]] * 2
    wide = torch.tensor([[-32768, 32767, 0, 1]], dtype=torch.int32)  # int16 residual stream extremes
    out = hw.i_layernorm(wide, gamma_int, beta_int, 1e-3, 0.02, gamma_scale, 1e-5, -128, 127)
    exact = F.layer_norm(wide.double() * 1e-3, (4,), torch.ones(4, dtype=torch.float64),
                         torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64), 1e-5)
    assert (out.double() * 0.02 - exact).abs().max() <= 0.6 * 0.02


def test_i_layernorm_guards():
    with pytest.raises(PreconditionError, match="int32"):
        nl.layernorm_parameters(torch.full((4,), 1e-6), torch.ones(4), 4)  # β/γ = 10^6
    gamma_int, beta_int, gamma_scale = nl.layernorm_parameters(None, None, 4)
    with pytest.raises(PreconditionError, match="overflows int64"):
        hw.i_layernorm(torch.zeros(1, 4, dtype=torch.int32), gamma_int, beta_int, 1e-12, 0.1, gamma_scale, 1e-5,
                       -128, 127)


# ----- ONNX: bit-exact under onnxruntime -----------------------------------------------------------
def test_onnx_shift_gelu_and_lambda_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(7)
    q = torch.cat([edge_int8((64, 48), generator), edge_int8((8, 48), generator, -32768, 32767)])
    q[3] = -128  # an all-negative row: m = max(row max, 0) = 0
    gelu = OpModule(lambda self, x: torch.cat([hw.shift_gelu(x, 12 / 127, 0.07, -128, 127, 41),
                                          hw.shift_gelu(x, 0.03, 0.03, 0, 255, 23)], dim=-1))
    assert_onnx_bit_exact(gelu, q, tmp_path, "shift_gelu")
    lam = OpModule(lambda self, x: hw.lambda_shift_gelu(x, 5 / 127, 5 / 127, -128, 127, 30, 1.64))
    assert_onnx_bit_exact(lam, q, tmp_path, "lambda_shift_gelu")


def test_onnx_shiftmax_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(8)
    q = edge_int8((4, 3, 17, 17), generator)
    q[0, 0, 0] = 127  # a row of equal maxima
    module = OpModule(lambda self, x: torch.cat([hw.shiftmax(x, 8 / 127, 1 / 255, -1, 0, 255, 24),
                                            hw.shiftmax(x, 0.02, 2.0**-15, 2, -32768, 32767, 15)], dim=-1))
    assert_onnx_bit_exact(module, q, tmp_path, "shiftmax")
    wide = edge_int8((6, 33), generator, -32768, 32767)  # int16 logits (x0 = -1000)
    module16 = OpModule(lambda self, x: hw.shiftmax(x, 1e-3, 2.0**-15, -1, -32768, 32767, 20))
    assert_onnx_bit_exact(module16, wide, tmp_path, "shiftmax16")


def test_onnx_i_layernorm_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(9)
    _, _, gamma_int, beta_int, gamma_scale = _layernorm_case(96, generator)
    q = torch.cat([edge_int8((40, 96), generator, -32768, 32767), edge_int8((40, 96), generator)]).reshape(8, 10, 96)
    q[0, 0] = 5  # a constant row (variance 0)
    module = OpModule(lambda self, x: hw.i_layernorm(x, self.gamma, self.beta, 2e-3, 0.03, gamma_scale, 1e-5, -128, 127),
                 gamma=gamma_int, beta=beta_int)
    assert_onnx_bit_exact(module, q, tmp_path, "i_layernorm")
