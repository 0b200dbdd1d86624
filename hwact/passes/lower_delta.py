"""lower-delta: a Linear that reads a delta activation becomes one stateful hwact::delta_linear.

Math (ALGORITHMS.md §6.1, §6.3; semantics in hwact/ir/delta_ops.py). For y = delta_act(x, q) and
out = y @ W.T + b, with codes k = clamp(round(x / q), -L, L):
    out = (W * q[None, :]) @ k + b
The input step is folded into the weights, which are quantized per output row to int8
(hwact.ir.delta_ops.quantize_linear):
    s_o = max_j |W_oj q_j| / 127,   Wq_oj = round(W_oj q_j / s_o),   bias_acc_o = round(b_o / s_o)
and the layer becomes M_t = M_{t-1} + Wq @ Δk_t (int32, M_0 = bias_acc: the bias is added once),
out_t = s * M_t, with Δk_t the thresholded code changes. `threshold` (>= 0, in the activation's
units; 0 = exact) and `key_interval` (0 = never; n = a full update every n frames) are stored as
buffers/arguments of each op, so they can be changed without re-lowering (`set_threshold`).
A DeltaGRU (hwact.delta_gru_float) becomes the int8 hwact.delta_gru the same way, W_ih with step_x and
W_hh with step_h, b_ih and b_hh into the accumulators' start values (its levels must be <= 127; the
threshold is used for both θx and θh; semantics in hwact/ir/delta_gru_ops.py).
A delta_act feeding a Conv2d (frames folded into the batch) becomes hwact::delta_conv2d first
(hwact/passes/_delta_conv_lowering.py).

Before:
    %act  = hwact.delta_act(%relu, %step, 127)
    %lin  = aten.linear(%act, %w, %b)
After:
    %dl   = hwact.delta_linear(%relu, %step, 127, %w_int8, %scale, %bias_acc, %threshold, 0, None, None, None)
    %lin  = getitem(%dl, 0)
and
    %y    = hwact.delta_gru_float(%x, %step_x, %step_h, 127, %w_ih, %w_hh, %b_ih, %b_hh, 0.0, 0.0)
 -> %dg   = hwact.delta_gru(%x, %step_x, %step_h, 127, %wx_int8, %wh_int8, %scale_x, %scale_h, %bias_x,
                            %bias_h, %threshold, 0, None, None, None, None, None, None)
    %y    = getitem(%dg, 0)
"""

from __future__ import annotations

import operator

import torch
import torch.fx

import hwact.ir.delta_gru_ops  # noqa: F401  (registers hwact::delta_gru_float and hwact::delta_gru)
from hwact.errors import PreconditionError
from hwact.ir.delta_ops import quantize_linear, require_key_interval, require_threshold
from hwact.ir.graph import Graph
from hwact.ir.ops import op_args, set_op_args
from hwact.ir.params import constant_value
from hwact.passes._delta_conv_lowering import (DELTA_CONV2D, conv_handled, conv_violations, lower_delta_conv,
                                               register_buffers)
from hwact.passes.base import Pass, register

DELTA_ACT = torch.ops.hwact.delta_act.default
DELTA_LINEAR = torch.ops.hwact.delta_linear.default
DELTA_GRU_FLOAT = torch.ops.hwact.delta_gru_float.default
DELTA_GRU = torch.ops.hwact.delta_gru.default
LINEAR = torch.ops.aten.linear.default
STATEFUL = (DELTA_LINEAR, DELTA_CONV2D, DELTA_GRU)   # each has arguments `threshold` (a constant), `key_interval`


@register
class LowerDelta(Pass):
    name = "lower-delta"
    takes = ("delta_threshold", "key_interval")
    preconditions = ("every user of a hwact.delta_act is an aten.linear reading it as its input",
                     "the delta step is a constant per last-axis feature (or one per layer)",
                     "threshold >= 0")

    def __init__(self, delta_threshold: float = 0.0, key_interval: int = 0):
        require_threshold(delta_threshold)
        require_key_interval(key_interval)
        self.threshold, self.key_interval = float(delta_threshold), int(key_interval)

    def check(self, graph: Graph) -> list[str]:
        problems = conv_violations(graph)
        for node in graph.call_nodes():
            if node.target is not DELTA_ACT or conv_handled(node):
                continue
            for user in node.users:
                if user.target is not LINEAR or user.args[0] is not node:
                    problems.append(f"{node.name}: used by {user.name} ({user.target}), not by a Linear; "
                                    "delta propagation is exact only through linear layers")
            try:
                step = constant_value(graph, op_args(node).step)
            except PreconditionError as exc:
                problems.append(exc.message)
                continue
            if step.dim() != 1:
                problems.append(f"{node.name}: step of shape {tuple(step.shape)}; only per-feature (last axis) "
                                "or per-layer steps lower to delta_linear")
        return problems

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        problems = self.check(graph)
        if problems:
            raise PreconditionError("lower-delta: " + "; ".join(problems[:3]))
        changed = lower_delta_conv(graph, self.threshold, self.key_interval)
        changed = self._lower_linears(graph, changed)
        changed += self._lower_grus(graph)
        graph.recompile()
        return graph, changed

    def _lower_linears(self, graph: Graph, index: int) -> int:
        """Each delta_act -> aten.linear pair becomes a delta_linear; returns `index` + how many."""
        for node in list(graph.call_nodes()):
            if node.target is not DELTA_ACT:
                continue
            act = op_args(node)
            step = constant_value(graph, act.step).to(torch.float32)
            levels = int(act.levels)
            for user in list(node.users):
                weight = constant_value(graph, user.args[1])
                bias = constant_value(graph, user.args[2]) if len(user.args) > 2 and user.args[2] is not None else None
                full_step = step.expand(weight.shape[1]).contiguous()
                weight_int, scale, bias_acc = quantize_linear(weight, bias, full_step)
                tensors = {"step": full_step, "weight": weight_int, "scale": scale, "bias_acc": bias_acc,
                           "threshold": torch.tensor(self.threshold, dtype=torch.float32)}
                with graph.fx.inserting_before(user):
                    attrs = register_buffers(graph, f"delta{index}", tensors)
                    op = graph.fx.call_function(DELTA_LINEAR, (act.x, attrs["step"], levels, attrs["weight"],
                                                               attrs["scale"], attrs["bias_acc"], attrs["threshold"],
                                                               self.key_interval, None, None, None))
                _replace(graph, user, op)
                index += 1
            if not node.users:
                graph.fx.erase_node(node)
        return index

    def _lower_grus(self, graph: Graph) -> int:
        """Each delta_gru_float becomes a delta_gru (steps folded into the weights, biases into the
        accumulators' start values); returns how many."""
        count = 0
        for node in list(graph.call_nodes()):
            if node.target is not DELTA_GRU_FLOAT:
                continue
            gru = op_args(node)
            levels = int(gru.levels)
            if not 1 <= levels <= 127:
                raise PreconditionError(f"{node.name}: delta GRU with {levels} code levels; "
                                        "the int8 kernels take 1..127")
            w_ih, w_hh = constant_value(graph, gru.w_ih), constant_value(graph, gru.w_hh)
            step_x = constant_value(graph, gru.step_x).to(torch.float32).reshape(-1).expand(w_ih.shape[1]).contiguous()
            step_h = constant_value(graph, gru.step_h).to(torch.float32).reshape(-1).expand(w_hh.shape[1]).contiguous()
            weight_x, scale_x, bias_x = quantize_linear(w_ih, constant_value(graph, gru.b_ih), step_x)
            weight_h, scale_h, bias_h = quantize_linear(w_hh, constant_value(graph, gru.b_hh), step_h)
            tensors = {"step_x": step_x, "step_h": step_h, "weight_x": weight_x, "weight_h": weight_h,
                       "scale_x": scale_x, "scale_h": scale_h, "bias_x": bias_x, "bias_h": bias_h,
                       "threshold": torch.full((2,), self.threshold, dtype=torch.float32)}
            prefix = f"delta_gru{count}"
            while hasattr(graph.module, f"{prefix}_threshold"):
                prefix += "_"
            with graph.fx.inserting_before(node):
                attrs = list(register_buffers(graph, prefix, tensors).values())
                op = graph.fx.call_function(DELTA_GRU, (gru.x, attrs[0], attrs[1], levels, *attrs[2:],
                                                        self.key_interval, None, None, None, None, None, None))
            _replace(graph, node, op)
            count += 1
        return count


def _replace(graph: Graph, node: torch.fx.Node, op: torch.fx.Node) -> None:
    """Make output 0 of the stateful `op` (inserted before `node`) take the place of `node`."""
    with graph.fx.inserting_after(op):
        out = graph.fx.call_function(operator.getitem, (op, 0))
    out.meta.update(node.meta)
    node.replace_all_uses_with(out)
    graph.fx.erase_node(node)


def set_threshold(graph: Graph, threshold: float, key_interval: int | None = None,
                  threshold_h: float | None = None) -> None:
    """Change the run-time threshold (a delta GRU's θx, and θh = `threshold_h`, by default the same) and
    the key-frame interval of every delta_linear, delta_conv2d and delta_gru in `graph`."""
    thresholds = (threshold,) if threshold_h is None else (threshold, threshold_h)
    require_threshold(*thresholds)
    if key_interval is not None:
        require_key_interval(key_interval)
    for node in graph.call_nodes():
        if node.target not in STATEFUL:
            continue
        values = [thresholds[0], thresholds[-1]] if node.target is DELTA_GRU else float(threshold)
        getattr(graph.module, op_args(node).threshold.target).copy_(torch.tensor(values))
        if key_interval is not None:
            set_op_args(node, key_interval=int(key_interval))
    graph.module.recompile()
