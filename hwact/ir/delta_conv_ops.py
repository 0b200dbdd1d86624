"""hwact::delta_conv2d — a delta activation feeding a Conv2d as one stateful op (ALGORITHMS.md §6.1, §6.3).

hwact::delta_conv2d(x, step, levels, weight, scale, bias_acc, threshold, key_interval,
                    stride, padding, dilation, state, acc, frame) -> (y, state', acc', frame')
  Over a sequence of feature maps x (B, T, C, H, W), per stream and frame t:
    k_t   = clamp(round(x_t / step_c), -levels, levels)                 int32 codes (B, C, H, W)
    t_c   = max(1, ceil(threshold / step_c))                            per-channel code threshold
    key   = key_interval > 0 and (frame + t) % key_interval == 0        periodic full update
    d_t   = k_t - state;   fire = (d_t != 0) if key else (|d_t| >= t_c)
    d_t   = where(fire, d_t, 0);   state += d_t                         last transmitted codes
    acc  += conv2d(d_t, weight, stride, padding, dilation)              int32 (B, O, H', W')
    y_t   = float32(acc) * scale_o                                      (B, T, O, H', W')
  `weight` (O, C, kh, kw) holds int8 values (stored int32) with the input step folded in, quantized
  per output channel: step_c * W[o, c] ~ scale_o * weight[o, c]. The accumulator starts at bias_acc_o
  = round(b_o / scale_o) at every output position: the bias is added once, never per delta. A conv is
  linear, so conv(k_t) = conv(k_{t-1}) + conv(d_t) and threshold 0 gives exactly the dense integer conv
  of the codes at every frame.
  Exactness: the integer conv is computed in float64. |d| <= 2 * levels <= 254 and |weight| <= 127, so
  every partial sum is an integer of magnitude <= C * kh * kw * 32258, exact in float64 while that is
  below 2^53 (C * kh * kw < 2.7e11: always). The int32 accumulator wraps like delta_linear's.
  State: state (B, C, H, W) int32, acc (B, O, H', W') int32, frame (1,) int64; None starts a stream.
  groups = 1 only.

The lowering that makes this op (a delta_act -> Conv2d over folded frames) is part of lower-delta:
hwact/passes/_delta_conv_lowering.py.
"""

from __future__ import annotations

from typing import Optional

import torch
from onnxscript import INT32, INT64, FLOAT
from onnxscript import opset20 as op

from hwact.ir.delta_ops import code_thresholds, delta_frames, quantize_codes
from hwact.ir.ops import hwact_op, onnx_translation

TO_THE_END = 2**62             # a Slice end past any axis


# ----- the op ----------------------------------------------------------------------------------
def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_shape(x_shape, weight_shape, stride, padding, dilation) -> tuple:
    """(H', W') of the conv of a (..., H, W) input."""
    return tuple(output_size(x_shape[-2 + i], weight_shape[2 + i], stride[i], padding[i], dilation[i])
                 for i in range(2))


def integer_conv(change: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """conv2d of int32 codes with int32 weights, exact (float64; bound in the module docstring), int64."""
    out = torch.nn.functional.conv2d(change.to(torch.float64), weight.to(torch.float64), None,
                                     list(stride), list(padding), list(dilation))
    return out.to(torch.int64)


def initial_conv_state(batch: int, channels: int, size: tuple[int, int], out_size: tuple[int, int],
                       bias_acc: torch.Tensor):
    return (torch.zeros(batch, channels, *size, dtype=torch.int32),
            bias_acc.to(torch.int32).reshape(1, -1, 1, 1).expand(batch, -1, *out_size).clone(),
            torch.zeros(1, dtype=torch.int64))


@hwact_op("delta_conv2d")
def delta_conv2d(x: torch.Tensor, step: torch.Tensor, levels: int, weight: torch.Tensor, scale: torch.Tensor,
                 bias_acc: torch.Tensor, threshold: torch.Tensor, key_interval: int, stride: list[int],
                 padding: list[int], dilation: list[int], state: Optional[torch.Tensor] = None,
                 acc: Optional[torch.Tensor] = None,
                 frame: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, steps, channels, height, width = x.shape
    out_size = output_shape(x.shape, weight.shape, stride, padding, dilation)
    if state is None or acc is None or frame is None:
        state, acc, frame = initial_conv_state(batch, channels, (height, width), out_size, bias_acc)
    state, acc = state.to(torch.int32).clone(), acc.to(torch.int32).clone()
    codes = quantize_codes(x, step.reshape(-1, 1, 1), levels)
    limits = code_thresholds(threshold, step).reshape(-1, 1, 1)
    outputs, state, acc = delta_frames(codes, state, acc, limits, key_interval, frame,
                                       lambda change: integer_conv(change, weight, stride, padding, dilation),
                                       scale.reshape(1, -1, 1, 1))
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(batch, 0, weight.shape[0], *out_size)
    return y, state, acc, (frame.reshape(1) + steps).to(torch.int64)


@delta_conv2d.register_fake
def _(x, step, levels, weight, scale, bias_acc, threshold, key_interval, stride, padding, dilation,
      state=None, acc=None, frame=None):
    batch, steps, channels, height, width = x.shape
    out_size = output_shape(x.shape, weight.shape, stride, padding, dilation)
    n_out = weight.shape[0]
    return (x.new_empty(batch, steps, n_out, *out_size), x.new_empty(batch, channels, height, width, dtype=torch.int32),
            x.new_empty(batch, n_out, *out_size, dtype=torch.int32), x.new_empty(1, dtype=torch.int64))


# ----- ONNX: one frame -------------------------------------------------------------------------
def _window(padded: INT32, ky: int, kx: int, kernel: tuple[int, int], stride, dilation) -> INT32:
    """The padded input rows/columns that kernel tap (ky, kx) multiplies: (B, C, H', W')."""
    starts, ends = [], []
    for tap, size, dil in ((ky, kernel[0], dilation[0]), (kx, kernel[1], dilation[1])):
        starts.append(tap * dil)
        ends.append(-(size - 1 - tap) * dil if tap < size - 1 else TO_THE_END)
    return op.Slice(padded, op.Constant(value_ints=starts), op.Constant(value_ints=ends),
                    op.Constant(value_ints=[2, 3]), op.Constant(value_ints=list(stride)))


def onnx_integer_conv(sent: INT32, weight: INT32, kernel: tuple[int, int], stride, padding, dilation) -> INT32:
    """conv2d in int32 ONNX ops (onnxruntime's Conv is float only): a Slice per kernel tap and an
    int32 MatMul over the channels, summed over the taps; the same integers as the reference."""
    pads = op.Constant(value_ints=[0, 0, padding[0], padding[1], 0, 0, padding[0], padding[1]])
    padded = op.Pad(sent, pads)
    total = None
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            window = op.Transpose(_window(padded, ky, kx, kernel, stride, dilation), perm=[0, 2, 3, 1])
            tap = op.Gather(op.Gather(weight, op.Constant(value_int=ky), axis=2), op.Constant(value_int=kx), axis=2)
            part = op.MatMul(window, op.Transpose(tap, perm=[1, 0]))          # (B, H', W', O)
            total = part if total is None else op.Add(total, part)
    return op.Transpose(total, perm=[0, 3, 1, 2])


@onnx_translation(torch.ops.hwact.delta_conv2d.default)
def delta_conv2d_onnx(x: FLOAT, step: FLOAT, levels: int, weight: INT32, scale: FLOAT, bias_acc: INT32,
                      threshold: FLOAT, key_interval: int, stride, padding, dilation,
                      state: INT32, acc: INT32, frame: INT64):
    """One frame (T = 1) of hwact::delta_conv2d in standard ONNX integer ops (the streaming step)."""
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    low = op.Constant(value_float=-float(levels))
    high = op.Constant(value_float=float(levels))
    step3 = op.Reshape(step, op.Constant(value_ints=[-1, 1, 1]))
    codes = op.Cast(op.Clip(op.Round(op.Div(op.Squeeze(x, op.Constant(value_ints=[1])), step3)), low, high), to=6)
    one = op.Constant(value_float=1.0)
    limits = op.Cast(op.Max(op.Ceil(op.Div(op.Reshape(threshold, op.Constant(value_ints=[1])), step3)), one), to=6)
    change = op.Sub(codes, state)
    zero = op.Cast(op.Constant(value_int=0), to=6)
    interval = op.Constant(value_ints=[max(key_interval, 1)])
    is_key = op.And(op.Greater(op.Constant(value_int=key_interval), op.Constant(value_int=0)),
                    op.Equal(op.Mod(frame, interval), op.Constant(value_ints=[0])))
    # |change| >= limit >= 1 implies change != 0, so a key frame only adds the smaller changes
    fire = op.Or(op.GreaterOrEqual(op.Abs(change), limits), op.And(is_key, op.Not(op.Equal(change, zero))))
    sent = op.Mul(change, op.Cast(fire, to=6))
    new_state = op.Add(state, sent)
    new_acc = op.Add(acc, onnx_integer_conv(sent, weight, kernel, stride, padding, dilation))
    scale4 = op.Reshape(scale, op.Constant(value_ints=[1, -1, 1, 1]))
    y = op.Unsqueeze(op.Mul(op.Cast(new_acc, to=1), scale4), op.Constant(value_ints=[1]))
    return y, new_state, new_acc, op.Add(frame, op.Constant(value_ints=[1]))
