"""Integer core ops: quantize/dequantize, dyadic requantization, integer linear/conv/matmul/add/pool.

Conventions (issue 4; ALGORITHMS.md §0, §1.2, §8.1):
  * an integer tensor is carried as an int32 torch tensor whose values lie in its declared range
    (int8 [-128, 127], uint8 [0, 255] after a ReLU clamp, int16 [-32768, 32767] on the residual stream);
  * quantization is symmetric, real = q · S, S a python float fixed at compile time, no zero points;
  * weights are int8 tensors (stored as int8: the ONNX file holds one byte per weight), per output
    channel, symmetric in [-127, 127]; a bias is int32 at S_in · S_w,c.

The one rounding rule of requantization (single rounding, round half up, arithmetic shift):

    M = S_in / S_out ≈ m0 · 2^-shift          (dyadic: 2^30 <= m0 < 2^31, 0 <= shift <= 62)
    rounding_shift(x, m0, shift) = floor((x · m0 + 2^(shift-1)) / 2^shift)      in int64

x · m0 < 2^31 · 2^31 = 2^62 cannot overflow int64. Every op below has ONE reference implementation here
(int64 intermediates; the products of linear/matmul run as float GEMMs and the conv in float64, on
integer values, exact by the bound of exact_matmul: every partial sum is an integer the float type holds)
and an ONNX translation in standard ONNX integer ops (MatMulInteger,
ConvInteger with uint8 operands and zero points, int64 Mul/Add, the floor shift through uint64 BitShift)
that onnxruntime runs bit-exactly (onnx_floor_shift: ONNX's integer Div truncates and its BitShift is
unsigned only).
"""

from __future__ import annotations

import functools
import math
import platform
from pathlib import Path

import torch
from onnxscript import FLOAT, INT8, INT32, INT64
from onnxscript import opset18 as op

from hwact.errors import PreconditionError
from hwact.ir.ops import hwact_op, onnx_translation

INT64_TYPE, INT32_TYPE, INT8_TYPE, UINT8_TYPE, UINT64_TYPE = 7, 6, 3, 2, 13


# ----- the dyadic rule ---------------------------------------------------------------------------
def dyadic(real: float) -> tuple[int, int]:
    """(m0, shift) with real ≈ m0 · 2^-shift, 2^30 <= m0 < 2^31 and 0 <= shift <= 62.

    real = f · 2^e with f in [0.5, 1) (frexp); m0 = round(f · 2^31), shift = 31 - e. Reals below 2^-32
    lose normalization (shift is capped at 62, m0 shrinks) and below 2^-63 are refused, as are
    reals >= 2^31 (shift would be negative).
    """
    if not math.isfinite(real) or real <= 0:
        raise PreconditionError(f"requantization multiplier {real!r} is not a positive finite number")
    fraction, exponent = math.frexp(real)
    m0, shift = round(fraction * (1 << 31)), 31 - exponent
    if m0 == 1 << 31:
        m0, shift = m0 >> 1, shift - 1
    if shift < 0:
        raise PreconditionError(f"requantization multiplier {real:.6g} >= 2^31 cannot be an int32 dyadic")
    if shift > 62:
        m0, shift = round(real * 2.0 ** 62), 62
        if m0 == 0:
            raise PreconditionError(f"requantization multiplier {real:.3g} underflows 2^-62")
    return int(m0), int(shift)


def dyadic_tensors(reals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel dyadic(): int64 tensors (m0, shift) of the shape of `reals`."""
    pairs = [dyadic(float(r)) for r in reals.reshape(-1).tolist()]
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64).reshape(reals.shape)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64).reshape(reals.shape)
    return m0, shift


def rounding_shift(x: torch.Tensor, m0, shift) -> torch.Tensor:
    """floor((x · m0 + 2^(shift-1)) / 2^shift) in int64; m0/shift python ints or broadcastable tensors.
    Returns a new tensor (the product's, shifted in place: one int64 temporary instead of three)."""
    if isinstance(shift, int):
        product = x.to(torch.int64) * m0
        product += (1 << shift) >> 1
        return product.bitwise_right_shift_(shift)
    m0, shift = m0.to(torch.int64), shift.to(torch.int64)
    half = torch.bitwise_right_shift(torch.bitwise_left_shift(torch.ones_like(shift), shift), 1)
    product = x.to(torch.int64) * m0
    product += half
    return product.bitwise_right_shift_(shift)


def requantize_values(acc: torch.Tensor, multiplier: float, qmin: int, qmax: int) -> torch.Tensor:
    m0, shift = dyadic(multiplier)
    return rounding_shift(acc, m0, shift).clamp_(qmin, qmax).to(torch.int32)


# ----- ONNX helpers (used inside translations, which torch.onnx traces as plain Python) -------------
def onnx_int64(value: int):
    return op.Constant(value_int=int(value))


def onnx_floor_shift(value, shift, addend=0):
    """floor((value + addend) / 2^shift) on an INT64 ONNX value, exact whenever value + addend fits int64;
    shift is a python int or an INT64 ONNX value in 0..62, addend a python int >= 0 or an INT64 ONNX value.
    ONNX's BitShift is unsigned only and its Div truncates, so the value goes to offset binary:
    u = uint64(value) + 2^63 + addend (wrapping) is value + addend + 2^63 in [0, 2^64), and
    (u >> shift) − (2^63 >> shift) = the floor, taken back to int64 by a wrapping cast: cheap element-wise
    ops instead of Mod + Sub + Div (58 % of an integer ViT's onnxruntime time before)."""
    top = op.Cast(op.Constant(value_int=-(1 << 63)), to=UINT64_TYPE)  # bit pattern 2^63
    bias = top if isinstance(addend, int) and addend == 0 else op.Add(
        top, op.Cast(onnx_int64(addend) if isinstance(addend, int) else addend, to=UINT64_TYPE))
    amount = op.Cast(onnx_int64(shift) if isinstance(shift, int) else shift, to=UINT64_TYPE)
    shifted = op.BitShift(op.Add(op.Cast(value, to=UINT64_TYPE), bias), amount, direction="RIGHT")
    return op.Cast(op.Sub(shifted, op.BitShift(top, amount, direction="RIGHT")), to=INT64_TYPE)


def onnx_rounding_shift(value, m0, shift):
    """rounding_shift() on an INT64 ONNX value; m0 and shift are python ints or INT64 ONNX values."""
    if isinstance(shift, int):
        product = op.Mul(value, onnx_int64(m0))
        return product if shift == 0 else onnx_floor_shift(product, shift, 1 << (shift - 1))
    one = op.Cast(op.Constant(value_int=1), to=UINT64_TYPE)
    half = op.Cast(op.BitShift(op.BitShift(one, op.Cast(shift, to=UINT64_TYPE), direction="LEFT"), one,
                               direction="RIGHT"), to=INT64_TYPE)
    return onnx_floor_shift(op.Mul(value, m0), shift, half)


def onnx_clamp_int32(value, qmin: int, qmax: int):
    return op.Cast(op.Clip(value, onnx_int64(qmin), onnx_int64(qmax)), to=INT32_TYPE)


def onnx_8bit(value, unsigned: bool):
    return op.Cast(value, to=UINT8_TYPE if unsigned else INT8_TYPE)


def onnx_uint8_operand(value, unsigned: bool):
    """An 8-bit operand of MatMulInteger/ConvInteger as (uint8 tensor, uint8 zero point): uint8 values pass
    as they are (zero point 0), int8 values are offset by +128 (zero point 128). Feeding both operands as
    uint8 keeps onnxruntime on its exact u8u8 kernels: its u8s8 kernel on AVX2 without VNNI sums pairs of
    products in saturating int16 (vpmaddubsw), which is not bit-exact for 255 · 127 · 2 > 32767."""
    if unsigned:
        return op.Cast(value, to=UINT8_TYPE), op.Cast(op.Constant(value_int=0), to=UINT8_TYPE)
    shifted = op.Add(op.Cast(value, to=INT64_TYPE), onnx_int64(128))
    return op.Cast(shifted, to=UINT8_TYPE), op.Cast(op.Constant(value_int=128), to=UINT8_TYPE)


def onnx_matmul_integer(a, b, a_unsigned: bool, b_unsigned: bool):
    """Σ a·b in int32 with both operands fed as uint8 plus zero points (see onnx_uint8_operand)."""
    a_u8, a_zero = onnx_uint8_operand(a, a_unsigned)
    b_u8, b_zero = onnx_uint8_operand(b, b_unsigned)
    return op.MatMulInteger(a_u8, b_u8, a_zero, b_zero)


# ----- exact integer products on float GEMMs --------------------------------------------------------
FLOAT32_EXACT = 2**24     # every integer of magnitude <= 2^24 is a float32 (and <= 2^53 a float64)
FLOAT64_EXACT = 2**53
MAX_FLOAT32_SLICES = 4    # beyond this, one float64 GEMM is cheaper than the float32 slices
INT8_GEMM_MAX_K = 1 << 16  # K · 255 · 128 + the offset term stays below 2^31
INT8_GEMM_MIN_K = 2        # torch 2.13's _int_mm returns garbage for K = 1 (N >= 2) on CPU


def _ieee_float32_matmul() -> bool:
    """Whether torch's float32 matmul is plain IEEE float32 (no TF32 / bf16 shortcuts a user may enable)."""
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return torch.get_float32_matmul_precision() == "highest" and \
        getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee")


@functools.lru_cache(maxsize=1)
def _int8_gemm_is_exact() -> bool:
    """Whether torch._int_mm (oneDNN's s8 x s8 -> s32 GEMM on CPU) sums every product exactly here: on x86
    CPUs with a VNNI dot product (AVX512-VNNI, AVX-VNNI, AMX-INT8), whose instructions add four 8-bit
    products straight into int32. Without VNNI, oneDNN multiplies with vpmaddubsw, which saturates pairs of
    products to int16 (oneDNN's "Nuances of int8 computations"): there the float GEMMs are used instead."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not hasattr(torch, "_int_mm"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _int8_matmul(a: torch.Tensor, b: torch.Tensor, a_offset: int) -> torch.Tensor | None:
    """a @ b as int64 through torch._int_mm, for 8-bit values: a − a_offset and b in [−128, 127] (a_offset
    128 takes uint8 a, added back as 128 · Σ_k b_kn); int32 sums are exact for K <= 2^16. None when the
    shapes are not a matrix times a matrix, or equal batches of them."""
    k = a.shape[-1]
    if b.dim() == 2:
        pairs = [(a.reshape(-1, k), b)]
    elif a.dim() == b.dim() >= 3 and a.shape[:-2] == b.shape[:-2]:
        pairs = list(zip(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])))
    else:
        return None
    products = []
    for left, right in pairs:
        left8 = (left - a_offset).to(torch.int8) if a_offset else left.to(torch.int8)
        product = torch._int_mm(left8, right.to(torch.int8)).to(torch.int64)
        if a_offset:
            product += a_offset * right.sum(dim=0, dtype=torch.int64)
        products.append(product)
    batch = a.shape[:-1] if b.dim() == 2 else a.shape[:-2] + a.shape[-2:-1]
    return (products[0] if len(products) == 1 else torch.stack(products)).reshape(*batch, b.shape[-1])


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of integer tensors as int64, exactly.

    8-bit operands (a int8 or uint8, b int8) on a CPU where torch._int_mm is exact (_int8_gemm_is_exact), for
    2 <= K <= 2^16: one int8 GEMM with int32 sums (_int8_matmul), 4-5x faster than a float32 GEMM here (K = 1:
    torch 2.13's _int_mm returned wrong values for every N >= 2 in a sweep of 4,312 shapes, and only there).
    Otherwise on float BLAS (torch has no other integer GEMM on CPU; its int64 matmul is 4x slower than float32):

    With K the reduced size and B = max|a| · max|b|, every partial sum a GEMM forms, in whatever order and
    blocking, is an integer of magnitude <= Σ_k |a_k b_k| <= K·B. A float type holds such integers exactly
    below 2^24 (float32) or 2^53 (float64), and each sum of two exact values that is itself representable is
    exact (an FMA too), so the GEMM returns the exact integer result when K·B stays below that bound:
        K·B <= 2^24            one float32 GEMM
        else                   K split into slices of floor(2^24 / B) columns, one float32 GEMM each, the
                               exact slice results summed in int64 (at most MAX_FLOAT32_SLICES slices)
        else K·B <= 2^53       one float64 GEMM (8-bit operands: any K below 2^37)
        else                   int64 matmul
    Float32 only while torch's float32 matmul is IEEE (_ieee_float32_matmul); otherwise float64 or int64.
    """
    k = a.shape[-1]
    if not (a.numel() and b.numel()):
        return torch.matmul(a.to(torch.int64), b.to(torch.int64))
    (a_low, a_high), (b_low, b_high) = (map(int, torch.aminmax(a)), map(int, torch.aminmax(b)))
    if _int8_gemm_is_exact() and INT8_GEMM_MIN_K <= k <= INT8_GEMM_MAX_K and -128 <= b_low and b_high <= 127:
        a_offset = 0 if -128 <= a_low and a_high <= 127 else 128 if 0 <= a_low and a_high <= 255 else None
        if a_offset is not None:
            product = _int8_matmul(a, b, a_offset)
            if product is not None:
                return product
    bound = max(-a_low, a_high) * max(-b_low, b_high)
    width = k if k * bound <= FLOAT32_EXACT else FLOAT32_EXACT // bound
    if _ieee_float32_matmul() and width >= 1 and -(-k // width) <= MAX_FLOAT32_SLICES:
        a32, b32 = a.to(torch.float32), b.to(torch.float32)
        rows = -2 if b.dim() > 1 else 0   # the axis of b that a's last axis meets
        total = torch.matmul(a32.narrow(-1, 0, width), b32.narrow(rows, 0, width)).to(torch.int64)
        for start in range(width, k, width):
            length = min(width, k - start)
            total += torch.matmul(a32.narrow(-1, start, length), b32.narrow(rows, start, length)).to(torch.int64)
        return total
    if k * bound <= FLOAT64_EXACT:
        return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)
    return torch.matmul(a.to(torch.int64), b.to(torch.int64))


# ----- quantize / dequantize / requantize ----------------------------------------------------------
@hwact_op("quantize", bounds=("qmin", "qmax"))
def quantize(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """q = clamp(round_half_to_even(x / S), qmin, qmax) in float32 (as ONNX Div + Round), int32 out."""
    ratio = x.to(torch.float32) / torch.tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(ratio), qmin, qmax).to(torch.int32)


@quantize.register_fake
def _(x, scale, qmin, qmax):
    return torch.empty(x.shape, dtype=torch.int32, device=x.device)


@onnx_translation(torch.ops.hwact.quantize.default)
def quantize_onnx(x: FLOAT, scale: float, qmin: int, qmax: int) -> INT32:
    ratio = op.Round(op.Div(op.Cast(x, to=1), op.Constant(value_float=scale)))
    clipped = op.Clip(ratio, op.Constant(value_float=float(qmin)), op.Constant(value_float=float(qmax)))
    return op.Cast(clipped, to=INT32_TYPE)


@hwact_op("dequantize")
def dequantize(q: torch.Tensor, scale: float) -> torch.Tensor:
    """x = float32(q) · S."""
    return q.to(torch.float32) * torch.tensor(scale, dtype=torch.float32)


@dequantize.register_fake
def _(q, scale):
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


@onnx_translation(torch.ops.hwact.dequantize.default)
def dequantize_onnx(q: INT32, scale: float) -> FLOAT:
    return op.Mul(op.Cast(q, to=1), op.Constant(value_float=scale))


@hwact_op("requantize", bounds=("qmin", "qmax"))
def requantize(q: torch.Tensor, in_scale: float, out_scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """q_out = clamp(rounding_shift(q, dyadic(S_in / S_out)), qmin, qmax); q may be int32 or int64."""
    return requantize_values(q, in_scale / out_scale, qmin, qmax)


@requantize.register_fake
def _(q, in_scale, out_scale, qmin, qmax):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.requantize.default)
def requantize_onnx(q, in_scale: float, out_scale: float, qmin: int, qmax: int) -> INT32:
    m0, shift = dyadic(in_scale / out_scale)
    return onnx_clamp_int32(onnx_rounding_shift(op.Cast(q, to=INT64_TYPE), m0, shift), qmin, qmax)


# ----- linear / conv with per-output-channel requantization --------------------------------------
def _per_channel_requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, axis: int,
                            qmin: int, qmax: int) -> torch.Tensor:
    view = [1] * acc.dim()
    view[axis] = -1
    return rounding_shift(acc, m0.reshape(view), shift.reshape(view)).clamp_(qmin, qmax).to(torch.int32)


@hwact_op("int_linear", bounds=("qmin", "qmax"))
def int_linear(q: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
               unsigned_input: bool, qmin: int, qmax: int) -> torch.Tensor:
    """acc_c = Σ_k q_k · W_ck + bias_c (int32 accumulate, held in int64 here); out_c = clamp(rounding_shift(
    acc_c, m0_c, shift_c), qmin, qmax). q: 8-bit values (uint8 when unsigned_input), W: int8 [N, K]."""
    acc = exact_matmul(q, weight.t())
    acc += bias   # exact_matmul's result is new: added in place
    return _per_channel_requantize(acc, m0, shift, -1, qmin, qmax)


@int_linear.register_fake
def _(q, weight, bias, m0, shift, unsigned_input, qmin, qmax):
    return torch.empty((*q.shape[:-1], weight.shape[0]), dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.int_linear.default)
def int_linear_onnx(q: INT32, weight: INT8, bias: INT32, m0: INT64, shift: INT64, unsigned_input: bool,
                    qmin: int, qmax: int) -> INT32:
    acc = onnx_matmul_integer(q, op.Transpose(weight, perm=[1, 0]), unsigned_input, False)
    acc64 = op.Cast(op.Add(acc, bias), to=INT64_TYPE)
    return onnx_clamp_int32(onnx_rounding_shift(acc64, m0, shift), qmin, qmax)


@hwact_op("int_conv2d", bounds=("qmin", "qmax"))
def int_conv2d(q: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
               stride: list[int], padding: list[int], dilation: list[int], groups: int, unsigned_input: bool,
               qmin: int, qmax: int) -> torch.Tensor:
    """2-D convolution of int8/uint8 q (NCHW, zero padding = real 0) with int8 W, int32 bias, per-channel
    requantization on axis 1. The reference convolves in float64: exact, every partial sum is an integer
    below 2^53 (|acc| < K·255·127 with K = C_in/G·kh·kw)."""
    acc = torch.nn.functional.conv2d(q.to(torch.float64), weight.to(torch.float64), None, stride, padding,
                                     dilation, groups).to(torch.int64)
    acc = acc + bias.to(torch.int64).reshape(1, -1, 1, 1)
    return _per_channel_requantize(acc, m0, shift, 1, qmin, qmax)


@int_conv2d.register_fake
def _(q, weight, bias, m0, shift, stride, padding, dilation, groups, unsigned_input, qmin, qmax):
    n, _, h, w = q.shape
    kh, kw = weight.shape[2], weight.shape[3]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return torch.empty((n, weight.shape[0], oh, ow), dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.int_conv2d.default)
def int_conv2d_onnx(q: INT32, weight: INT8, bias: INT32, m0: INT64, shift: INT64, stride: list[int],
                    padding: list[int], dilation: list[int], groups: int, unsigned_input: bool,
                    qmin: int, qmax: int) -> INT32:
    q_u8, q_zero = onnx_uint8_operand(q, unsigned_input)  # padding takes the zero point = real 0
    w_u8, w_zero = onnx_uint8_operand(weight, False)
    acc = op.ConvInteger(q_u8, w_u8, q_zero, w_zero, strides=list(stride),
                         pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(dilation),
                         group=groups)
    channel = op.Constant(value_ints=[1, -1, 1, 1])
    acc64 = op.Cast(op.Add(acc, op.Reshape(bias, channel)), to=INT64_TYPE)
    out = onnx_rounding_shift(acc64, op.Reshape(m0, channel), op.Reshape(shift, channel))
    return onnx_clamp_int32(out, qmin, qmax)


# ----- activation x activation matmul, residual add, pooling --------------------------------------
@hwact_op("int_matmul", bounds=("qmin", "qmax"))
def int_matmul(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool, b_unsigned: bool, multiplier: float,
               qmin: int, qmax: int) -> torch.Tensor:
    """out = clamp(rounding_shift(a @ b, dyadic(S_a·S_b / S_out)), qmin, qmax), a and b 8-bit values."""
    acc = exact_matmul(a, b)
    return requantize_values(acc, multiplier, qmin, qmax)


@int_matmul.register_fake
def _(a, b, a_unsigned, b_unsigned, multiplier, qmin, qmax):
    return torch.empty(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                       dtype=torch.int32, device=a.device)


@onnx_translation(torch.ops.hwact.int_matmul.default)
def int_matmul_onnx(a: INT32, b: INT32, a_unsigned: bool, b_unsigned: bool, multiplier: float,
                    qmin: int, qmax: int) -> INT32:
    acc = onnx_matmul_integer(a, b, a_unsigned, b_unsigned)
    m0, shift = dyadic(multiplier)
    return onnx_clamp_int32(onnx_rounding_shift(op.Cast(acc, to=INT64_TYPE), m0, shift), qmin, qmax)


@hwact_op("int_add", bounds=("qmin", "qmax"))
def int_add(a: torch.Tensor, b: torch.Tensor, a_multiplier: float, b_multiplier: float,
            qmin: int, qmax: int) -> torch.Tensor:
    """Residual add at a common scale (I-ViT): out = clamp(rounding_shift(a, dyadic(S_a/S_out)) +
    rounding_shift(b, dyadic(S_b/S_out)), qmin, qmax) — each branch rounded once, then an integer add."""
    total = rounding_shift(a, *dyadic(a_multiplier)) + rounding_shift(b, *dyadic(b_multiplier))
    return torch.clamp(total, qmin, qmax).to(torch.int32)


@int_add.register_fake
def _(a, b, a_multiplier, b_multiplier, qmin, qmax):
    return torch.empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.int32, device=a.device)


@onnx_translation(torch.ops.hwact.int_add.default)
def int_add_onnx(a: INT32, b: INT32, a_multiplier: float, b_multiplier: float, qmin: int, qmax: int) -> INT32:
    left = onnx_rounding_shift(op.Cast(a, to=INT64_TYPE), *dyadic(a_multiplier))
    right = onnx_rounding_shift(op.Cast(b, to=INT64_TYPE), *dyadic(b_multiplier))
    return onnx_clamp_int32(op.Add(left, right), qmin, qmax)


@hwact_op("int_max_pool2d", codes_of="q")
def int_max_pool2d(q: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
                   unsigned_input: bool) -> torch.Tensor:
    """Max pooling of 8-bit values (scale unchanged; padding never wins: it is -inf). Reference: float64
    max pool, exact on integers."""
    return torch.nn.functional.max_pool2d(q.to(torch.float64), kernel, stride, padding).to(torch.int32)


@int_max_pool2d.register_fake
def _(q, kernel, stride, padding, unsigned_input):
    n, c, h, w = q.shape
    oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return torch.empty((n, c, oh, ow), dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.int_max_pool2d.default)
def int_max_pool2d_onnx(q: INT32, kernel: list[int], stride: list[int], padding: list[int],
                        unsigned_input: bool) -> INT32:
    pooled = op.MaxPool(onnx_8bit(q, unsigned_input), kernel_shape=list(kernel), strides=list(stride),
                        pads=[padding[0], padding[1], padding[0], padding[1]])
    if isinstance(pooled, (tuple, list)):  # traced MaxPool yields (values, indices)
        pooled = pooled[0]
    return op.Cast(pooled, to=INT32_TYPE)


# ----- lookups and masks ----------------------------------------------------------------------------
@hwact_op("int_embedding", bounds=(-127, 127))
def int_embedding(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """codes = table[ids]: an embedding table quantized offline (int8, one symmetric scale for the
    table, so every looked-up row shares it), indexed by integer token ids; int32 out."""
    return table.to(torch.int32)[ids.to(torch.int64)]


@int_embedding.register_fake
def _(table, ids):
    return torch.empty(tuple(ids.shape) + (table.shape[1],), dtype=torch.int32, device=table.device)


@onnx_translation(torch.ops.hwact.int_embedding.default)
def int_embedding_onnx(table: INT8, ids) -> INT32:
    return op.Cast(op.Gather(table, op.Cast(ids, to=INT64_TYPE), axis=0), to=INT32_TYPE)


@hwact_op("int_mask", bounds=("fill", "qmax"))
def int_mask(q: torch.Tensor, keep: torch.Tensor, fill: int, qmax: int) -> torch.Tensor:
    """out = where(keep, q, fill), keep a bool tensor broadcast against q: masked attention scores (an
    additive −inf / finfo.min mask) take the code `fill`, below every code of q; the rest keep q's codes
    and scale. Declared codes [fill, qmax], qmax the upper bound of q's codes. fold-quant-scales passes
    fill = −32768 (int16's lowest code, the lowest shiftmax takes), so a masked score is −32768·S_q, far
    below the scores' range, and shiftmax gives it the smallest weight it can express (2^−n)."""
    return torch.where(keep, q.to(torch.int32), torch.tensor(fill, dtype=torch.int32))


@int_mask.register_fake
def _(q, keep, fill, qmax):
    return torch.empty(torch.broadcast_shapes(q.shape, keep.shape), dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.int_mask.default)
def int_mask_onnx(q: INT32, keep, fill: int, qmax: int) -> INT32:
    return op.Where(op.Cast(keep, to=9), q, op.Cast(op.Constant(value_int=int(fill)), to=INT32_TYPE))
