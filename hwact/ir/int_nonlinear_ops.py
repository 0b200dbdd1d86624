"""Integer non-linearities of I-ViT (ALGORITHMS.md §1.3-1.5, §1.8): ShiftGELU, lambda-ShiftGELU,
Shiftmax and I-LayerNorm, as hwact ops with one exact integer reference each and ONNX translations.

Every op takes an int32 tensor q at in_scale (real = q · S_in) and returns int32 at out_scale, clamped
to [qmin, qmax]. Inputs are int8/int16 codes: values outside int16 are saturated first (that bound is
what the int64 overflow analysis below relies on). The float scales are op arguments; every integer
constant derived from them (x0, multipliers, shifts) is computed once in Python by the helpers below,
identically for the torch reference and the ONNX translation. At run time only int64 arithmetic runs.

Shift-based exponential (I-ViT `int_exp_shift`), input x <= 0 at scale S, exponent clamp n:
    x  = x + (x >> 1) - (x >> 4)          # x · 1.4375 ≈ x · log2(e)   (>> is a floor shift)
    x0 = floor(-1 / S)                    # the integer that stands for -1 (in log2 units)
    x  = max(x, n · x0)                   # exponent >= -n: 2^(x·S·1.4375) >= 2^-n
    q  = x // x0;  r = x - x0 · q         # q in [0, n], r in (x0, 0]
    e  = (r >> 1) - x0                    # ≈ |x0| · 2^(r/|x0|)  (linear 2^f ≈ 1 + f/2)
    exp = e << (n - q)                    # ≈ |x0| · 2^n · 2^(x·S·1.4375),  0 < exp <= |x0| · 2^n

hwact::shift_gelu(q, in_scale, out_scale, qmin, qmax, n)             GELU(x) ≈ x · σ(1.702 x)
hwact::lambda_shift_gelu(q, in_scale, out_scale, qmin, qmax, n, lam)  the same with gate slope lam
    x   = clamp(q, int16);  m = max(max_lastdim(x), 0)
    S_g = lam · S_in  (lam = 1.702 for shift_gelu)
    e1  = exp(x - m),  e2 = exp(-m)               # σ(a) = e^(a-m) / (e^(a-m) + e^(-m))
    e1, e2 = e1 >> t, e2 >> t                     # t = max(0, bits(|x0|) + n + 15 - 62): e1 · 2^15 < 2^62
    sig = floor(e1 · 2^15 / max(e1 + e2, 1))      # σ at scale 2^-15, one exact division per element
    out = clamp(rounding_shift(x · sig, dyadic(S_in · 2^-15 / S_out)), qmin, qmax)
  Differences from the I-ViT code, all within int64: the row max m is taken as max(row max, 0) so both
  exponents are <= 0 (I-ViT's e^(-xmax) has a positive exponent when a row is all negative; the maths is
  the same for any m), and σ keeps 15 bits (I-ViT: 7) through an exact division instead of
  floor((2^31-1)/sum). The exponent clamp n is per layer (the pass picks it from the calibrated range;
  I-ViT fixes n = 23, which saturates σ to 0.5 once a row max exceeds ≈ 9.4, the "cliff").
  Overflow: exp < |x0| · 2^n, so bits(|x0|) + n <= 62 is required (else PreconditionError); the drop t
  then keeps the division's numerator below 2^62 for any n up to 62. t > 0 only when n > 47 - bits(|x0|):
  exp(0) keeps 47 bits after the drop, a term 2^-k keeps 47 - k, so σ keeps its 15 bits while the
  larger of e1, e2 is above 2^-31; below that (m and m - x both large, e.g. a row max of 16 and x near
  0) σ's precision shrinks, down to σ = 0 when both terms vanish.

hwact::shiftmax(q, in_scale, out_scale, dim, qmin, qmax, n)          softmax along `dim`
    x   = clamp(q, int16) - max_dim(q);  e = exp(x)  (scale S_in, clamp n)
    factor = floor(2^62 / Σ_dim e)                 # one integer division per row
    p   = rounding_shift(e · factor, 1, 62 - 16)   # p at scale 2^-16 (e · factor <= 2^62)
    out = clamp(rounding_shift(p, dyadic(2^-16 / S_out)), qmin, qmax)
  Overflow/precision guard: C · |x0| · 2^n <= 2^42 (C = size of `dim`), so factor keeps >= 20 bits and
  its floor moves p by less than 1/16 LSB; else PreconditionError.

hwact::i_layernorm(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, qmin, qmax)
  LayerNorm over the last dim (C channels), γ = gamma_int · gamma_scale (per channel),
  β = beta_int · gamma_scale · 2^-F:
    x    = clamp(q, int16);  mean = floor((2 (Σx << P) + C) / 2C)   # mean with P fraction bits, half up
    d    = (x << P) - mean;  v = max(Σ d² + (eps_int << 2P), 1),  eps_int = round(eps · C / S_in²)
    s    = isqrt(v): k = floor(log4 v) by a 5-step binary search on a table of 4^i, s = 2^(k+1) > sqrt(v),
           then 8 times: s = min(s, (s + v // s) >> 1)
    z    = floor((2 d K + s) / 2 s),  K = round(sqrt(C) · 2^F)    # z ≈ (x-mean)/std · 2^F, round half up
    acc  = z · gamma_int + beta_int                                  # at scale gamma_scale · 2^-F
    out  = clamp(rounding_shift(acc, dyadic(gamma_scale · 2^-F / S_out)), qmin, qmax)
  P = floor((61 - bits(C · 2^34 + eps_int)) / 2): the input is carried with P fraction bits, so neither
  the mean's rounding (I-ViT rounds it to an integer: +0.3 output step measured at C = 192) nor isqrt's
  truncation (isqrt(2) = 1 would turn a ±1 row into ±1.41) costs more than 2^-P relative.
  F = 15 - ceil(log2(sqrt(C))) keeps |z| <= 2^15 so |z · gamma_int| <= 2^30 (gamma_int in ±(2^15-1));
  beta_int must fit int32. The Newton square root from above decreases monotonically to floor(sqrt(v))
  and the min() keeps it there; from a start within a factor 2 of sqrt(v) the relative error squares
  each step (1/2, 1/8, 2^-7, 2^-15, 2^-31, ...), so 8 steps give exactly math.isqrt(v) for v < 2^62
  (tested against math.isqrt).
"""

from __future__ import annotations

import functools
import math

import torch
from onnxscript import INT32
from onnxscript import opset18 as op

from hwact.errors import PreconditionError
from hwact.ir.int_ops import (INT64_TYPE, dyadic, onnx_clamp_int32, onnx_floor_shift, onnx_int64, onnx_rounding_shift,
                              rounding_shift)
from hwact.ir.ops import hwact_op, onnx_translation

INPUT_MIN, INPUT_MAX = -(1 << 15), (1 << 15) - 1   # inputs are saturated to int16
EXP_DOMAIN = INPUT_MAX - INPUT_MIN                  # x - max of saturated inputs lies in [-EXP_DOMAIN, 0]
SIGMOID_BITS = 15                                   # ShiftGELU's σ at scale 2^-15
GELU_GRID_LIMIT = 1 << 16                           # ShiftGELU reference: the most (x, row max) pairs tabulated
PROB_BITS = 16                                      # Shiftmax's internal probability at scale 2^-16
FACTOR_BITS = 62                                    # Shiftmax: factor = floor(2^62 / sum)
SOFTMAX_SUM_LIMIT_BITS = 42                         # Shiftmax guard: C · |x0| · 2^n <= 2^42
GAMMA_BITS = 15                                     # I-LayerNorm: |gamma_int| <= 2^15 - 1
ISQRT_STEPS = 8                                     # Newton steps after the 2^(floor(log4 v)+1) start
POWERS_OF_4 = [4**i for i in range(32)]
SHIFT_GELU_LAMBDA = 1.702


# ----- constants computed in Python from the float scales (shared by reference and ONNX) ------------
def exp_zero_point(scale: float) -> int:
    """x0 = floor(-1 / S): the integer that stands for -1 in the shift-exp's log2 domain (<= -1)."""
    if not math.isfinite(scale) or scale <= 0:
        raise PreconditionError(f"integer exp: scale {scale!r} is not a positive finite number")
    return min(math.floor(-1.0 / scale), -1)


def check_exp_clamp(n: int) -> None:
    if not 0 <= n <= 62:
        raise PreconditionError(f"integer exp: clamp n = {n} is outside [0, 62]")


def gelu_constants(in_scale: float, out_scale: float, n: int, lam: float) -> tuple[int, int, int, int]:
    """(x0, drop, m0, shift) of (lambda-)ShiftGELU; raises PreconditionError when int64 would overflow."""
    check_exp_clamp(n)
    if not lam > 0:
        raise PreconditionError(f"shift_gelu: gate slope lambda = {lam!r} must be positive")
    x0 = exp_zero_point(lam * in_scale)
    bits = (-x0).bit_length()
    if bits + n > 62:
        raise PreconditionError(
            f"shift_gelu: |x0| · 2^n = {-x0} · 2^{n} overflows int64 "
            f"(in_scale {in_scale:.3g} too small for n = {n})", hint="lower n or use a coarser input scale")
    drop = max(0, bits + n + SIGMOID_BITS - 62)
    m0, shift = dyadic(in_scale * 2.0 ** -SIGMOID_BITS / out_scale)
    return x0, drop, m0, shift


def gelu_max_n(in_scale: float, lam: float = SHIFT_GELU_LAMBDA) -> int:
    """The largest exponent clamp n that passes gelu_constants' overflow guard."""
    x0 = exp_zero_point(lam * in_scale)
    return min(62, 62 - (-x0).bit_length())


def softmax_constants(in_scale: float, out_scale: float, n: int, channels: int) -> tuple[int, int, int]:
    """(x0, m0, shift) of Shiftmax; raises PreconditionError when the row sum could exceed 2^42."""
    check_exp_clamp(n)
    x0 = exp_zero_point(in_scale)
    if channels * (-x0) << n > 1 << SOFTMAX_SUM_LIMIT_BITS:
        raise PreconditionError(
            f"shiftmax: row sum bound C · |x0| · 2^n = {channels} · {-x0} · 2^{n} "
            f"exceeds 2^{SOFTMAX_SUM_LIMIT_BITS}",
            hint="lower n or use a coarser input scale")
    m0, shift = dyadic(2.0 ** -PROB_BITS / out_scale)
    return x0, m0, shift


def softmax_max_n(in_scale: float, channels: int) -> int:
    x0 = exp_zero_point(in_scale)
    n = 0
    while n < 62 and channels * (-x0) << (n + 1) <= 1 << SOFTMAX_SUM_LIMIT_BITS:
        n += 1
    return n


def layernorm_fraction_bits(channels: int) -> int:
    """F: z = (x - mean)/std · 2^F stays within ±2^15 (|x - mean|/std <= sqrt(C))."""
    return 15 - math.ceil(math.log2(math.sqrt(channels))) if channels > 1 else 15


def layernorm_constants(channels: int, in_scale: float, out_scale: float, gamma_scale: float, eps: float):
    """(K, eps_int, P, m0, shift) of I-LayerNorm for C = channels."""
    if channels < 1:
        raise PreconditionError("i_layernorm: the normalized dimension is empty")
    frac = layernorm_fraction_bits(channels)
    k = round(math.sqrt(channels) * 2 ** frac)
    eps_int = round(eps * channels / (in_scale * in_scale))
    v_max = channels * (2 * (INPUT_MAX + 1)) ** 2 + eps_int
    if v_max >= 1 << 61:
        raise PreconditionError(f"i_layernorm: eps · C / S_in² = {eps_int} overflows int64 (in_scale {in_scale:.3g})",
                                hint="use a coarser input scale")
    precision = (61 - v_max.bit_length()) // 2
    m0, shift = dyadic(gamma_scale * 2.0 ** -frac / out_scale)
    return k, eps_int, precision, m0, shift


def layernorm_parameters(gamma: torch.Tensor | None, beta: torch.Tensor | None, channels: int):
    """(gamma_int32, beta_int32, gamma_scale) from float γ, β (None: 1 and 0).

    gamma_scale = max|γ| / (2^15 - 1); gamma_int = round(γ / gamma_scale);
    beta_int = round(β / (gamma_scale · 2^-F)). Raises PreconditionError when β/max|γ| is so large that
    beta_int leaves int32 (the I-ViT pitfall: β/γ blows up as γ → 0)."""
    gamma = torch.ones(channels, dtype=torch.float64) if gamma is None else gamma.detach().to(torch.float64).reshape(-1)
    beta = torch.zeros(channels, dtype=torch.float64) if beta is None else beta.detach().to(torch.float64).reshape(-1)
    amax = float(gamma.abs().max())
    if amax == 0:
        amax = 1.0
    gamma_scale = amax / ((1 << GAMMA_BITS) - 1)
    gamma_int = torch.round(gamma / gamma_scale)
    beta_int = torch.round(beta / (gamma_scale * 2.0 ** -layernorm_fraction_bits(channels)))
    if float(beta_int.abs().max()) > 2**31 - 1:
        raise PreconditionError(f"i_layernorm: beta / max|gamma| = {float(beta.abs().max()) / amax:.3g} makes the "
                                "integer bias leave int32", hint="keep this LayerNorm in float")
    return gamma_int.to(torch.int32), beta_int.to(torch.int32), gamma_scale


# ----- torch reference building blocks (int64) -----------------------------------------------------
def _saturate(q: torch.Tensor) -> torch.Tensor:
    return torch.clamp(q.to(torch.int64), INPUT_MIN, INPUT_MAX)


def shift_exp(x: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    """I-ViT's shift exponential of x <= 0 (int64): ≈ |x0| · 2^n · 2^(x·S·1.4375), in (0, |x0|·2^n]."""
    x = x + (x >> 1) - (x >> 4)
    x = torch.clamp(x, min=n * x0)
    q = torch.div(x, x0, rounding_mode="floor")
    r = x - x0 * q
    e = (r >> 1) - x0
    return torch.bitwise_left_shift(e, n - q)


@functools.lru_cache(maxsize=64)
def shift_exp_table(x0: int, n: int, drop: int) -> tuple[int, torch.Tensor]:
    """(low, table) with shift_exp(d, x0, n) >> drop == table[max(d, low) - low] for every d in
    [-EXP_DOMAIN, 0] (every x - max of saturated inputs), the table filled by shift_exp itself.

    shift_exp's scaled exponent d + (d >> 1) - (d >> 4) does not decrease as d grows, so once it reaches the
    clamp n·x0 it stays clamped for every smaller d, where shift_exp is constant: the table starts at the
    largest such d (low), a few hundred entries for an int8 layer (n·|x0|/1.4375), at most 65,536."""
    d = torch.arange(-EXP_DOMAIN, 1, dtype=torch.int64)
    clamped = torch.nonzero(d + (d >> 1) - (d >> 4) <= n * x0)
    start = int(clamped[-1]) if len(clamped) else 0
    return start - EXP_DOMAIN, (shift_exp(d[start:], x0, n) >> drop).clone()


def tabulated_shift_exp(d: torch.Tensor, x0: int, n: int, drop: int = 0) -> torch.Tensor:
    """shift_exp(d, x0, n) >> drop for int64 d in [-EXP_DOMAIN, 0], read from shift_exp_table: the same
    integers, one clamp and one gather instead of a dozen int64 passes."""
    low, table = shift_exp_table(x0, n, drop)
    return table[torch.clamp(d, min=low) - low]


def isqrt_newton(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) for 1 <= v < 2^62: start 2^(floor(log4 v) + 1), then ISQRT_STEPS Newton steps."""
    powers = torch.tensor(POWERS_OF_4, dtype=torch.int64)
    k = torch.zeros_like(v)
    for bit in (16, 8, 4, 2, 1):
        k = k + bit * (v >= powers[torch.clamp(k + bit, max=31)]).to(torch.int64)
    s = torch.bitwise_left_shift(torch.ones_like(v), k + 1)
    for _ in range(ISQRT_STEPS):
        s = torch.minimum(s, (s + torch.div(v, s, rounding_mode="floor")) >> 1)
    return s


# ----- ONNX building blocks (int64 values) ---------------------------------------------------------
def _onnx_floor_div(value, divisor: int):
    """floor(value / divisor), divisor > 0: a floor shift for powers of two, else (v − Mod(v, d)) / d."""
    if divisor & (divisor - 1) == 0:
        return onnx_floor_shift(value, divisor.bit_length() - 1)
    d = onnx_int64(divisor)
    return op.Div(op.Sub(value, op.Mod(value, d, fmod=0)), d)


def _onnx_saturate(q):
    return op.Clip(op.Cast(q, to=INT64_TYPE), onnx_int64(INPUT_MIN), onnx_int64(INPUT_MAX))


def _onnx_tabulated_shift_exp(d, x0: int, n: int, drop: int = 0):
    """tabulated_shift_exp on INT64 ONNX values: Gather from the same table (no Div, no per-element powers)."""
    low, table = shift_exp_table(x0, n, drop)
    return op.Gather(op.Constant(value_ints=table.tolist()), op.Sub(op.Max(d, onnx_int64(low)), onnx_int64(low)),
                     axis=0)


def _axes(dim: int):
    return op.Constant(value_ints=[dim])


# ----- hwact::shift_gelu / hwact::lambda_shift_gelu ------------------------------------------------
def _gelu_values(x: torch.Tensor, m: torch.Tensor, x0: int, drop: int, m0: int, shift: int, n: int, qmin: int,
                 qmax: int) -> torch.Tensor:
    """ShiftGELU of saturated inputs x whose rows have the maximum m = max(max x, 0), element by element."""
    e1 = tabulated_shift_exp(x - m, x0, n, drop)
    e2 = tabulated_shift_exp(-m, x0, n, drop)
    sig = torch.div(e1 << SIGMOID_BITS, torch.clamp(e1 + e2, min=1), rounding_mode="floor")
    return rounding_shift(sig.mul_(x), m0, shift).clamp_(qmin, qmax)


def _gelu_reference(q, in_scale, out_scale, qmin, qmax, n, lam):
    """Each output is a function of its input x and its row's m alone: when the pairs that can occur (x and
    m between the tensor's least and largest input) are fewer than the elements and GELU_GRID_LIMIT, they
    are evaluated once, in one grid, and every element reads its own: the same integers, one gather instead
    of a dozen int64 passes over the tensor."""
    constants = gelu_constants(in_scale, out_scale, n, lam)
    x = torch.clamp(q, INPUT_MIN, INPUT_MAX)              # _saturate, in q's own integer type
    m = torch.clamp(x.amax(dim=-1, keepdim=True), min=0) if x.dim() else torch.clamp(x, min=0)
    low, high = (int(v) for v in torch.aminmax(x)) if x.numel() else (0, 0)
    width, rows = high - low + 1, max(high, 0) + 1
    if width * rows <= min(GELU_GRID_LIMIT, x.numel()):
        maxima = torch.arange(rows)[:, None]             # x > m never occurs (m >= its row): filled as x = m
        inputs = torch.minimum(torch.arange(low, high + 1)[None, :], maxima)
        grid = _gelu_values(inputs, maxima, *constants, n=n, qmin=qmin, qmax=qmax).to(torch.int32).flatten()
        return grid[x.sub_(low).add_(m * width)]          # x is clamp's new tensor: the index in place
    x, m = x.to(torch.int64), m.to(torch.int64)
    return _gelu_values(x, m, *constants, n=n, qmin=qmin, qmax=qmax).to(torch.int32)


def _gelu_onnx(q, in_scale, out_scale, qmin, qmax, n, lam):
    x0, drop, m0, shift = gelu_constants(in_scale, out_scale, n, lam)
    x = _onnx_saturate(q)
    m = op.Max(op.ReduceMax(x, _axes(-1), keepdims=1), onnx_int64(0))
    e1 = _onnx_tabulated_shift_exp(op.Sub(x, m), x0, n, drop)
    e2 = _onnx_tabulated_shift_exp(op.Neg(m), x0, n, drop)
    total = op.Max(op.Add(e1, e2), onnx_int64(1))
    sig = op.Div(op.Mul(e1, onnx_int64(1 << SIGMOID_BITS)), total)   # both >= 0: truncation = floor
    return onnx_clamp_int32(onnx_rounding_shift(op.Mul(x, sig), m0, shift), qmin, qmax)


@hwact_op("shift_gelu", bounds=("qmin", "qmax"))
def shift_gelu(q: torch.Tensor, in_scale: float, out_scale: float, qmin: int, qmax: int, n: int) -> torch.Tensor:
    """I-ViT ShiftGELU x · σ(1.702 x) in integers (module docstring)."""
    return _gelu_reference(q, in_scale, out_scale, qmin, qmax, n, SHIFT_GELU_LAMBDA)


@shift_gelu.register_fake
def _(q, in_scale, out_scale, qmin, qmax, n):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.shift_gelu.default)
def shift_gelu_onnx(q: INT32, in_scale: float, out_scale: float, qmin: int, qmax: int, n: int) -> INT32:
    return _gelu_onnx(q, in_scale, out_scale, qmin, qmax, n, SHIFT_GELU_LAMBDA)


@hwact_op("lambda_shift_gelu", bounds=("qmin", "qmax"))
def lambda_shift_gelu(q: torch.Tensor, in_scale: float, out_scale: float, qmin: int, qmax: int, n: int,
                      lam: float) -> torch.Tensor:
    """ShiftGELU x · σ(lam · x) with the gate slope lam as a parameter (module docstring)."""
    return _gelu_reference(q, in_scale, out_scale, qmin, qmax, n, lam)


@lambda_shift_gelu.register_fake
def _(q, in_scale, out_scale, qmin, qmax, n, lam):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.lambda_shift_gelu.default)
def lambda_shift_gelu_onnx(q: INT32, in_scale: float, out_scale: float, qmin: int, qmax: int, n: int,
                           lam: float) -> INT32:
    return _gelu_onnx(q, in_scale, out_scale, qmin, qmax, n, lam)


# ----- hwact::shiftmax -----------------------------------------------------------------------------
@hwact_op("shiftmax", bounds=("qmin", "qmax"))
def shiftmax(q: torch.Tensor, in_scale: float, out_scale: float, dim: int, qmin: int, qmax: int,
             n: int) -> torch.Tensor:
    """I-ViT Shiftmax: softmax along dim in integers (module docstring)."""
    x0, m0, shift = softmax_constants(in_scale, out_scale, n, q.shape[dim])
    x = _saturate(q)
    e = tabulated_shift_exp(x - x.amax(dim=dim, keepdim=True), x0, n)
    factor = torch.div(torch.tensor(1 << FACTOR_BITS, dtype=torch.int64), e.sum(dim=dim, keepdim=True),
                       rounding_mode="floor")
    p = rounding_shift(e.mul_(factor), 1, FACTOR_BITS - PROB_BITS)
    return rounding_shift(p, m0, shift).clamp_(qmin, qmax).to(torch.int32)


@shiftmax.register_fake
def _(q, in_scale, out_scale, dim, qmin, qmax, n):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.shiftmax.default)
def shiftmax_onnx(q: INT32, in_scale: float, out_scale: float, dim: int, qmin: int, qmax: int, n: int) -> INT32:
    x0 = exp_zero_point(in_scale)
    check_exp_clamp(n)
    m0, shift = dyadic(2.0 ** -PROB_BITS / out_scale)
    x = _onnx_saturate(q)
    e = _onnx_tabulated_shift_exp(op.Sub(x, op.ReduceMax(x, _axes(dim), keepdims=1)), x0, n)
    factor = op.Div(onnx_int64(1 << FACTOR_BITS), op.ReduceSum(e, _axes(dim), keepdims=1))
    p = onnx_rounding_shift(op.Mul(e, factor), 1, FACTOR_BITS - PROB_BITS)
    return onnx_clamp_int32(onnx_rounding_shift(p, m0, shift), qmin, qmax)


# ----- hwact::i_layernorm --------------------------------------------------------------------------
@hwact_op("i_layernorm", bounds=("qmin", "qmax"))
def i_layernorm(q: torch.Tensor, gamma_int: torch.Tensor, beta_int: torch.Tensor, in_scale: float,
                out_scale: float, gamma_scale: float, eps: float, qmin: int, qmax: int) -> torch.Tensor:
    """I-LayerNorm over the last dim with integer Newton square root (module docstring)."""
    channels = q.shape[-1]
    k, eps_int, precision, m0, shift = layernorm_constants(channels, in_scale, out_scale,
                                                                       gamma_scale, eps)
    x = _saturate(q) << precision
    mean = torch.div(2 * x.sum(dim=-1, keepdim=True) + channels, 2 * channels, rounding_mode="floor")
    d = x - mean
    v = torch.clamp((d * d).sum(dim=-1, keepdim=True) + (eps_int << 2 * precision), min=1)
    s = isqrt_newton(v)
    z = torch.div(2 * k * d + s, 2 * s, rounding_mode="floor")
    acc = z.mul_(gamma_int).add_(beta_int)
    return rounding_shift(acc, m0, shift).clamp_(qmin, qmax).to(torch.int32)


@i_layernorm.register_fake
def _(q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, qmin, qmax):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.i_layernorm.default)
def i_layernorm_onnx(q: INT32, gamma_int: INT32, beta_int: INT32, in_scale: float, out_scale: float,
                     gamma_scale: float, eps: float, qmin: int, qmax: int) -> INT32:
    channels = int(gamma_int.shape[0])
    k, eps_int, precision, m0, shift = layernorm_constants(channels, in_scale, out_scale,
                                                                       gamma_scale, eps)
    x = op.Mul(_onnx_saturate(q), onnx_int64(1 << precision))
    last = _axes(-1)
    total = op.ReduceSum(x, last, keepdims=1)
    mean = _onnx_floor_div(op.Add(op.Mul(total, onnx_int64(2)), onnx_int64(channels)), 2 * channels)
    d = op.Sub(x, mean)
    v = op.Max(op.Add(op.ReduceSum(op.Mul(d, d), last, keepdims=1), onnx_int64(eps_int << 2 * precision)),
               onnx_int64(1))
    powers = op.Constant(value_ints=POWERS_OF_4)
    log4 = op.Mul(v, onnx_int64(0))
    for bit in (16, 8, 4, 2, 1):
        candidate = op.Min(op.Add(log4, onnx_int64(bit)), onnx_int64(31))
        above = op.Cast(op.GreaterOrEqual(v, op.Gather(powers, candidate, axis=0)), to=INT64_TYPE)
        log4 = op.Add(log4, op.Mul(above, onnx_int64(bit)))
    s = op.Gather(op.Constant(value_ints=[1 << i for i in range(33)]), op.Add(log4, onnx_int64(1)), axis=0)
    for _ in range(ISQRT_STEPS):
        s = op.Min(s, op.Div(op.Add(s, op.Div(v, s)), onnx_int64(2)))
    two_s = op.Mul(s, onnx_int64(2))
    numerator = op.Add(op.Mul(d, onnx_int64(2 * k)), s)
    z = op.Div(op.Sub(numerator, op.Mod(numerator, two_s, fmod=0)), two_s)
    acc = op.Add(op.Mul(z, op.Cast(gamma_int, to=INT64_TYPE)), op.Cast(beta_int, to=INT64_TYPE))
    return onnx_clamp_int32(onnx_rounding_shift(acc, m0, shift), qmin, qmax)
