"""hwact::delta_act and hwact::delta_linear — temporal-sparsity (delta) layers (ALGORITHMS.md §6).

hwact::delta_act(x, step, levels) -> y                     (the trained model's marker op)
    k = clamp(round_half_even(x / step), -levels, levels)   # integer activation code per neuron
    y = k * step
  `step` (float32, one per channel of the last axis, or one for the layer) is the learned
  quantization step. This is what a DeltaActivation computes frame by frame; the temporal delta is
  implied and made explicit by the `lower-delta` pass.

hwact::delta_linear(x, step, levels, weight, scale, bias_acc, threshold, key_interval,
                    state, acc, frame) -> (y, state', acc', frame')
  A delta_act followed by a Linear layer, as one stateful op over a sequence x (B, T, N_in):
    k_t      = clamp(round(x_t / step), -levels, levels)                  int32 codes
    t_j      = max(1, ceil(threshold / step_j))                           per-neuron code threshold
    key      = key_interval > 0 and (frame + t) % key_interval == 0       periodic full update
    d_t      = k_t - state;   fire = (d_t != 0) if key else (|d_t| >= t_j)
    d_t      = where(fire, d_t, 0);   state += d_t                        last transmitted code
    acc     += d_t @ weight.T      (int32; only the columns j with d_t[j] != 0 contribute)
    y_t      = float32(acc) * scale                                       (B, N_out)
  `weight` holds int8 values (stored int32) with the input step folded in: step_j * W[o, j] ~
  scale_o * weight[o, j]. The accumulator starts at bias_acc = round(b_o / scale_o): the bias is
  added once, in the state's initial value, never per delta. Integer addition is associative, so
  threshold 0 (t_j = 1: every change is sent) gives exactly the dense result float32(weight @ k) *
  scale at every frame, and a key frame re-synchronises every neuron.
  State: state (B, N_in) int32, acc (B, N_out) int32, frame (1,) int64. Passing None starts a stream
  (state 0, acc = bias_acc, frame 0). The op returns the new state, so the graph stays functional
  and exports to ONNX with the state as explicit inputs and outputs.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
from onnxscript import INT32, INT64, FLOAT
from onnxscript import opset20 as op

from hwact.errors import InputError
from hwact.ir.ops import hwact_op, onnx_translation, op_args
from hwact.ir.params import constant_value


# ----- run-time settings -----------------------------------------------------------------------
def require_threshold(*thresholds: float) -> None:
    """InputError unless every delta threshold (activation units) is >= 0 (NaN is refused too)."""
    if not all(threshold >= 0 for threshold in thresholds):
        raise InputError(f"delta threshold must be >= 0, got {', '.join(str(t) for t in thresholds)}")


def require_key_interval(interval: int) -> None:
    """InputError unless the key-frame interval is >= 0 (0 = never)."""
    if interval < 0:
        raise InputError(f"key-frame interval must be >= 0, got {interval}")


# ----- delta_act -------------------------------------------------------------------------------
def quantize_codes(x: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / step), -levels, levels).to(torch.int32)


@hwact_op("delta_act")
def delta_act(x: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    return quantize_codes(x, step, levels).to(x.dtype) * step


@delta_act.register_fake
def _(x, step, levels):
    return torch.empty_like(x)


@onnx_translation(torch.ops.hwact.delta_act.default)
def delta_act_onnx(x: FLOAT, step: FLOAT, levels: int) -> FLOAT:
    low = op.Constant(value_float=-float(levels))
    high = op.Constant(value_float=float(levels))
    return op.Mul(op.Clip(op.Round(op.Div(x, step)), low, high), step)


# ----- delta_linear ----------------------------------------------------------------------------
def code_thresholds(threshold, step: torch.Tensor) -> torch.Tensor:
    """t_j = max(1, ceil(threshold / step_j)) as int32, float32 division and at most 1e9, like every
    C kernel (no code change reaches 1e9: the limit then means "never")."""
    threshold = torch.as_tensor(threshold, dtype=torch.float32).reshape(())
    return torch.clamp(torch.ceil(threshold / step.to(torch.float32)), min=1.0, max=1e9).to(torch.int32)


def send(codes: torch.Tensor, sent: torch.Tensor, limits: torch.Tensor, key: bool = False) -> torch.Tensor:
    """The fired code changes: codes - sent where |change| >= limit (any change on a key frame), else 0."""
    change = codes - sent
    fire = change != 0 if key else change.abs() >= limits
    return torch.where(fire, change, torch.zeros_like(change))


def delta_frames(codes: torch.Tensor, state: torch.Tensor, acc: torch.Tensor, limits: torch.Tensor, key_interval: int,
                 frame: torch.Tensor, product, scale: torch.Tensor):
    """The frame loop of a stateful delta op over codes (B, T, ...): per frame t, the fired changes d_t
    (`send`; every change on a key frame, key_interval > 0 and (frame + t) % key_interval == 0),
    state += d_t, acc += product(d_t) in exact integers wrapped to int32, y_t = float32(acc) * scale.
    Returns [y_t], state, acc."""
    first = int(frame.reshape(-1)[0])
    outputs = []
    for t in range(codes.shape[1]):
        change = send(codes[:, t], state, limits, key_interval > 0 and (first + t) % key_interval == 0)
        state = state + change
        acc = (acc.to(torch.int64) + product(change)).to(torch.int32)
        outputs.append(acc.to(torch.float32) * scale)
    return outputs, state, acc


def initial_state(batch: int, n_in: int, bias_acc: torch.Tensor):
    return (torch.zeros(batch, n_in, dtype=torch.int32),
            bias_acc.to(torch.int32).expand(batch, -1).clone(),
            torch.zeros(1, dtype=torch.int64))


@hwact_op("delta_linear")
def delta_linear(x: torch.Tensor, step: torch.Tensor, levels: int, weight: torch.Tensor,
                 scale: torch.Tensor, bias_acc: torch.Tensor, threshold: torch.Tensor, key_interval: int,
                 state: Optional[torch.Tensor] = None, acc: Optional[torch.Tensor] = None,
                 frame: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, steps, n_in = x.shape
    if state is None or acc is None or frame is None:
        state, acc, frame = initial_state(batch, n_in, bias_acc)
    state, acc = state.to(torch.int32).clone(), acc.to(torch.int32).clone()
    weight_t = weight.to(torch.int64).t()
    outputs, state, acc = delta_frames(quantize_codes(x, step, levels), state, acc, code_thresholds(threshold, step),
                                       key_interval, frame, lambda change: change.to(torch.int64) @ weight_t, scale)
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(batch, 0, weight.shape[0])
    return y, state, acc, (frame.reshape(1) + steps).to(torch.int64)


@delta_linear.register_fake
def _(x, step, levels, weight, scale, bias_acc, threshold, key_interval, state=None, acc=None, frame=None):
    batch, steps, n_in = x.shape
    n_out = weight.shape[0]
    return (x.new_empty(batch, steps, n_out), x.new_empty(batch, n_in, dtype=torch.int32),
            x.new_empty(batch, n_out, dtype=torch.int32), x.new_empty(1, dtype=torch.int64))


@onnx_translation(torch.ops.hwact.delta_linear.default)
def delta_linear_onnx(x: FLOAT, step: FLOAT, levels: int, weight: INT32, scale: FLOAT, bias_acc: INT32,
                      threshold: FLOAT, key_interval: int, state: INT32, acc: INT32, frame: INT64):
    """One frame (T = 1) of hwact::delta_linear in standard ONNX integer ops (the streaming step)."""
    low = op.Constant(value_float=-float(levels))
    high = op.Constant(value_float=float(levels))
    axis = op.Constant(value_ints=[1])
    codes = op.Cast(op.Clip(op.Round(op.Div(op.Squeeze(x, axis), step)), low, high), to=6)
    one = op.Constant(value_float=1.0)
    limits = op.Cast(op.Max(op.Ceil(op.Div(op.Reshape(threshold, op.Constant(value_ints=[1])), step)), one), to=6)
    change = op.Sub(codes, state)
    zero = op.Cast(op.Constant(value_int=0), to=6)
    interval = op.Constant(value_int=key_interval)
    zero_scalar64 = op.Constant(value_int=0)
    zero64 = op.Constant(value_ints=[0])
    interval64 = op.Constant(value_ints=[max(key_interval, 1)])
    is_key = op.And(op.Greater(interval, zero_scalar64), op.Equal(op.Mod(frame, interval64), zero64))
    # |change| >= limit >= 1 implies change != 0, so a key frame only adds the smaller changes
    fire = op.Or(op.GreaterOrEqual(op.Abs(change), limits), op.And(is_key, op.Not(op.Equal(change, zero))))
    sent = op.Mul(change, op.Cast(fire, to=6))
    new_state = op.Add(state, sent)
    new_acc = op.Add(acc, op.MatMul(sent, op.Transpose(weight, perm=[1, 0])))
    y = op.Unsqueeze(op.Mul(op.Cast(new_acc, to=1), scale), axis)
    new_frame = op.Add(frame, op.Constant(value_ints=[1]))
    return y, new_state, new_acc, new_frame


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None, step: torch.Tensor):
    """(int8-valued int32 weight, float32 row scale, int32 bias accumulator) for W, b and input step."""
    folded = weight.to(torch.float64) * step.to(torch.float64)[None, :]
    scale = folded.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)
    weight_int = torch.clamp(torch.round(folded / scale.to(torch.float64)[:, None]), -127, 127).to(torch.int32)
    bias = torch.zeros(weight.shape[0]) if bias is None else bias
    bias_acc = torch.clamp(torch.round(bias.to(torch.float64) / scale.to(torch.float64)), -2**30, 2**30).to(torch.int32)
    return weight_int, scale, bias_acc


def delta_layers(graph) -> list[dict]:
    """The hwact.delta_linear layers of a lowered graph in graph order: their tensors and settings, and
    what follows each (a relu or not)."""
    layers = []
    for node in graph.call_nodes():
        if node.target is not torch.ops.hwact.delta_linear.default:
            continue
        args = op_args(node)
        values = {key: constant_value(graph, getattr(args, key)) for key in
                  ("step", "weight", "scale", "bias_acc", "threshold")}
        out = next(u for u in node.users if u.target is operator.getitem and u.args[1] == 0)
        users = list(out.users)
        relu = len(users) == 1 and users[0].target is torch.ops.aten.relu.default
        layers.append({"node": node, "levels": int(args.levels), "key_interval": int(args.key_interval),
                       "relu": relu, "input": args.x, "output": users[0] if relu else out, **values})
    return layers
