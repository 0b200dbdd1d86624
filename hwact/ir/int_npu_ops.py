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
          A = min(32767, floor((2^31 − 1) / C))        (int16: the two bytes recombine in one 8-bit ADD)
          every code difference has its own exact entry (differences past 255 codes saturate at the last)
      wide (int16 scores, masked scores): the exponent in base 2 with 8 fraction bits, I-ViT's shift trick
          t = rs(d, dyadic(S_in · log2(e) · 256)) <= 0,  i = (t + 128) >> 8 (ARITHMETIC_RIGHT_SHIFT, round),
          s = t − 256 i in [−128, 127],  V[s] = round(2^14 · 2^(s/256)),  e = rs(V[s], 1, min(−i, 31))
          (e ≈ 2^14 · 2^(d · S_in · log2 e), exponent steps of 1/256: 0.14 % relative at most)
    t   = Σ e  (< 2^31: C · max e checked);  l = clz(t) − 1;  tn = t << l in [2^30, 2^31)   (a = tn / 2^31)
    r   = R48 − ms(tn, R32, 31);  3 times: r = ms(r, 2^30 − ms(tn, r, 31), 29)
          Newton for 1/a in Q2.29 (gemmlowp's start 48/17 − 32/17 · a; relative error 2^−32 after 3 steps)
    f   = rs(r, 1, sf − l)                   ≈ 2^(60 − sf) / t, per row;  r ≈ 2^60 / tn = 2^(60 − l) / t
    p   = e · f                               e / t at scale 2^(sf − 60): one 16-bit x 16-bit MUL per element
    out = clamp(rs(p, dyadic(2^(sf − 60) / S_out)), qmin, qmax)
  sf is the least shift with 2^(60 − sf) / T · (1 + 2^−20) + 1 <= 32767, T = V's largest entry (A, or 2^14),
  which the row max always contributes: t >= T, so nothing divides by zero, l <= clz(T) − 1 <= sf and f <=
  32767 (e and f are int16 values, e <= 32767 as V's entries are). sf − l <= 31 (l >= clz(C · max V) − 1)
  and p < 2^30 are checked. No 64-bit value exists anywhere: the MULs produce at most 2^30 + 1 after their shifts.
  Precision: r has 2^−32 relative error and f's rounding costs at most 1/2, so p / 2^(60 − sf) = e / t ± e /
  2^(61 − sf): every probability is within 2^−14.5 of e / t (2^(60 − sf) > 16383 T and e <= 1.42 T), under
  1/64 of an 8-bit output step. e / t itself differs from the softmax by the rounded table entries (each by 1/2
  at most: (1 + C · p) / (2t) for a probability p) and, wide, by the 1/256 exponent steps.

hwact::npu_layernorm(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax, qmin, qmax,
                     out_shift)
  LayerNorm over the last dim (C channels), γ = gamma_int · gamma_scale, β = beta_int · gamma_scale · 2^−F
  (the same integer γ, β as I-LayerNorm: int_nonlinear_ops.layernorm_parameters, F = layernorm_fraction_bits).
  No row maximum or minimum (REDUCE_MAX / MIN of a wide row are Vela's slowest ops on Ethos-U55): each row is
  scaled by the sum of its positive deviations, which bounds every deviation because the deviations sum to 0.
    x   = clamp(q, in_qmin, in_qmax);  d = C · x − Σ x             = C · (x − mean), exact; Σ d = 0
    P   = Σ max(d, 0) = Σ|d| / 2,  so max|d| <= P                    (the positive and negative parts are equal)
          k = 0: Pk = P.  k > 0 (wide int16 rows, Pmax = floor(C² · (in_qmax − in_qmin) / 4) >= 2^30):
          Pk = Σ rs(max(d, 0), 1, k) >= P / 2^k − C / 2, so P <= 2^k · Q
    Q   = Pk + (ceil(C / 2) if k > 0 else 0)                         < 2^30
          (k: the least with Pmax / 2^k + C + 1 < 2^30)
    L   = min(clz(Q) − 2 − k, Lmax)                                  the row shift, −k <= L <= Lmax <= 30
    dn  = d << L  (k = 0);  rs(d << max(L, 0), 1, max(−L, 0))  (k > 0)      |dn| <= 2^30: 2^(k+L) · Q < 2^30
    v   = max(Σ ms(dn, dn, 31) + rs(eps_hi, 1, min(2 (Lmax − L), 31)), 1)
          eps_hi = round(E · 2^(2 Lmax − 31)), E = eps · C³ / S_in²; Lmax the largest L <= 30 with
          eps_hi < 2^30 − 2C (PreconditionError when not even L = −k qualifies)
    h   = ((clz(v) + 1) >> 1) − 1;  vn = v << 2h in [2^29, 2^31)            (a = vn / 2^31 in [1/4, 1))
    y   = Y0 − ms(vn, Y1, 31);  3 times: y = ms(y, 3 · 2^29 − ms(ms(vn, y, 31), y, 29), 30)
          Newton for 1/sqrt(a) in Q2.29 from the line 2.132 − 1.218 a (relative error 2^−24 after 3 steps)
    f   = ms(y, K, sk) << min(h, hmax)            per row,  (K, sk) = dyadic(sqrt(C) · 2^(F − 60 + sz))
    z   = ms(dn, f, sz)                           ≈ (x − mean) / std · 2^F, one full-size MUL
    γo  = rs(gamma_int, g),  βo = rs(beta_int, g),  g = dyadic(gamma_scale · 2^(so − F) / S_out)    (constants)
    out = clamp(rs(z · γo + βo, 1, so), qmin, qmax)
          so = out_shift, in [2, 32]: the pass's choice (layernorm_out_shift), the largest with ceil(|z| bound) ·
          max|γo| + max|βo| < 2^31 (checked). The output scale sits in γo and βo, so the last RESCALE is a plain
          shift, which Vela fuses into the β ADD
  Why: with dn = d · 2^L, the true variance term vt = Σ dn² / 2^31 + E · 2^(2L − 31) is 2^(2L − 31) · C³ ·
  (var + eps / S_in²) in code units, so (x − mean) / sqrt(var + eps) = dn · sqrt(C) · 2^−15.5 / sqrt(vt), and
  1 / sqrt(v) = 2^h / sqrt(vn) = y · 2^(h − 44.5): z = dn · y · 2^h · sqrt(C) · 2^(F − 60).
  Bounds: Q < 2^30, so clz(Q) >= 2 and L >= −k (no left shift by a negative amount for k = 0). |dn| <= 2^30
  (|d| <= P <= 2^k Q and 2^(k+L) Q < 2^(32 − clz(Q) + L + k) <= 2^30; a rounding right shift adds at most 1/2).
  Σ|dn| <= 2^(L+1) P + C/2 <= 2^31 + C/2, so Σ dn² <= max|dn| · Σ|dn| < 2^61 + 2^29 C and Σ ms(dn, dn, 31)
  < 2^30 + C: v < 2^31. The rounded sums underestimate vt by at most C/2 + 1 (each square and eps_hi by 1/2).
  A row that is not constant has P >= C − 1 (every d ≡ −Σx mod C), and its vt is at least vlo, the least of
    unclamped L:  Σ|dn| >= 2^30 ρ (minus C/2 for k > 0), ρ = 1 (k = 0: 2^L P >= 2^29, Σ|dn| = 2^(L+1) P) or
                  ρ = (C − 1) / (C − 1 + 2^k (C + 1)) (k > 0: 2^(k+L) Q >= 2^29, Q <= P / 2^k + C + 1),
                  so Σ dn² >= (Σ|dn|)² / C: vt >= (2^30 ρ − c)² / (C · 2^31), c = C/2 for k > 0 else 0
                  (2^29 / C for k = 0)
    clamped L:    L = Lmax < 30, where eps_hi(Lmax + 1) >= 2^30 − 2C: vt >= (2^30 − 2C − 1) / 4
                  (L = Lmax = 30 only for a constant row with k = 0: dn = 0)
  (PreconditionError unless ε = (C/2 + 1) / vlo <= 1/4.) So v >= (1 − ε) vt, hmax = h(vlo − C/2 − 1) bounds h
  on every row that is not constant (a constant row has dn = 0 and z = 0 whatever f is), f = ms(y, K, sk) · 2^h
  < 2^31 because K / 2^sk <= 2^(−hmax) · 0.99 (sz is chosen so), and |z| <= sqrt(C) · 2^F / sqrt(1 − ε) ·
  (1 + 2^(hmax − 27)) + 1/2 (|dn| / sqrt(vt) <= 2^15.5), which check_layernorm_affine uses.
  Precision: the mean is exact (k = 0; k > 0 rounds dn by 1/2 of a 2^30 range when L < 0); v's relative error
  is at most (C/2 + 1) / vt: C² / 2^30 for an unclamped row with k = 0, C / 2^27 when eps sets L; the square
  root keeps 24 bits and f at least 27 − hmax bits.
  Bounds checked by layernorm_npu_constants / check_layernorm_affine (else PreconditionError): C · x < 2^31,
  the ones above, |z · γo| + |βo| < 2^31 <= 2^(so + 29) (RESCALE's input range for multiplier 2^30, shift
  so + 30). γo and βo are rounded once more than γ_int and β_int, by 1/2 of their own step: 2^−15 of max|γ| when
  max|γo| >= 2^14, which the largest fitting so gives unless β takes most of the int32 range or so reaches 32.
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
EXP_AMPLITUDE = 32767                # narrow: V[127] = A <= 2^15 − 1 (two int8 tables: high and low byte)
WIDE_ONE_BITS = 14                   # wide: V[s] = round(2^14 · 2^(s/256))
WIDE_FRACTION_BITS = 8               # wide: the base-2 exponent with 8 fraction bits
F16_MAX = (1 << 15) - 1             # f and e are int16 values
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
    top: int                   # T: the row maximum's entry
    reciprocal_shift: int      # sf
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
        top = 1 << WIDE_ONE_BITS
    else:
        index_m0, index_shift = IDENTITY
        top = min(EXP_AMPLITUDE, (INT32_LIMIT - 1) // channels)
        values = tuple(round(top * math.exp((s - 127) * in_scale)) for s in range(-128, 128))
    if channels * max(values) >= INT32_LIMIT or max(values) < 256:
        raise PreconditionError(f"npu_softmax: a row of {channels} values overflows the int32 sum of exponentials")
    shift = 0
    while 2.0 ** (60 - shift) / top * (1 + 2**-20) + 1 > F16_MAX:
        shift += 1
    # l's range, from T <= t <= C · max V
    least_l, most_l = 31 - (channels * max(values)).bit_length(), 31 - top.bit_length()
    if shift - most_l < 0 or shift - least_l > 31:
        raise PreconditionError(f"npu_softmax: the reciprocal's shift {shift} − l leaves 0..31 for a row of "
                                f"{channels}")
    out_m0, out_shift = dyadic(2.0 ** (shift - 60) / out_scale)
    if max(values) * F16_MAX >= 1 << (out_shift - 1):
        raise PreconditionError(f"npu_softmax: output scale {out_scale:.3g} is finer than 2^-15: p (up to 2^30) "
                                "would leave RESCALE's input range")
    return SoftmaxConstants(wide, index_m0, index_shift, values, top, shift, out_m0, out_shift)


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
    pre_shift: int             # k
    slack: int                 # ceil(C / 2) when k > 0, else 0
    max_row_shift: int         # Lmax
    eps_hi: int
    max_h: int                 # hmax
    k: int                     # K
    k_shift: int               # sk
    z_shift: int               # sz
    z_bound: float             # |z| <= z_bound
    fraction_bits: int         # F
    output_scale: float        # gamma_scale · 2^−F / S_out


SQUARE_SHIFT = 31              # the squares' MUL shift
ROW_BITS = 30                  # |dn| <= 2^30


def _h(v: int) -> int:
    """h of the module docstring for an int32 v >= 1."""
    return ((32 - v.bit_length() + 1) >> 1) - 1


def layernorm_npu_constants(channels: int, in_scale: float, out_scale: float, gamma_scale: float, eps: float,
                            in_qmin: int, in_qmax: int) -> LayerNormConstants:
    """The constants of npu_layernorm; PreconditionError when an int32 bound (module docstring) fails
    (those on γ and β: layernorm_affine)."""
    if channels < 1:
        raise PreconditionError("npu_layernorm: the normalized dimension is empty")
    if not (in_qmin <= 0 <= in_qmax and -(1 << 15) <= in_qmin and in_qmax < 1 << 15):
        raise PreconditionError(f"npu_layernorm: input codes [{in_qmin}, {in_qmax}] are not int16 codes around 0")
    if channels * (1 << 15) >= INT32_LIMIT:
        raise PreconditionError(f"npu_layernorm: C · x overflows int32 (C = {channels})")
    limit = 1 << ROW_BITS
    p_max = channels * channels * (in_qmax - in_qmin) // 4                  # Σ max(d, 0) <= C² · span / 4
    pre_shift = 0
    if p_max >= limit:
        while -(-p_max >> pre_shift) + channels + 1 >= limit:
            pre_shift += 1
    slack = (channels + 1) // 2 if pre_shift else 0
    scale_eps = eps * channels ** 3 / (in_scale * in_scale)                # E
    eps_limit = limit - 2 * channels

    def eps_at(row_shift: int) -> int:
        return round(scale_eps * 2.0 ** (2 * row_shift - SQUARE_SHIFT))

    if eps_at(-pre_shift) >= eps_limit:
        raise PreconditionError(f"npu_layernorm: eps / S_in² ({eps / in_scale ** 2:.3g}) is too large for the int32 "
                                "variance", hint="keep this LayerNorm as i-layernorm")
    max_row_shift = -pre_shift
    while max_row_shift < ROW_BITS and eps_at(max_row_shift + 1) < eps_limit:
        max_row_shift += 1
    if pre_shift:
        rho = (channels - 1) / (channels - 1 + 2 ** pre_shift * (channels + 1))
        spread = 2.0 ** ROW_BITS * rho - channels / 2
    else:
        spread = 2.0 ** ROW_BITS
    v_low = spread * spread / (channels * 2.0 ** SQUARE_SHIFT) if channels > 1 else math.inf
    if max_row_shift < ROW_BITS:
        v_low = min(v_low, (eps_limit - 1) / 4)
    error = (channels / 2 + 1) / v_low                                     # ε
    if error > 0.25:
        raise PreconditionError(f"npu_layernorm: the rounding of {channels} squares can reach {error:.0%} of a row's "
                                "variance", hint="keep this LayerNorm as i-layernorm")
    max_h = _h(max(math.floor(v_low - channels / 2 - 1), 1)) if math.isfinite(v_low) else 0
    frac = layernorm_fraction_bits(channels)
    # f = ms(y, K, sk) << h < 2^31 with y <= 2^30 (1 + 2^-20): K / 2^sk <= 0.99 · 2^-hmax, the largest sz for it
    z_shift = math.floor(60 - frac - math.log2(math.sqrt(channels)) - max_h + math.log2(0.99))
    k, k_shift = dyadic(math.sqrt(channels) * 2.0 ** (frac - 60 + z_shift))
    z_bound = math.sqrt(channels) * 2 ** frac / math.sqrt(1 - error) * (1 + 2.0 ** (max_h - 27)) + 0.5
    return LayerNormConstants(pre_shift, slack, max_row_shift, eps_at(max_row_shift), max_h, k, k_shift, z_shift,
                              z_bound, frac, gamma_scale * 2.0 ** -frac / out_scale)


def layernorm_gamma_scale(c: LayerNormConstants, out_shift: int) -> tuple[int, int]:
    """g = dyadic(gamma_scale · 2^(so − F) / S_out): γo = rs(gamma_int, *g), βo = rs(beta_int, *g)."""
    return dyadic(c.output_scale * 2.0**out_shift)


def _accumulator_max(c: LayerNormConstants, out_shift: int, gamma_max: int, beta_max: int) -> int:
    """ceil(z bound) · max|γo| + max|βo| (γo, βo rounded alike: their maxima are the rounded maxima)."""
    if c.output_scale * 2.0**out_shift * max(gamma_max, 1) * c.z_bound >= INT32_LIMIT:
        return INT32_LIMIT
    m0, shift = layernorm_gamma_scale(c, out_shift)
    return math.ceil(c.z_bound) * int(rounding_shift(torch.tensor(gamma_max), m0, shift)) + int(
        rounding_shift(torch.tensor(beta_max), m0, shift))


def layernorm_out_shift(c: LayerNormConstants, gamma_max: int, beta_max: int) -> int:
    """so of the module docstring for max|gamma_int| and max|beta_int|: the largest in [2, 32] keeping z · γo + βo
    in int32; PreconditionError when not even so = 2 does."""
    for out_shift in range(32, 1, -1):
        if _accumulator_max(c, out_shift, gamma_max, beta_max) < INT32_LIMIT:
            return out_shift
    raise PreconditionError(f"npu_layernorm: z · γ + β leaves int32 for every output shift (max|γ_int| "
                            f"{gamma_max}, max|β_int| {beta_max})", hint="keep this LayerNorm as i-layernorm")


def check_layernorm_affine(c: LayerNormConstants, out_shift: int, gamma_max: int, beta_max: int) -> None:
    """The op's own check of its out_shift argument against its γ and β."""
    if not 2 <= out_shift <= 32 or _accumulator_max(c, out_shift, gamma_max, beta_max) >= INT32_LIMIT:
        raise PreconditionError(f"npu_layernorm: z · γ + β leaves int32 at output shift {out_shift}",
                                hint="keep this LayerNorm as i-layernorm")


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
    f = round_shift_right(r, c.reciprocal_shift - shift)
    return torch.clamp(rounding_shift(e * f, c.out_m0, c.out_shift), qmin, qmax).to(torch.int32)


@npu_softmax.register_fake
def _(q, in_scale, out_scale, dim, qmin, qmax, wide):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


# ----- hwact::npu_layernorm -------------------------------------------------------------------------------
@hwact_op("npu_layernorm", bounds=("qmin", "qmax"))
def npu_layernorm(q: torch.Tensor, gamma_int: torch.Tensor, beta_int: torch.Tensor, in_scale: float,
                  out_scale: float, gamma_scale: float, eps: float, in_qmin: int, in_qmax: int, qmin: int,
                  qmax: int, out_shift: int) -> torch.Tensor:
    """LayerNorm over the last dim in TOSA int32 arithmetic (module docstring)."""
    channels = q.shape[-1]
    gamma, beta = gamma_int.to(torch.int64), beta_int.to(torch.int64)
    c = layernorm_npu_constants(channels, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax)
    check_layernorm_affine(c, out_shift, int(gamma.abs().max()), int(beta.abs().max()))
    g = layernorm_gamma_scale(c, out_shift)
    x = torch.clamp(q.to(torch.int64), in_qmin, in_qmax)
    d = channels * x - x.sum(dim=-1, keepdim=True)
    positive = torch.clamp(d, min=0)
    if c.pre_shift:
        positive = round_shift_right(positive, torch.full_like(positive, c.pre_shift))
    total = positive.sum(dim=-1, keepdim=True) + c.slack
    row_shift = torch.clamp(clz32(total) - 2 - c.pre_shift, max=c.max_row_shift)
    dn = torch.bitwise_left_shift(d, torch.clamp(row_shift, min=0))
    if c.pre_shift:
        dn = round_shift_right(dn, torch.clamp(-row_shift, min=0))
    eps_row = round_shift_right(torch.full_like(row_shift, c.eps_hi),
                                torch.clamp(2 * (c.max_row_shift - row_shift), max=31))
    v = torch.clamp(mul_shift(dn, dn, SQUARE_SHIFT).sum(dim=-1, keepdim=True) + eps_row, min=1)
    h = ((clz32(v) + 1) >> 1) - 1
    vn = torch.bitwise_left_shift(v, 2 * h)
    y = RSQRT_START[0] - mul_shift(vn, RSQRT_START[1], 31)
    for _ in range(NEWTON_STEPS):
        y = mul_shift(y, 3 * (1 << 29) - mul_shift(mul_shift(vn, y, 31), y, 29), 30)
    f = torch.bitwise_left_shift(mul_shift(y, c.k, c.k_shift), torch.clamp(h, max=c.max_h))
    z = mul_shift(dn, f, c.z_shift)
    acc = z * rounding_shift(gamma, *g) + rounding_shift(beta, *g)
    return torch.clamp(rounding_shift(acc, 1, out_shift), qmin, qmax).to(torch.int32)


@npu_layernorm.register_fake
def _(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax, qmin, qmax, out_shift):
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
    f = onnx_rounding_shift(r, onnx_int64(1), op.Sub(onnx_int64(c.reciprocal_shift), shift))
    return onnx_clamp_int32(onnx_rounding_shift(op.Mul(e, f), c.out_m0, c.out_shift), qmin, qmax)


@onnx_translation(torch.ops.hwact.npu_layernorm.default)
def npu_layernorm_onnx(q: INT32, gamma_int: INT32, beta_int: INT32, in_scale: float, out_scale: float,
                       gamma_scale: float, eps: float, in_qmin: int, in_qmax: int, qmin: int, qmax: int,
                       out_shift: int) -> INT32:
    channels = int(gamma_int.shape[0])
    c = layernorm_npu_constants(channels, in_scale, out_scale, gamma_scale, eps, in_qmin, in_qmax)
    last = op.Constant(value_ints=[-1])
    zero, one = onnx_int64(0), onnx_int64(1)
    x = op.Clip(op.Cast(q, to=INT64_TYPE), onnx_int64(in_qmin), onnx_int64(in_qmax))
    d = op.Sub(op.Mul(x, onnx_int64(channels)), op.ReduceSum(x, last, keepdims=1))
    positive = op.Max(d, zero)
    if c.pre_shift:
        positive = onnx_rounding_shift(positive, 1, c.pre_shift)
    total = op.Add(op.ReduceSum(positive, last, keepdims=1), onnx_int64(c.slack))
    row_shift = op.Min(op.Sub(_onnx_clz32(total), onnx_int64(2 + c.pre_shift)), onnx_int64(c.max_row_shift))
    dn = _onnx_shift_left(d, op.Max(row_shift, zero))
    if c.pre_shift:
        dn = onnx_rounding_shift(dn, one, op.Max(op.Neg(row_shift), zero))
    eps_shift = op.Min(op.Mul(op.Sub(onnx_int64(c.max_row_shift), row_shift), onnx_int64(2)), onnx_int64(31))
    eps_row = onnx_rounding_shift(op.Add(op.Mul(row_shift, zero), onnx_int64(c.eps_hi)), one, eps_shift)
    v = op.Max(op.Add(op.ReduceSum(_onnx_mul_shift(dn, dn, SQUARE_SHIFT), last, keepdims=1), eps_row), one)
    h = op.Sub(op.Div(op.Add(_onnx_clz32(v), one), onnx_int64(2)), one)   # operands >= 0
    vn = _onnx_shift_left(v, op.Mul(h, onnx_int64(2)))
    y = op.Sub(onnx_int64(RSQRT_START[0]), _onnx_mul_shift(vn, onnx_int64(RSQRT_START[1]), 31))
    for _ in range(NEWTON_STEPS):
        y = _onnx_mul_shift(y, op.Sub(onnx_int64(3 * (1 << 29)), _onnx_mul_shift(_onnx_mul_shift(vn, y, 31), y, 29)),
                            30)
    f = _onnx_shift_left(_onnx_mul_shift(y, onnx_int64(c.k), c.k_shift), op.Min(h, onnx_int64(c.max_h)))
    z = _onnx_mul_shift(dn, f, c.z_shift)
    g = layernorm_gamma_scale(c, out_shift)
    acc = op.Add(op.Mul(z, onnx_rounding_shift(op.Cast(gamma_int, to=INT64_TYPE), *g)),
                 onnx_rounding_shift(op.Cast(beta_int, to=INT64_TYPE), *g))
    return onnx_clamp_int32(onnx_rounding_shift(acc, 1, out_shift), qmin, qmax)
