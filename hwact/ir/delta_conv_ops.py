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

lower_delta_conv(graph, threshold, key_interval) rewrites, for the FrameCNN pattern,
Before:
    %act  = hwact.delta_act(%x, %step, 127)                 # x (B, T, C, H, W), step (C, 1, 1)
    %fold = aten.flatten.using_ints(%act, 0, 1)              # (B * T, C, H, W)
    %conv = aten.conv2d(%fold, %w, %b, [1, 1], [1, 1])
    %out  = aten.unflatten.int(%conv, 0, [%B, T])            # (B, T, O, H', W')
After:
    %dc   = hwact.delta_conv2d(%x, %step, 127, %w_int8, %scale, %bias_acc, %threshold, 0,
                               [1, 1], [1, 1], [1, 1], None, None, None)
    %out  = getitem(%dc, 0)
and moves a per-channel delta_act that feeds a Linear through a flatten of (C, H, W) behind the
flatten (one step per flattened feature), where lower-delta's Linear rule lowers it:
    %act = delta_act(%x, %step); %flat = flatten(%act, 2); %lin = linear(%flat, ...)
 -> %flat = flatten(%x, 2); %act = delta_act(%flat, %step_per_feature); %lin = linear(%act, ...)
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx
from onnxscript import INT32, INT64, FLOAT
from onnxscript import opset20 as op

from hwact.errors import InputError, PreconditionError
from hwact.ir.delta_ops import code_thresholds, quantize_codes, quantize_linear, send
from hwact.ir.ops import onnx_translation
from hwact.ir.params import constant_value

DELTA_ACT = torch.ops.hwact.delta_act.default
CONV2D = torch.ops.aten.conv2d.default
LINEAR = torch.ops.aten.linear.default
TO_THE_END = 2**62             # a Slice end past any axis
FOLDS = (torch.ops.aten.flatten.using_ints, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
         torch.ops.aten._unsafe_view.default, torch.ops.aten.unflatten.int)


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


@torch.library.custom_op("hwact::delta_conv2d", mutates_args=())
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
    step3 = step.reshape(-1, 1, 1)
    codes = quantize_codes(x, step3, levels)
    limits = code_thresholds(threshold, step).reshape(-1, 1, 1)
    scale4 = scale.reshape(1, -1, 1, 1)
    first = int(frame.reshape(-1)[0])
    outputs = []
    for t in range(steps):
        change = send(codes[:, t], state, limits, key_interval > 0 and (first + t) % key_interval == 0)
        state = state + change
        acc = (acc.to(torch.int64) + integer_conv(change, weight, stride, padding, dilation)).to(torch.int32)
        outputs.append(acc.to(torch.float32) * scale4)
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


# ----- lowering --------------------------------------------------------------------------------
def _shape(node) -> tuple | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _is_fold(node) -> bool:
    """(B, T, C, H, W) -> (B * T, C, H, W): the frames folded into the batch for a conv."""
    source, out = _shape(node.args[0]), _shape(node)
    return (node.target in FOLDS and source is not None and out is not None and len(source) == 5
            and len(out) == 4 and out[1:] == source[2:])


def _is_unfold(node) -> bool:
    """(B * T, O, H', W') -> (B, T, O, H', W'): the conv output unfolded back to sequences."""
    source, out = _shape(node.args[0]), _shape(node)
    return (node.target in FOLDS and source is not None and out is not None and len(source) == 4
            and len(out) == 5 and out[2:] == source[1:])


def _is_frame_flatten(node) -> bool:
    """(B, T, C, H, W) -> (B, T, C * H * W): a frame flattened for a Linear."""
    source, out = _shape(node.args[0]), _shape(node)
    return (node.target in FOLDS and source is not None and out is not None and len(source) == 5
            and len(out) == 3 and isinstance(out[2], int) and out[2] == source[2] * source[3] * source[4])


def conv_chain(act) -> tuple | None:
    """(fold, conv, unfold) when every user of delta_act `act` is that one chain into an aten.conv2d."""
    users = list(act.users)
    if len(users) != 1 or not _is_fold(users[0]) or users[0].args[0] is not act or len(users[0].users) != 1:
        return None
    fold = users[0]
    conv = next(iter(fold.users))
    if conv.target is not CONV2D or conv.args[0] is not fold or len(conv.users) != 1:
        return None
    unfold = next(iter(conv.users))
    return (fold, conv, unfold) if _is_unfold(unfold) else None


def linear_head(act) -> tuple | None:
    """(flatten, linear) when the only user of delta_act `act` flattens frames into an aten.linear."""
    users = list(act.users)
    if len(users) != 1 or not _is_frame_flatten(users[0]) or users[0].args[0] is not act:
        return None
    flat = users[0]
    linear = next(iter(flat.users)) if len(flat.users) == 1 else None
    if linear is None or linear.target is not LINEAR or linear.args[0] is not flat:
        return None
    return flat, linear


def conv_handled(node) -> bool:
    """True for a delta_act that lower_delta_conv lowers (LowerDelta's own Linear rule skips it)."""
    return node.target is DELTA_ACT and (conv_chain(node) is not None or linear_head(node) is not None)


def _pair(value) -> list[int]:
    return [int(value[0]), int(value[-1])] if isinstance(value, (list, tuple)) else [int(value), int(value)]


def _conv_args(conv) -> tuple:
    """stride, padding, dilation (each [y, x]) and groups of an aten.conv2d node, defaults filled in."""
    args = list(conv.args) + [None] * (7 - len(conv.args))
    return _pair(args[3] or 1), _pair(args[4] or 0), _pair(args[5] or 1), int(args[6] or 1)


def _channel_step(graph, act, channels: int) -> torch.Tensor:
    """The (C,) step of a per-channel (or per-layer) delta_act on (B, T, C, H, W)."""
    step = constant_value(graph, act.args[1]).to(torch.float32)
    if step.numel() == 1:
        return step.reshape(1).expand(channels).contiguous()
    if step.shape != (channels, 1, 1):          # (C,) or (W,) would broadcast along the last axis
        raise ValueError(f"{act.name}: step of shape {tuple(step.shape)}; a delta conv needs one step per channel "
                         "(shape (C, 1, 1)) or one per layer")
    return step.reshape(channels).contiguous()


def _conv_problem(graph, act, chain) -> str | None:
    """Why one delta_act -> conv2d chain cannot be lowered, or None."""
    conv = chain[1]
    try:
        _channel_step(graph, act, int(_shape(act.args[0])[2]))
        for operand in conv.args[1:3]:
            constant_value(graph, operand)
    except PreconditionError as exc:
        return exc.message
    except ValueError as exc:
        return str(exc)
    groups = _conv_args(conv)[3]
    if groups != 1:
        return f"{conv.name}: grouped conv (groups={groups}); hwact.delta_conv2d covers groups=1 only"
    return None


def conv_violations(graph) -> list[str]:
    """Why the delta_act nodes that feed a conv (or a flattened Linear) cannot be lowered; [] if all can."""
    problems = []
    for act in graph.call_nodes():
        if act.target is not DELTA_ACT:
            continue
        chain = conv_chain(act)
        if chain is None and any(_is_fold(u) for u in act.users):
            problems.append(f"{act.name}: feeds a fold of (batch, time) that is not exactly one aten.conv2d unfolded "
                            "back to (batch, time, ...); delta propagation is exact only through linear layers")
        elif chain is not None:
            problem = _conv_problem(graph, act, chain)
            problems += [problem] if problem else []
        elif linear_head(act) is not None:
            try:
                _feature_step(graph, act, _shape(act.args[0]))
            except (PreconditionError, RuntimeError) as exc:
                problems.append(getattr(exc, "message", None) or f"{act.name}: {exc}")
    return problems


def quantize_conv(weight: torch.Tensor, bias: torch.Tensor | None, step: torch.Tensor):
    """(int8-valued int32 weight (O, C, kh, kw), float32 scale (O,), int32 bias_acc (O,)): the input
    step folded into the weight, quantized per output channel (quantize_linear on (O, C * kh * kw))."""
    n_out, channels, kh, kw = weight.shape
    per_column = step.to(torch.float32).repeat_interleave(kh * kw)
    weight_int, scale, bias_acc = quantize_linear(weight.reshape(n_out, -1), bias, per_column)
    return weight_int.reshape(n_out, channels, kh, kw), scale, bias_acc


def _register(graph, prefix: str, tensors: dict) -> dict:
    for key, value in tensors.items():
        graph.module.register_buffer(f"{prefix}_{key}", value)
    return {key: graph.fx.get_attr(f"{prefix}_{key}") for key in tensors}


def _lower_conv(graph, act, chain, index: int, threshold: float, key_interval: int) -> None:
    fold, conv, unfold = chain
    weight = constant_value(graph, conv.args[1])
    bias = constant_value(graph, conv.args[2]) if len(conv.args) > 2 and conv.args[2] is not None else None
    step = _channel_step(graph, act, weight.shape[1])
    weight_int, scale, bias_acc = quantize_conv(weight, bias, step)
    stride, padding, dilation, _groups = _conv_args(conv)
    tensors = {"step": step, "weight": weight_int, "scale": scale, "bias_acc": bias_acc,
               "threshold": torch.tensor(float(threshold), dtype=torch.float32)}
    with graph.fx.inserting_before(unfold):
        attrs = _register(graph, f"dconv{index}", tensors)
        node = graph.fx.call_function(torch.ops.hwact.delta_conv2d.default,
                                      (act.args[0], attrs["step"], int(act.args[2]), attrs["weight"], attrs["scale"],
                                       attrs["bias_acc"], attrs["threshold"], int(key_interval), stride, padding,
                                       dilation, None, None, None))
        out = graph.fx.call_function(operator.getitem, (node, 0))
    out.meta.update(unfold.meta)
    unfold.replace_all_uses_with(out)
    for dead in (unfold, conv, fold, act):
        graph.fx.erase_node(dead)


def _feature_step(graph, act, shape: tuple) -> torch.Tensor:
    """The step of a delta_act on (B, T, C, H, W) (per channel, neuron or layer) as one per flattened feature."""
    step = constant_value(graph, act.args[1]).to(torch.float32)
    return step.expand(*shape[2:]).reshape(-1).contiguous()


def _move_behind_flatten(graph, act, head, index: int) -> None:
    flat, linear = head
    per_feature = _feature_step(graph, act, _shape(act.args[0]))
    flat.args = (act.args[0], *flat.args[1:])
    with graph.fx.inserting_after(flat):
        attrs = _register(graph, f"dhead{index}", {"step": per_feature})
    with graph.fx.inserting_after(attrs["step"]):
        moved = graph.fx.call_function(DELTA_ACT, (flat, attrs["step"], int(act.args[2])))
    moved.meta.update(flat.meta)
    linear.args = (moved, *linear.args[1:])
    graph.fx.erase_node(act)


def lower_delta_conv(graph, threshold: float = 0.0, key_interval: int = 0) -> int:
    """Lower every delta_act -> fold -> conv2d -> unfold chain to hwact.delta_conv2d (and move a delta_act
    before a flattened Linear behind the flatten, for lower-delta's Linear rule); returns the convs lowered."""
    problems = conv_violations(graph)
    if problems:
        raise PreconditionError("lower-delta: " + "; ".join(problems[:3]))
    convs = heads = 0
    for act in list(graph.call_nodes()):
        if act.target is not DELTA_ACT:
            continue
        chain, head = conv_chain(act), linear_head(act)
        if chain is not None:
            _lower_conv(graph, act, chain, convs, threshold, key_interval)
            convs += 1
        elif head is not None:
            _move_behind_flatten(graph, act, head, heads)
            heads += 1
    graph.recompile()
    return convs


def set_conv_threshold(graph, threshold: float, key_interval: int | None = None) -> None:
    """Change the run-time threshold (and key-frame interval) of every delta_conv2d in `graph`."""
    if not threshold >= 0:
        raise InputError(f"delta threshold must be >= 0, got {threshold}")
    if key_interval is not None and key_interval < 0:
        raise InputError(f"key-frame interval must be >= 0, got {key_interval}")
    for node in graph.call_nodes():
        if node.target is torch.ops.hwact.delta_conv2d.default:
            getattr(graph.module, node.args[6].target).fill_(float(threshold))
            if key_interval is not None:
                node.args = node.args[:7] + (int(key_interval),) + node.args[8:]
    graph.module.recompile()
