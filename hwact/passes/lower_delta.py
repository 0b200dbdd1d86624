"""lower-delta: a Linear that reads a delta activation becomes one stateful hwact::delta_linear.

Math (ALGORITHMS.md §6.1, §6.3; semantics in hwact/ir/delta_ops.py). For y = delta_act(x, q) and
out = y @ W.T + b, with codes k = clamp(round(x / q), -L, L):
    out = (W * q[None, :]) @ k + b
The input step is folded into the weights, which are quantized per output row to int8:
    s_o = max_j |W_oj q_j| / 127,   Wq_oj = round(W_oj q_j / s_o),   bias_acc_o = round(b_o / s_o)
and the layer becomes M_t = M_{t-1} + Wq @ Δk_t (int32, M_0 = bias_acc: the bias is added once),
out_t = s * M_t, with Δk_t the thresholded code changes. `threshold` (>= 0, in the activation's
units; 0 = exact) and `key_interval` (0 = never; n = a full update every n frames) are stored as
buffers/arguments of each op, so they can be changed without re-lowering (`set_threshold`).
A DeltaGRU (hwact.delta_gru_float) becomes the int8 hwact.delta_gru the same way (its levels must be
<= 127; threshold used for both θx and θh): hwact/ir/delta_gru_ops.py, lower_delta_gru.
A delta_act feeding a Conv2d (frames folded into the batch) becomes hwact::delta_conv2d first
(`lower_delta_conv`, hwact/ir/delta_conv_ops.py).

Before:
    %act  = hwact.delta_act(%relu, %step, 127)
    %lin  = aten.linear(%act, %w, %b)
After:
    %dl   = hwact.delta_linear(%relu, %step, 127, %w_int8, %scale, %bias_acc, %threshold, 0, None, None, None)
    %lin  = getitem(%dl, 0)
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from hwact.errors import InputError, PreconditionError
from hwact.ir.delta_conv_ops import conv_handled, conv_violations, lower_delta_conv
from hwact.ir.delta_gru_ops import lower_delta_gru
from hwact.ir.delta_ops import quantize_linear
from hwact.ir.graph import Graph
from hwact.ir.params import constant_value
from hwact.passes.base import Pass, register

DELTA_ACT = torch.ops.hwact.delta_act.default
DELTA_LINEAR = torch.ops.hwact.delta_linear.default
LINEAR = torch.ops.aten.linear.default


@register
class LowerDelta(Pass):
    name = "lower-delta"
    preconditions = ("every user of a hwact.delta_act is an aten.linear reading it as its input",
                     "the delta step is a constant per last-axis feature (or one per layer)",
                     "threshold >= 0")

    def __init__(self, threshold: float = 0.0, key_interval: int = 0):
        if not threshold >= 0:
            raise InputError(f"delta threshold must be >= 0, got {threshold}")
        if key_interval < 0:
            raise InputError(f"key-frame interval must be >= 0, got {key_interval}")
        self.threshold, self.key_interval = float(threshold), int(key_interval)

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
                step = constant_value(graph, node.args[1])
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
        for node in list(graph.call_nodes()):
            if node.target is not DELTA_ACT:
                continue
            step = constant_value(graph, node.args[1]).to(torch.float32)
            levels = int(node.args[2])
            for user in list(node.users):
                weight = constant_value(graph, user.args[1])
                bias = constant_value(graph, user.args[2]) if len(user.args) > 2 and user.args[2] is not None else None
                full_step = step.expand(weight.shape[1]).contiguous()
                weight_int, scale, bias_acc = quantize_linear(weight, bias, full_step)
                prefix = f"delta{changed}"
                tensors = {"step": full_step, "weight": weight_int, "scale": scale, "bias_acc": bias_acc,
                           "threshold": torch.tensor(self.threshold, dtype=torch.float32)}
                for key, value in tensors.items():
                    graph.module.register_buffer(f"{prefix}_{key}", value)
                with graph.fx.inserting_before(user):
                    attrs = {k: graph.fx.get_attr(f"{prefix}_{k}") for k in tensors}
                    op = graph.fx.call_function(DELTA_LINEAR, (node.args[0], attrs["step"], levels, attrs["weight"],
                                                               attrs["scale"], attrs["bias_acc"], attrs["threshold"],
                                                               self.key_interval, None, None, None))
                    out = graph.fx.call_function(operator.getitem, (op, 0))
                out.meta.update(user.meta)
                user.replace_all_uses_with(out)
                graph.fx.erase_node(user)
                changed += 1
            if not node.users:
                graph.fx.erase_node(node)
        changed += lower_delta_gru(graph, self.threshold, self.key_interval)
        graph.recompile()
        return graph, changed


def set_threshold(graph: Graph, threshold: float, key_interval: int | None = None) -> None:
    """Change the run-time threshold (and key-frame interval) of every delta_linear in `graph`."""
    if not threshold >= 0:
        raise InputError(f"delta threshold must be >= 0, got {threshold}")
    for node in graph.call_nodes():
        if node.target is DELTA_LINEAR:
            getattr(graph.module, node.args[6].target).fill_(float(threshold))
            if key_interval is not None:
                if key_interval < 0:
                    raise InputError(f"key-frame interval must be >= 0, got {key_interval}")
                node.args = node.args[:7] + (int(key_interval),) + node.args[8:]
    graph.module.recompile()


def delta_layers(graph: Graph) -> list[dict]:
    """The lowered delta layers in graph order: their tensors, and what follows each (relu or not)."""
    layers = []
    for node in graph.call_nodes():
        if node.target is not DELTA_LINEAR:
            continue
        values = {key: constant_value(graph, node.args[i]) for key, i in
                  (("step", 1), ("weight", 3), ("scale", 4), ("bias_acc", 5), ("threshold", 6))}
        out = next(u for u in node.users if u.target is operator.getitem and u.args[1] == 0)
        users = list(out.users)
        relu = len(users) == 1 and users[0].target is torch.ops.aten.relu.default
        layers.append({"node": node, "levels": int(node.args[2]), "key_interval": int(node.args[7]),
                       "relu": relu, "input": node.args[0], "output": users[0] if relu else out, **values})
    return layers
