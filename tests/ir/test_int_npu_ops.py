"""hwact::npu_softmax and hwact::npu_layernorm (hwact/ir/int_npu_ops.py): the int32 primitives against Python's
integers, accuracy against float softmax / LayerNorm (stated as numbers), edge rows, guards, and the ONNX
translations bit-exact under onnxruntime. (Their TOSA lowerings: tests/backends/test_tosa_npu_ops.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hwact.errors import PreconditionError
from hwact.ir import int_npu_ops as npu
from hwact.ir.int_nonlinear_ops import layernorm_fraction_bits, layernorm_parameters
from int_helpers import OpModule, assert_onnx_bit_exact, edge_int8

hw = torch.ops.hwact


def test_int32_primitives_match_python_integers():
    generator = torch.Generator().manual_seed(1)
    values = torch.cat([torch.tensor([0, 1, 2, 3, (1 << 31) - 1, 1 << 30, (1 << 30) - 1]),
                        torch.randint(0, 1 << 31, (500,), generator=generator)])
    assert npu.clz32(values).tolist() == [32 - v.bit_length() for v in values.tolist()]
    a = torch.randint(-(1 << 31), 1 << 31, (300,), generator=generator)
    b = torch.randint(-(1 << 31), 1 << 31, (300,), generator=generator)
    for shift in (0, 1, 29, 31, 45):
        want = [x * y if shift == 0 else (x * y + (1 << (shift - 1))) >> shift for x, y in zip(a.tolist(), b.tolist())]
        assert npu.mul_shift(a, b, shift).tolist() == want
    amounts = torch.randint(0, 31, (300,), generator=generator)
    want = [(x + (1 << s >> 1)) >> s for x, s in zip(a.tolist(), amounts.tolist())]
    assert npu.round_shift_right(a, amounts).tolist() == want


def _softmax_codes(rows: int, channels: int, generator, low=-128, high=127) -> torch.Tensor:
    q = edge_int8((rows, channels), generator, low, high)
    q[0] = 9                              # all equal
    q[1] = low
    q[1, channels // 2] = high            # one huge value
    return q


@pytest.mark.parametrize("channels", [1, 17, 65, 197])
def test_npu_softmax_close_to_softmax(channels):
    """Output codes within 1 of round(softmax / S_out) for every element (int8 scores at vit-tiny's scale)."""
    generator = torch.Generator().manual_seed(channels)
    q = _softmax_codes(40, channels, generator)
    scale, out_scale = 0.0093, 1 / 255
    got = hw.npu_softmax(q, scale, out_scale, -1, 0, 255, False)
    want = torch.clamp(torch.round(torch.softmax(q.double() * scale, -1) / out_scale), 0, 255)
    error = (got.double() - want).abs()
    assert error.max() <= 1 and error.mean() < 0.01
    if channels == 1:
        assert (got == 255).all()
    assert (got[0] == got[0, 0]).all()                                      # equal scores, equal probabilities
    assert got[1, channels // 2] == want[1, channels // 2]


@pytest.mark.parametrize("channels, wide", [(17, False), (197, False), (49, True)])
def test_npu_softmax_probabilities_within_the_stated_bound(channels, wide):
    """The docstring's precision, seen through fine int16 output codes (S_out = 2^-15): every probability p is within
    2^-14.5 (the int16 row factor f) + (1 + C·p) / (2t) (the rounded table entries, t = T / max p; wide: + 2 · 0.14 %
    for the 2^(1/256) exponent steps) + S_out / 2 of float softmax, also on flat rows where f is smallest."""
    generator = torch.Generator().manual_seed(channels)
    q = _softmax_codes(60, channels, generator)
    q[2] = torch.randint(-2, 3, (channels,), generator=generator)          # a flat row: the largest t, the least f
    scale, out_scale = 0.02, 2.0**-15
    c = npu.softmax_npu_constants(scale, out_scale, channels, wide)
    got = hw.npu_softmax(q, scale, out_scale, -1, 0, 32767, wide).double() * out_scale
    want = torch.softmax(q.double() * scale, -1)
    total = c.top / want.amax(dim=-1, keepdim=True)
    bound = 2.0**-14.5 + (1 + channels * want) / (2 * total) + out_scale / 2 + (want * 0.0028 if wide else 0)
    assert ((got - want).abs() - bound).max() <= 0
    assert 16384 <= 2.0 ** (60 - c.reciprocal_shift) / c.top * (1 + 2**-20) + 1 <= npu.F16_MAX


def test_npu_softmax_int16_scores_with_a_stepped_exponent():
    """int16 scores: the wide exponential (base 2, steps of 1/256) within 1 code of float softmax, a score at
    int16's lowest code (a masked position) gets probability 0."""
    generator = torch.Generator().manual_seed(3)
    q = torch.randint(-3000, 3000, (30, 50), generator=generator, dtype=torch.int32)
    q[:, 7] = -32768
    scale, out_scale = 0.002, 1 / 255
    got = hw.npu_softmax(q, scale, out_scale, -1, 0, 255, True)
    want = torch.clamp(torch.round(torch.softmax(q.double() * scale, -1) / out_scale), 0, 255)
    assert (got.double() - want).abs().max() <= 1
    assert (got[:, 7] == 0).all()


def test_npu_softmax_guards():
    q = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(PreconditionError, match="not the last dimension"):
        hw.npu_softmax(q, 0.01, 1 / 255, 0, 0, 255, False)
    with pytest.raises(PreconditionError, match="too coarse for the wide"):
        hw.npu_softmax(q, 30.0, 1 / 255, -1, 0, 255, True)
    with pytest.raises(PreconditionError, match="finer than 2"):
        hw.npu_softmax(q, 0.01, 2.0**-31, -1, 0, 255, False)
    with pytest.raises(PreconditionError, match="overflows the int32 sum"):
        npu.softmax_npu_constants(0.01, 1 / 255, 1 << 24, False)


def _out_shift(channels, in_scale, out_scale, gamma_scale, eps, bounds, gamma_int, beta_int) -> int:
    """The output shift the npu-layernorm pass picks."""
    c = npu.layernorm_npu_constants(channels, in_scale, out_scale, gamma_scale, eps, *bounds)
    return npu.layernorm_out_shift(c, int(gamma_int.abs().max()), int(beta_int.abs().max()))


def _layernorm_case(channels: int, generator):
    gamma = torch.randn(channels, generator=generator) * 0.4 + 1
    beta = torch.randn(channels, generator=generator) * 0.2
    return gamma, beta, *layernorm_parameters(gamma, beta, channels)


@pytest.mark.parametrize("channels, bounds, scale", [(64, (-32768, 32767), 6e-5), (192, (-128, 127), 0.05),
                                                     (768, (-32768, 32767), 1e-4), (2, (-128, 127), 0.05)])
def test_npu_layernorm_close_to_layer_norm(channels, bounds, scale):
    """Output codes within 1 of round(LayerNorm / S_out), mean error below 0.01 codes, also for rows spanning a
    few codes of an int16 range (the row shift keeps their bits) and for a constant row (output β)."""
    generator = torch.Generator().manual_seed(channels)
    gamma, beta, gamma_int, beta_int, gamma_scale = _layernorm_case(channels, generator)
    low, high = bounds
    q = edge_int8((60, channels), generator, low, high)
    q[0] = 11                                                              # constant row
    q[1] = torch.randint(-3, 4, (channels,), generator=generator)          # a spread of a few codes
    q[2:30] = q[2:30] // 37                                                # narrower rows
    out_scale = 0.03
    shift = _out_shift(channels, scale, out_scale, gamma_scale, 1e-6, bounds, gamma_int, beta_int)
    got = hw.npu_layernorm(q, gamma_int, beta_int, scale, out_scale, gamma_scale, 1e-6, low, high, -128, 127, shift)
    want = torch.clamp(torch.round(F.layer_norm(q.double() * scale, (channels,), gamma.double(), beta.double(), 1e-6)
                                   / out_scale), -128, 127)
    error = (got.double() - want).abs()
    assert error.max() <= 1 and error.mean() < 0.01


@pytest.mark.parametrize("channels, bounds", [(64, (-32768, 32767)), (65, (-128, 127)), (768, (-32768, 32767)),
                                             (384, (-32768, 32767))])
def test_npu_layernorm_std_precision_on_small_spreads(channels, bounds):
    """γ = 1, β = 0, eps 1e-12 and int16 output codes at 2^-12: for rows spanning 2 to 200 codes of their range
    (the row shift scales them up), the fitted output / LayerNorm ratio of each row, i.e. the relative error of
    1 / std, is within the docstring's bound (C/2 + 1) / v <= C² / 2^30 (plus 2^-12 for the output codes), and
    no code is off by more than 1 beyond that relative error and half a step of z (2^-F)."""
    generator = torch.Generator().manual_seed(channels)
    gamma_int, beta_int, gamma_scale = layernorm_parameters(torch.ones(channels), torch.zeros(channels), channels)
    rows = [torch.randint(-spread, spread + 1, (channels,), generator=generator) + bounds[1] // 40 * (spread % 7)
            for spread in (1, 2, 3, 5, 17, 100)]
    outlier = torch.zeros(channels, dtype=torch.int64)
    outlier[channels // 3] = 1                                              # one code off a constant row
    q = torch.stack(rows + [outlier]).clamp(*bounds)
    out_scale, scale = 2.0**-12, 1e-3
    shift = _out_shift(channels, scale, out_scale, gamma_scale, 1e-12, bounds, gamma_int, beta_int)
    got = hw.npu_layernorm(q, gamma_int, beta_int, scale, out_scale, gamma_scale, 1e-12, *bounds, -32768, 32767,
                           shift).double() * out_scale
    want = F.layer_norm(q.double() * scale, (channels,), eps=1e-12)
    inside = want.abs() < 32767 * out_scale                                 # the outlier of a wide row saturates
    got, want = got * inside, want * inside
    ratio = (got * want).sum(dim=-1) / (want * want).sum(dim=-1)
    assert (ratio[:-1] - 1).abs().max() < 2.0**-12 + channels**2 / 2.0**30        # the outlier row: codes only
    z_step = 2.0 ** -layernorm_fraction_bits(channels)                     # z's own resolution
    assert (((got - want).abs() - want.abs() * channels**2 / 2.0**30 - z_step / 2) / out_scale).max() <= 1.01


def test_positive_deviations_of_a_varying_row_are_at_least_c_minus_1():
    """The docstring's P >= C − 1 for every integer row that is not constant (the precision bound uses it)."""
    generator = torch.Generator().manual_seed(4)
    for channels in (2, 3, 5, 8, 13):
        q = torch.randint(-3, 4, (4000, channels), generator=generator)
        q[0] = 0
        q[0, 0] = 1                                          # one code off a constant row: P = C − 1 exactly
        d = channels * q - q.sum(dim=-1, keepdim=True)
        positive = d.clamp(min=0).sum(dim=-1)
        varying = q.amax(dim=-1) != q.amin(dim=-1)
        assert int(positive[varying].min()) == channels - 1


def test_npu_layernorm_guards():
    gamma_int, beta_int = torch.full((8,), 32767, dtype=torch.int32), torch.full((8,), 3 << 29, dtype=torch.int32)
    with pytest.raises(PreconditionError, match="leaves int32 for every output shift"):
        _out_shift(8, 0.05, 1e-6, 1.0, 1e-6, (-128, 127), gamma_int, beta_int)     # γ / S_out too large
    fine = torch.ones(8, dtype=torch.int32)
    with pytest.raises(PreconditionError, match="leaves int32 at output shift 32"):     # the op checks its argument
        hw.npu_layernorm(torch.zeros(2, 8, dtype=torch.int32), fine * 32767, fine, 0.05, 0.03, 1e-4, 1e-6, -128, 127,
                         -128, 127, 32)
    with pytest.raises(PreconditionError, match="int16 codes"):
        npu.layernorm_npu_constants(8, 0.05, 0.03, 1e-4, 1e-6, -70000, 127)
    with pytest.raises(PreconditionError, match="empty"):
        npu.layernorm_npu_constants(0, 0.05, 0.03, 1e-4, 1e-6, -128, 127)
    with pytest.raises(PreconditionError, match="rounding of 2048 squares"):      # wide int16 rows, k = 7
        npu.layernorm_npu_constants(2048, 1e-3, 0.03, 1e-4, 1e-6, -32768, 32767)
    with pytest.raises(PreconditionError, match="too large for the int32 variance"):
        npu.layernorm_npu_constants(64, 1e-9, 0.03, 1e-4, 1.0, -128, 127)
    wide = npu.layernorm_npu_constants(768, 1e-4, 0.03, 1e-4, 1e-6, -32768, 32767)
    assert (wide.pre_shift, wide.slack) == (4, 384) and wide.max_row_shift < 31
    assert npu.layernorm_npu_constants(768, 0.05, 0.03, 1e-4, 1e-6, -128, 127).pre_shift == 0


# ----- ONNX: bit-exact under onnxruntime -----------------------------------------------------------
def test_onnx_npu_softmax_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(8)
    q = _softmax_codes(4 * 17, 17, generator).reshape(4, 17, 17)
    module = OpModule(lambda self, x: torch.cat([hw.npu_softmax(x, 0.0093, 0.00062, -1, 0, 255, False),
                                            hw.npu_softmax(x, 0.05, 1 / 128, -1, -128, 127, True)], dim=-1))
    assert_onnx_bit_exact(module, q, tmp_path, "npu_softmax")
    wide = torch.cat([edge_int8((30, 40), generator, -32768, 32767), torch.randint(-900, 900, (30, 40),
                                                                                   generator=generator)])
    module16 = OpModule(lambda self, x: hw.npu_softmax(x, 0.003, 1 / 255, -1, 0, 255, True))
    assert_onnx_bit_exact(module16, wide, tmp_path, "npu_softmax16")


def test_onnx_npu_layernorm_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(9)
    _, _, gamma_int, beta_int, gamma_scale = _layernorm_case(96, generator)
    q = edge_int8((80, 96), generator, -32768, 32767)
    q[0] = 5                                                   # constant row
    q[1] = torch.randint(-2, 3, (96,), generator=generator)    # a few codes: the largest row shift
    q[2:40] = q[2:40] // 101
    shift = _out_shift(96, 6e-5, 0.03, gamma_scale, 1e-6, (-32768, 32767), gamma_int, beta_int)
    module = OpModule(lambda self, x: hw.npu_layernorm(x, self.gamma, self.beta, 6e-5, 0.03, gamma_scale, 1e-6, -32768,
                                                  32767, -128, 127, shift), gamma=gamma_int, beta=beta_int)
    assert_onnx_bit_exact(module, q.reshape(8, 10, 96), tmp_path, "npu_layernorm")
