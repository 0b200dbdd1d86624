"""The conv part of lower-delta: a delta activation feeding a Conv2d over folded frames becomes one
hwact::delta_conv2d (semantics: hwact/ir/delta_conv_ops.py), and one feeding a Linear through a flatten
of (C, H, W) moves behind the flatten, where lower-delta's Linear rule lowers it.

The conv's weights are quantized like a Linear's (`quantize_conv`: quantize_linear on (O, C * kh * kw)):
the input step of channel c folded into W[o, c], per output channel
    s_o = max |W[o, c, ky, kx] step_c| / 127,   Wq = round(W step / s_o),   bias_acc_o = round(b_o / s_o)

lower_delta_conv(graph, threshold, key_interval), for the FrameCNN pattern:
Before:
    %act  = hwact.delta_act(%x, %step, 127)                 # x (B, T, C, H, W), step (C, 1, 1)
    %fold = aten.flatten.using_ints(%act, 0, 1)              # (B * T, C, H, W)
    %conv = aten.conv2d(%fold, %w, %b, [1, 1], [1, 1])
    %out  = aten.unflatten.int(%conv, 0, [%B, T])            # (B, T, O, H', W')
After:
    %dc   = hwact.delta_conv2d(%x, %step, 127, %w_int8, %scale, %bias_acc, %threshold, 0,
                               [1, 1], [1, 1], [1, 1], None, None, None)
    %out  = getitem(%dc, 0)
and a per-channel delta_act feeding a Linear through a flatten (one step per flattened feature):
    %act = delta_act(%x, %step); %flat = flatten(%act, 2); %lin = linear(%flat, ...)
 -> %flat = flatten(%x, 2); %act = delta_act(%flat, %step_per_feature); %lin = linear(%act, ...)
"""

from __future__ import annotations

import operator

import torch
import torch.fx

import hwact.ir.delta_conv_ops  # noqa: F401  (registers hwact::delta_conv2d)
from hwact.errors import PreconditionError
from hwact.ir.delta_ops import quantize_linear
from hwact.ir.ops import op_args
from hwact.ir.params import constant_value

DELTA_ACT = torch.ops.hwact.delta_act.default
DELTA_CONV2D = torch.ops.hwact.delta_conv2d.default
CONV2D = torch.ops.aten.conv2d.default
LINEAR = torch.ops.aten.linear.default
FOLDS = (torch.ops.aten.flatten.using_ints, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
         torch.ops.aten._unsafe_view.default, torch.ops.aten.unflatten.int)


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
    step = constant_value(graph, op_args(act).step).to(torch.float32)
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
        _channel_step(graph, act, int(_shape(op_args(act).x)[2]))
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
                _feature_step(graph, act, _shape(op_args(act).x))
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


def register_buffers(graph, prefix: str, tensors: dict) -> dict:
    """Register each tensor as buffer `{prefix}_{key}` of the graph's module; a get_attr node for each
    (inserted where the graph's insertion point is)."""
    for key, value in tensors.items():
        graph.module.register_buffer(f"{prefix}_{key}", value)
    return {key: graph.fx.get_attr(f"{prefix}_{key}") for key in tensors}


def _lower_conv(graph, act, chain, index: int, threshold: float, key_interval: int) -> None:
    fold, conv, unfold = chain
    source = op_args(act)
    weight = constant_value(graph, conv.args[1])
    bias = constant_value(graph, conv.args[2]) if len(conv.args) > 2 and conv.args[2] is not None else None
    step = _channel_step(graph, act, weight.shape[1])
    weight_int, scale, bias_acc = quantize_conv(weight, bias, step)
    stride, padding, dilation, _groups = _conv_args(conv)
    tensors = {"step": step, "weight": weight_int, "scale": scale, "bias_acc": bias_acc,
               "threshold": torch.tensor(float(threshold), dtype=torch.float32)}
    with graph.fx.inserting_before(unfold):
        attrs = register_buffers(graph, f"dconv{index}", tensors)
        node = graph.fx.call_function(DELTA_CONV2D,
                                      (source.x, attrs["step"], int(source.levels), attrs["weight"], attrs["scale"],
                                       attrs["bias_acc"], attrs["threshold"], int(key_interval), stride, padding,
                                       dilation, None, None, None))
        out = graph.fx.call_function(operator.getitem, (node, 0))
    out.meta.update(unfold.meta)
    unfold.replace_all_uses_with(out)
    for dead in (unfold, conv, fold, act):
        graph.fx.erase_node(dead)


def _feature_step(graph, act, shape: tuple) -> torch.Tensor:
    """The step of a delta_act on (B, T, C, H, W) (per channel, neuron or layer) as one per flattened feature."""
    step = constant_value(graph, op_args(act).step).to(torch.float32)
    return step.expand(*shape[2:]).reshape(-1).contiguous()


def _move_behind_flatten(graph, act, head, index: int) -> None:
    flat, linear = head
    source = op_args(act)
    per_feature = _feature_step(graph, act, _shape(source.x))
    flat.args = (source.x, *flat.args[1:])
    with graph.fx.inserting_after(flat):
        attrs = register_buffers(graph, f"dhead{index}", {"step": per_feature})
    with graph.fx.inserting_after(attrs["step"]):
        moved = graph.fx.call_function(DELTA_ACT, (flat, attrs["step"], int(source.levels)))
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
