"""Integer softmax and LayerNorm defined in the int32 arithmetic of TOSA 1.0 (PRO-INT) and Arm Ethos-U55/U65/U85
(docs/ethos-u.md): hwact ops with one exact reference each, and ONNX translations.

Shiftmax and I-LayerNorm (int_nonlinear_ops.py) need int64 (a 2^62 / sum division, a 61-bit variance);
these two are built only from what Vela 5.2 places on an Ethos-U55: RESCALE (apply_scale_32, SINGLE_ROUND),
REDUCE_MAX (int8/int16), REDUCE_SUM, SUB / ADD, TABLE (int8 -> int8 only on U55), CLZ, LOGICAL_LEFT_SHIFT
and ARITHMETIC_RIGHT_SHIFT (int32, round), and MUL with a shift. The references below run in int64 torch
and perform exactly those operations; every intermediate is shown (or guarded) to fit int32, so they equal
the TOSA network op for op. Notation (all integers):

    rs(x, m0, sh)  = floor((x · m0 + 2^(sh−1)) / 2^sh)             RESCALE's apply_scale_32 (= rounding_shift)
    ms(a, b, sh)   = floor((a · b + 2^(sh−1)) / 2^sh), ms(a, b, 0) = a · b     MUL with shift, int64 inside
    clz(v)         = leading zero bits of v as int32 (v in [1, 2^31): v in [2^(31−clz), 2^(32−clz)); clz(0) = 32)

hwact::npu_softmax(q, in_scale, out_scale, dim, qmin, qmax, wide)      softmax along the last dim
    m   = max(x)  over the row;  d = x − m <= 0               REDUCE_MAX on the stored 8/16-bit codes, SUB in int32
    e   = the exponential of d, by one of two int8-TABLE forms (V: a 256-entry table of stored index s, looked up
          as two int8 TABLEs, its high and low byte with zero point −128, recombined as 256 · hi + lo):
      narrow (wide = False; the pass's choice when the input codes span at most 256 values):
          s = clamp(d + 127, −128, 127),  e = V[s] = round(A · exp((s − 127) · S_in)),
          A = min(65535, floor((2^31 − 1) / C))
          every code difference has its own exact entry (differences past 255 codes saturate at the last)
      wide (int16 scores, masked scores): the exponent in base 2 with 8 fraction bits, I-ViT's shift trick
          t = rs(d, dyadic(S_in · log2(e) · 256)) <= 0,  i = (t + 128) >> 8 (ARITHMETIC_RIGHT_SHIFT, round),
          s = t − 256 i in [−128, 127],  V[s] = round(2^14 · 2^(s/256)),  e = rs(V[s], 1, min(−i, 31))
          (e ≈ 2^14 · 2^(d · S_in · log2 e), exponent steps of 1/256: 0.14 % relative at most)
    t   = Σ e  (< 2^31: C · max e checked);  l = clz(t) − 1;  tn = t << l in [2^30, 2^31)   (a = tn / 2^31)
    r   = R48 − ms(tn, R32, 31);  3 times: r = ms(r, 2^30 − ms(tn, r, 31), 29)
          Newton for 1/a in Q2.29 (gemmlowp's start 48/17 − 32/17 · a; relative error 2^−32 after 3 steps)
    p   = ms(e << l, r, 30)                                      e / t at scale 2^−30 (e << l <= tn < 2^31)
    out = clamp(rs(p, dyadic(2^−30 / S_out)), qmin, qmax)
  The row max always contributes V's largest entry (A, or 2^14), so t >= 1 and nothing divides by zero. No
  64-bit value exists anywhere: the MULs produce at most 2^30 + 1 after their shifts.

hwact::npu_layernorm(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax, qmin, qmax)
  LayerNorm over the last dim (C channels), γ = gamma_int · gamma_scale, β = beta_int · gamma_scale · 2^−F
  (the same integer γ, β as I-LayerNorm: int_nonlinear_ops.layernorm_parameters, F = layernorm_fraction_bits):
    x   = clamp(q, in_qmin, in_qmax);  d = C · x − Σ x            = C · (x − mean), exact (I-ViT rounds the mean)
    L   = min(clz(C · (max x − min x)) − clz(Dmax), Lmax)        Dmax = C · (in_qmax − in_qmin)
    dn  = d << L                                                  |dn| < D = 2^bits(Dmax): each row scaled up to
                                                                  the full range (exact), so small spreads keep bits
    v   = max(Σ ms(dn, dn, sv) + rs(eps_hi, 1, 2 (Lmax − L)), 1)   sv = the least shift with C · D² / 2^sv < 2^30
                                                  eps_hi = round(eps · C³ / S_in² · 2^(2 Lmax − sv)) < 2^30,
                                                  Lmax <= 15 the largest row shift keeping eps_hi below 2^30
    h   = ((clz(v) + 1) >> 1) − 1;  vn = v << 2h in [2^29, 2^31)            (a = vn / 2^31 in [1/4, 1))
    y   = Y0 − ms(vn, Y1, 31);  3 times: y = ms(y, 3 · 2^29 − ms(ms(vn, y, 31), y, 29), 30)
          Newton for 1/sqrt(a) in Q2.29 from the line 2.132 − 1.218 a (relative error 2^−24 after 3 steps)
    z   = ms(ms(dn, y, sz) << h, K, sk)      ≈ (x − mean) / std · 2^F,  sz = ceil(15.5 + sv / 2),
                                             (K, sk) = dyadic(sqrt(C) · 2^(F − sv/2 − 44.5 + sz))
    acc = z · gamma_int + beta_int
    out = clamp(rs(acc, dyadic(gamma_scale · 2^−F / S_out)), qmin, qmax)
  Why: dn = d · 2^L and the variance term v (eps included, scaled by 2^2L too) is Σ dn² / 2^sv, so
  (x − mean)/std = dn · sqrt(C) · 2^(−sv/2) / sqrt(v), and 1/sqrt(v) = 2^h / sqrt(vn) = 2^h · y · 2^−15.5.
  Precision: the mean is exact; a row's largest |dn| is at least D/4 (its farthest code is half the spread
  from the mean), so its square keeps >= 25 − log2 C bits; the square root keeps 24 bits; the << h after the
  product costs at most 2^(h−1) of |z| · 2^30 / sqrt(C), i.e. 2^−12 relative at C = 192.
  Bounds (layernorm_npu_constants / check_layernorm_affine, else PreconditionError): C · x, d < 2^31; v < 2^31;
  ms(dn, y, sz) << h <= 2^30 while |z| <= 2 sqrt(C), i.e. unless Σ ms(dn, dn, sv) underestimates Σ dn² / 2^sv
  four times, which the rounding (C / 2 at most) cannot when L < Lmax (then Σ dn² >= D² / 16) or eps_hi >= 2^28,
  and which sv <= 26 + log2 C rules out otherwise; |z · gamma_int| + |beta_int| < 2^31 and RESCALE's
  |acc| < 2^(shift − 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from onnxscript import INT32
from onnxscript import opset18 as op

from hwact.errors import PreconditionError
from hwact.ir.int_nonlinear_ops import layernorm_fraction_bits
from hwact.ir.int_ops import (INT64_TYPE, dyadic, onnx_clamp_int32, onnx_floor_shift, onnx_int64, onnx_rounding_shift,
                              rounding_shift)
from hwact.ir.ops import hwact_op, onnx_translation

INT32_LIMIT = 1 << 31
IDENTITY = (1 << 30, 30)             # RESCALE x1
EXP_AMPLITUDE = 65535                # narrow: V[127] = A <= 2^16 − 1 (two int8 tables: high and low byte)
WIDE_ONE_BITS = 14                   # wide: V[s] = round(2^14 · 2^(s/256))
WIDE_FRACTION_BITS = 8               # wide: the base-2 exponent with 8 fraction bits
PROB_BITS = 30                       # p = e / s at scale 2^−30
RECIPROCAL_START = (round(48 / 17 * 2**29), round(32 / 17 * 2**29))
RSQRT_START = (round(2.132 * 2**29), round(1.218 * 2**29))
NEWTON_STEPS = 3


# ----- the int32 primitives, as TOSA defines them (int64 tensors holding int32 values) ------------------
def mul_shift(a: torch.Tensor, b, shift: int) -> torch.Tensor:
    """TOSA MUL of int32 values with `shift`: floor((a · b + 2^(shift−1)) / 2^shift) (a · b when shift = 0)."""
    product = a * b
    return product if shift == 0 else (product + (1 << (shift - 1))) >> shift


def round_shift_right(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """TOSA ARITHMETIC_RIGHT_SHIFT with round: floor((x + 2^(amount−1)) / 2^amount), x itself for amount 0."""
    half = torch.bitwise_right_shift(torch.bitwise_left_shift(torch.ones_like(x), amount), 1)
    return torch.bitwise_right_shift(x + half, amount)


def clz32(v: torch.Tensor) -> torch.Tensor:
    """TOSA CLZ of int32 values v in [0, 2^31): 31 − floor(log2 v) (32 for 0), by a binary search."""
    top = torch.zeros_like(v)                            # floor(log2 v) for v >= 1
    for bit in (16, 8, 4, 2, 1):
        top = top + bit * (v >= torch.bitwise_left_shift(torch.ones_like(v), top + bit)).to(torch.int64)
    return torch.where(v == 0, 32, 31 - top)


# ----- constants from the float scales (shared by the reference, the ONNX translation and the TOSA lowering) -----
@dataclass(frozen=True)
class SoftmaxConstants:
    wide: bool
    index_m0: int              # wide: t = rs(d, index_m0, index_shift)
    index_shift: int
    values: tuple[int, ...]    # V[s] for the stored index s = −128 .. 127
    out_m0: int
    out_shift: int


def softmax_npu_constants(in_scale: float, out_scale: float, channels: int, wide: bool) -> SoftmaxConstants:
    if channels < 1:
        raise PreconditionError("npu_softmax: the softmax dimension is empty")
    if not (math.isfinite(in_scale) and in_scale > 0):
        raise PreconditionError(f"npu_softmax: input scale {in_scale!r} is not a positive finite number")
    if wide:
        index_m0, index_shift = dyadic(in_scale * math.log2(math.e) * 2**WIDE_FRACTION_BITS)
        if index_shift < 18:                    # RESCALE's |d| < 2^(shift − 1) for int16 differences
            raise PreconditionError(f"npu_softmax: input scale {in_scale:.3g} is too coarse for the wide exponent")
        values = tuple(round(2**WIDE_ONE_BITS * 2 ** (s / 2**WIDE_FRACTION_BITS)) for s in range(-128, 128))
    else:
        index_m0, index_shift = IDENTITY
        amplitude = min(EXP_AMPLITUDE, (INT32_LIMIT - 1) // channels)
        values = tuple(round(amplitude * math.exp((s - 127) * in_scale)) for s in range(-128, 128))
    if channels * max(values) >= INT32_LIMIT or max(values) < 256:
        raise PreconditionError(f"npu_softmax: a row of {channels} values overflows the int32 sum of exponentials")
    out_m0, out_shift = dyadic(2.0 ** -PROB_BITS / out_scale)
    if out_shift < PROB_BITS + 2:
        raise PreconditionError(f"npu_softmax: output scale {out_scale:.3g} is finer than 2^-29: p (up to 2^30) "
                                "would leave RESCALE's input range")
    return SoftmaxConstants(wide, index_m0, index_shift, values, out_m0, out_shift)


def softmax_exponential(d: torch.Tensor, c: SoftmaxConstants) -> torch.Tensor:
    """e of the module docstring from d = x − max (int64 tensors)."""
    values = torch.tensor(c.values, dtype=torch.int64)
    if not c.wide:
        return values[torch.clamp(d + 127, -128, 127) + 128]
    t = rounding_shift(d, c.index_m0, c.index_shift)
    whole = (t + (1 << WIDE_FRACTION_BITS - 1)) >> WIDE_FRACTION_BITS
    looked = values[t - (whole << WIDE_FRACTION_BITS) + 128]
    return round_shift_right(looked, torch.clamp(-whole, max=31))


@dataclass(frozen=True)
class LayerNormConstants:
    span_clz: int              # clz(Dmax)
    max_row_shift: int         # Lmax
    square_shift: int          # sv
    eps_hi: int
    z_shift: int               # sz
    k: int                     # K
    k_shift: int               # sk
    fraction_bits: int         # F
    out_m0: int
    out_shift: int


def layernorm_npu_constants(channels: int, in_scale: float, out_scale: float, gamma_scale: float, eps: float,
                            in_qmin: int, in_qmax: int) -> LayerNormConstants:
    """The constants of npu_layernorm; PreconditionError when an int32 bound (module docstring) fails
    (those on γ and β: check_layernorm_affine)."""
    if channels < 1:
        raise PreconditionError("npu_layernorm: the normalized dimension is empty")
    if not (in_qmin <= 0 <= in_qmax and -(1 << 15) <= in_qmin and in_qmax < 1 << 15):
        raise PreconditionError(f"npu_layernorm: input codes [{in_qmin}, {in_qmax}] are not int16 codes around 0")
    d_max = max(channels * (in_qmax - in_qmin), 1)
    if channels * (1 << 15) >= INT32_LIMIT:
        raise PreconditionError(f"npu_layernorm: C · x overflows int32 (C = {channels})")
    bound = 1 << d_max.bit_length()                                  # D
    scale_eps = eps * channels ** 3 / (in_scale * in_scale)
    square_shift = 0
    while channels * -(-bound * bound // 2**square_shift) >= 1 << 30 or round(scale_eps / 2**square_shift) >= 1 << 30:
        square_shift += 1
    max_row_shift = 0
    while max_row_shift < 15 and round(scale_eps * 2.0 ** (2 * max_row_shift + 2 - square_shift)) < 1 << 30:
        max_row_shift += 1
    if max_row_shift == 15 and square_shift > 26 + math.log2(channels):
        raise PreconditionError(f"npu_layernorm: variance shift {square_shift} is too large for C = {channels}",
                                hint="keep this LayerNorm as i-layernorm")
    eps_hi = round(scale_eps * 2.0 ** (2 * max_row_shift - square_shift))
    z_shift = math.ceil(15.5 + square_shift / 2)
    frac = layernorm_fraction_bits(channels)
    k, k_shift = dyadic(math.sqrt(channels) * 2.0 ** (frac - square_shift / 2 - 44.5 + z_shift))
    out_m0, out_shift = dyadic(gamma_scale * 2.0 ** -frac / out_scale)
    return LayerNormConstants(32 - d_max.bit_length(), max_row_shift, square_shift, eps_hi, z_shift, k, k_shift, frac,
                              out_m0, out_shift)


def check_layernorm_affine(c: LayerNormConstants, channels: int, gamma_max: int, beta_max: int) -> None:
    """|z · gamma_int| + |beta_int| must stay in int32 and in the output RESCALE's range 2^(shift − 1)."""
    acc_max = math.ceil(math.sqrt(channels) * 2**c.fraction_bits * (1 + 2**-10)) * gamma_max + beta_max
    if acc_max >= INT32_LIMIT or acc_max >= 1 << (c.out_shift - 1):
        raise PreconditionError(f"npu_layernorm: z · γ + β (up to {acc_max}) leaves int32 or the output RESCALE's "
                                f"range 2^{c.out_shift - 1}", hint="keep this LayerNorm as i-layernorm")


# ----- hwact::npu_softmax ---------------------------------------------------------------------------------
def _check_last(dim: int, rank: int) -> None:
    if dim % max(rank, 1) != rank - 1:
        raise PreconditionError(f"npu_softmax: dim {dim} is not the last dimension (rank {rank})")


@hwact_op("npu_softmax", bounds=("qmin", "qmax"))
def npu_softmax(q: torch.Tensor, in_scale: float, out_scale: float, dim: int, qmin: int, qmax: int,
                wide: bool) -> torch.Tensor:
    """Softmax along the last dim in TOSA int32 arithmetic (module docstring)."""
    _check_last(dim, q.dim())
    c = softmax_npu_constants(in_scale, out_scale, q.shape[-1], wide)
    x = q.to(torch.int64)
    e = softmax_exponential(x - x.amax(dim=-1, keepdim=True), c)
    s = e.sum(dim=-1, keepdim=True)
    shift = clz32(s) - 1
    sn = torch.bitwise_left_shift(s, shift)
    r = RECIPROCAL_START[0] - mul_shift(sn, RECIPROCAL_START[1], 31)
    for _ in range(NEWTON_STEPS):
        r = mul_shift(r, (1 << 30) - mul_shift(sn, r, 31), 29)
    p = mul_shift(torch.bitwise_left_shift(e, shift), r, 30)
    return torch.clamp(rounding_shift(p, c.out_m0, c.out_shift), qmin, qmax).to(torch.int32)


@npu_softmax.register_fake
def _(q, in_scale, out_scale, dim, qmin, qmax, wide):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


# ----- hwact::npu_layernorm -------------------------------------------------------------------------------
@hwact_op("npu_layernorm", bounds=("qmin", "qmax"))
def npu_layernorm(q: torch.Tensor, gamma_int: torch.Tensor, beta_int: torch.Tensor, in_scale: float,
                  out_scale: float, gamma_scale: float, eps: float, in_qmin: int, in_qmax: int, qmin: int,
                  qmax: int) -> torch.Tensor:
    """LayerNorm over the last dim in TOSA int32 arithmetic (module docstring)."""
    channels = q.shape[-1]
    gamma, beta = gamma_int.to(torch.int64), beta_int.to(torch.int64)
    c = layernorm_npu_constants(channels, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax)
    check_layernorm_affine(c, channels, int(gamma.abs().max()), int(beta.abs().max()))
    x = torch.clamp(q.to(torch.int64), in_qmin, in_qmax)
    d = channels * x - x.sum(dim=-1, keepdim=True)
    span = channels * (x.amax(dim=-1, keepdim=True) - x.amin(dim=-1, keepdim=True))
    row_shift = torch.clamp(clz32(span) - c.span_clz, max=c.max_row_shift)
    dn = torch.bitwise_left_shift(d, row_shift)
    eps_row = round_shift_right(torch.full_like(row_shift, c.eps_hi), 2 * (c.max_row_shift - row_shift))
    v = torch.clamp(mul_shift(dn, dn, c.square_shift).sum(dim=-1, keepdim=True) + eps_row, min=1)
    h = ((clz32(v) + 1) >> 1) - 1
    vn = torch.bitwise_left_shift(v, 2 * h)
    y = RSQRT_START[0] - mul_shift(vn, RSQRT_START[1], 31)
    for _ in range(NEWTON_STEPS):
        y = mul_shift(y, 3 * (1 << 29) - mul_shift(mul_shift(vn, y, 31), y, 29), 30)
    z = mul_shift(torch.bitwise_left_shift(mul_shift(dn, y, c.z_shift), h), c.k, c.k_shift)
    acc = z * gamma + beta
    return torch.clamp(rounding_shift(acc, c.out_m0, c.out_shift), qmin, qmax).to(torch.int32)


@npu_layernorm.register_fake
def _(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax, qmin, qmax):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


# ----- ONNX translations (int64 values; shifts by tensors through a table of powers of two) ---------------
def _onnx_mul_shift(a, b, shift: int):
    return onnx_rounding_shift(op.Mul(a, b), 1, shift) if shift else op.Mul(a, b)


def _onnx_shift_left(value, amount):
    """value · 2^amount for amount in 0..31 (an INT64 tensor)."""
    return op.Mul(value, op.Gather(op.Constant(value_ints=[1 << i for i in range(32)]), amount, axis=0))


def _onnx_clz32(v):
    powers = op.Constant(value_ints=[1 << i for i in range(33)])
    top = op.Mul(v, onnx_int64(0))
    for bit in (16, 8, 4, 2, 1):
        candidate = op.Add(top, onnx_int64(bit))
        above = op.Cast(op.GreaterOrEqual(v, op.Gather(powers, candidate, axis=0)), to=INT64_TYPE)
        top = op.Add(top, op.Mul(above, onnx_int64(bit)))
    return op.Sub(op.Sub(onnx_int64(31), top), op.Cast(op.Equal(v, onnx_int64(0)), to=INT64_TYPE))


def _onnx_round_shift_right(value, amount):
    """round_shift_right() with an INT64 amount tensor in 0..31."""
    powers = op.Constant(value_ints=[1 << i for i in range(33)])
    half = op.Div(op.Gather(powers, amount, axis=0), onnx_int64(2))
    return op.Div(op.Add(value, half), op.Gather(powers, amount, axis=0))   # value + half >= 0 here


@onnx_translation(torch.ops.hwact.npu_softmax.default)
def npu_softmax_onnx(q: INT32, in_scale: float, out_scale: float, dim: int, qmin: int, qmax: int,
                     wide: bool) -> INT32:
    last = op.Constant(value_ints=[-1])
    c = softmax_npu_constants(in_scale, out_scale, int(q.shape[-1]), wide)
    x = op.Cast(q, to=INT64_TYPE)
    d = op.Sub(x, op.ReduceMax(x, last, keepdims=1))
    values = op.Constant(value_ints=list(c.values))
    if wide:
        t = onnx_rounding_shift(d, c.index_m0, c.index_shift)
        whole = onnx_floor_shift(t, WIDE_FRACTION_BITS, 1 << WIDE_FRACTION_BITS - 1)
        looked = op.Gather(values, op.Add(op.Sub(t, op.Mul(whole, onnx_int64(1 << WIDE_FRACTION_BITS))),
                                          onnx_int64(128)), axis=0)
        e = _onnx_round_shift_right(looked, op.Min(op.Neg(whole), onnx_int64(31)))
    else:
        e = op.Gather(values, op.Add(op.Clip(op.Add(d, onnx_int64(127)), onnx_int64(-128), onnx_int64(127)),
                                     onnx_int64(128)), axis=0)
    s = op.ReduceSum(e, last, keepdims=1)
    shift = op.Sub(_onnx_clz32(s), onnx_int64(1))
    sn = _onnx_shift_left(s, shift)
    r = op.Sub(onnx_int64(RECIPROCAL_START[0]), _onnx_mul_shift(sn, onnx_int64(RECIPROCAL_START[1]), 31))
    for _ in range(NEWTON_STEPS):
        r = _onnx_mul_shift(r, op.Sub(onnx_int64(1 << 30), _onnx_mul_shift(sn, r, 31)), 29)
    p = _onnx_mul_shift(_onnx_shift_left(e, shift), r, 30)
    return onnx_clamp_int32(onnx_rounding_shift(p, c.out_m0, c.out_shift), qmin, qmax)


@onnx_translation(torch.ops.hwact.npu_layernorm.default)
def npu_layernorm_onnx(q: INT32, gamma_int: INT32, beta_int: INT32, in_scale: float, out_scale: float,
                       gamma_scale: float, eps: float, in_qmin: int, in_qmax: int, qmin: int, qmax: int) -> INT32:
    channels = int(gamma_int.shape[0])
    c = layernorm_npu_constants(channels, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax)
    last = op.Constant(value_ints=[-1])
    x = op.Clip(op.Cast(q, to=INT64_TYPE), onnx_int64(in_qmin), onnx_int64(in_qmax))
    d = op.Sub(op.Mul(x, onnx_int64(channels)), op.ReduceSum(x, last, keepdims=1))
    span = op.Mul(op.Sub(op.ReduceMax(x, last, keepdims=1), op.ReduceMin(x, last, keepdims=1)), onnx_int64(channels))
    row_shift = op.Min(op.Sub(_onnx_clz32(span), onnx_int64(c.span_clz)), onnx_int64(c.max_row_shift))
    dn = _onnx_shift_left(d, row_shift)
    eps_row = _onnx_round_shift_right(op.Add(op.Mul(row_shift, onnx_int64(0)), onnx_int64(c.eps_hi)),
                                      op.Mul(op.Sub(onnx_int64(c.max_row_shift), row_shift), onnx_int64(2)))
    v = op.Max(op.Add(op.ReduceSum(_onnx_mul_shift(dn, dn, c.square_shift), last, keepdims=1), eps_row),
               onnx_int64(1))
    h = op.Sub(op.Div(op.Add(_onnx_clz32(v), onnx_int64(1)), onnx_int64(2)), onnx_int64(1))   # operands >= 0
    vn = _onnx_shift_left(v, op.Mul(h, onnx_int64(2)))
    y = op.Sub(onnx_int64(RSQRT_START[0]), _onnx_mul_shift(vn, onnx_int64(RSQRT_START[1]), 31))
    for _ in range(NEWTON_STEPS):
        y = _onnx_mul_shift(y, op.Sub(onnx_int64(3 * (1 << 29)), _onnx_mul_shift(_onnx_mul_shift(vn, y, 31), y, 29)),
                            30)
    z = _onnx_mul_shift(_onnx_shift_left(_onnx_mul_shift(dn, y, c.z_shift), h), onnx_int64(c.k), c.k_shift)
    acc = op.Add(op.Mul(z, op.Cast(gamma_int, to=INT64_TYPE)), op.Cast(beta_int, to=INT64_TYPE))
    return onnx_clamp_int32(onnx_rounding_shift(acc, c.out_m0, c.out_shift), qmin, qmax)
