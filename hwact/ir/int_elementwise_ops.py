"""Integer element functions (issue 14): a lookup table for any function of one 8/16-bit input, and the
requantized product of two integer tensors, as hwact ops with one exact integer reference each and ONNX
translations in standard ONNX ops (Gather, Clip, int64 Mul, the floor shift of hwact/ir/int_ops.py).

hwact::int_lut(q, table, in_qmin, qmin, qmax)              y = f(x) for one input code q
    N     = len(table),  1 <= N <= 65536 (one int32 entry per input code: 256 for int8/uint8, 65536 for int16)
    index = clamp(q − in_qmin, 0, N − 1)                    # int64
    out   = clamp(table[index], qmin, qmax)                 # int32
  The table stands for the codes in_qmin .. in_qmin + N − 1; a code outside that span is saturated to the
  nearest end (lut-activations sizes the table for the declared bounds of q's producer, so this never
  happens in a graph it made; the clamp makes the op total, and ONNX's Gather, which would wrap a
  negative index or fail on a large one, computes the same thing). The output clamp makes the declared
  bounds hold whatever the table holds.
  ONNX: index = Max(Min(int64(q) − in_qmin, N − 1), 0);  out = Gather(int32(Clip(int64(table), qmin, qmax)),
  index, axis=0) — clipping the N table entries instead of every output element (same result).

hwact::int_mul(a, b, multiplier, qmin, qmax)               y = x_a · x_b,  multiplier = S_a · S_b / S_out
    p   = int64(a) · int64(b)                               # broadcasting; |a|, |b| <= 2^15 so |p| <= 2^30
    out = clamp(rounding_shift(p, dyadic(multiplier)), qmin, qmax)
  rounding_shift and dyadic are the one requantization rule of hwact/ir/int_ops.py (m0 < 2^31, round half
  up by a floor shift): |p · m0| < 2^30 · 2^31 = 2^61, so int64 never overflows. Operands outside int16
  ([-32768, 32767]) are refused by the reference (PreconditionError): that bound is what the overflow
  analysis needs, and an int32 accumulator reaching this op is a lowering error, not data to saturate.
  Used for squeeze-excite gating x · σ(s) and gated units (GLU / SwiGLU products).
"""

from __future__ import annotations

import torch
from onnxscript import INT32
from onnxscript import opset18 as op

from hwact.errors import PreconditionError
from hwact.ir.int_ops import INT64_TYPE, dyadic, onnx_clamp_int32, onnx_int64, onnx_rounding_shift, rounding_shift
from hwact.ir.ops import hwact_op, onnx_translation

TABLE_LIMIT = 1 << 16                       # int_lut: at most one entry per int16 code
OPERAND_MIN, OPERAND_MAX = -(1 << 15), (1 << 15) - 1   # int_mul: operands are int8/uint8/int16 codes


# ----- hwact::int_lut ------------------------------------------------------------------------------
def check_table(table: torch.Tensor) -> int:
    """The number of entries N of a lookup table; PreconditionError unless it is 1-D integer, 1 <= N <= 2^16."""
    if table.dim() != 1 or table.is_floating_point() or table.is_complex() or table.dtype == torch.bool:
        raise PreconditionError(f"int_lut: the table must be a 1-D integer tensor (got {table.dtype}, "
                                f"shape {tuple(table.shape)})")
    if not 1 <= table.numel() <= TABLE_LIMIT:
        raise PreconditionError(f"int_lut: the table has {table.numel()} entries; 1 to {TABLE_LIMIT} "
                                "(one per int16 code) are allowed")
    return int(table.numel())


@hwact_op("int_lut", bounds=("qmin", "qmax"))
def int_lut(q: torch.Tensor, table: torch.Tensor, in_qmin: int, qmin: int, qmax: int) -> torch.Tensor:
    """out = clamp(table[clamp(q − in_qmin, 0, N − 1)], qmin, qmax), N = len(table) (module docstring)."""
    size = check_table(table)
    index = torch.clamp(q.to(torch.int64) - in_qmin, 0, size - 1)
    entries = torch.clamp(table.to(torch.int64), qmin, qmax)
    return entries[index].to(torch.int32)


@int_lut.register_fake
def _(q, table, in_qmin, qmin, qmax):
    return torch.empty(q.shape, dtype=torch.int32, device=q.device)


@onnx_translation(torch.ops.hwact.int_lut.default)
def int_lut_onnx(q: INT32, table: INT32, in_qmin: int, qmin: int, qmax: int) -> INT32:
    last = op.Sub(op.Shape(table), onnx_int64(1))           # [N − 1], broadcast against the indices
    index = op.Max(op.Min(op.Sub(op.Cast(q, to=INT64_TYPE), onnx_int64(in_qmin)), last), onnx_int64(0))
    entries = onnx_clamp_int32(op.Cast(table, to=INT64_TYPE), qmin, qmax)
    return op.Gather(entries, index, axis=0)


# ----- hwact::int_mul ------------------------------------------------------------------------------
def _check_operand(name: str, value: torch.Tensor) -> torch.Tensor:
    value = value.to(torch.int64)
    if value.numel() and (int(value.min()) < OPERAND_MIN or int(value.max()) > OPERAND_MAX):
        raise PreconditionError(f"int_mul: operand {name} holds values in [{int(value.min())}, {int(value.max())}], "
                                f"beyond int16 [{OPERAND_MIN}, {OPERAND_MAX}] (the product · m0 would not fit "
                                "int64)", hint="requantize the operand to 8 or 16 bits first")
    return value


@hwact_op("int_mul", bounds=("qmin", "qmax"))
def int_mul(a: torch.Tensor, b: torch.Tensor, multiplier: float, qmin: int, qmax: int) -> torch.Tensor:
    """out = clamp(rounding_shift(a · b, dyadic(multiplier)), qmin, qmax), the product in int64 with
    broadcasting; a, b within int16 (module docstring)."""
    m0, shift = dyadic(multiplier)
    product = _check_operand("a", a) * _check_operand("b", b)
    return torch.clamp(rounding_shift(product, m0, shift), qmin, qmax).to(torch.int32)


@int_mul.register_fake
def _(a, b, multiplier, qmin, qmax):
    return torch.empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.int32, device=a.device)


@onnx_translation(torch.ops.hwact.int_mul.default)
def int_mul_onnx(a: INT32, b: INT32, multiplier: float, qmin: int, qmax: int) -> INT32:
    m0, shift = dyadic(multiplier)
    product = op.Mul(op.Cast(a, to=INT64_TYPE), op.Cast(b, to=INT64_TYPE))
    return onnx_clamp_int32(onnx_rounding_shift(product, m0, shift), qmin, qmax)

