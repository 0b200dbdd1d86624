"""Inserting aten calls into a traced graph the way torch.export would have written them.

`call(graph, target, args, like)` adds `target(*args)` before the current insertion point, copies the
source location of `like` (its module path and stack trace, so reports name the user's module) and sets
meta["val"] by running the op on the arguments' traced values (fake tensors: shapes, dtypes, symbolic
batch), which later passes (calibrate, summaries) read.
"""

from __future__ import annotations

import torch
import torch.fx

from hwact.ir.graph import Graph

LOCATION_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack")


def traced_value(value):
    return torch.fx.node.map_aggregate(value, lambda a: a.meta.get("val") if isinstance(a, torch.fx.Node) else a)


def call(graph: Graph, target, args: tuple, like: torch.fx.Node | None, kwargs: dict | None = None) -> torch.fx.Node:
    node = graph.fx.call_function(target, args, kwargs or {})
    if like is not None:
        for key in LOCATION_KEYS:
            if key in like.meta:
                node.meta[key] = like.meta[key]
    try:
        node.meta["val"] = target(*traced_value(args), **traced_value(kwargs or {}))
    except Exception:  # noqa: BLE001 - an op that cannot run on fake values simply has no traced value
        pass
    return node


def replace(graph: Graph, node: torch.fx.Node, replacement) -> None:
    """Every use of `node` reads `replacement` instead; `node` is erased."""
    node.replace_all_uses_with(replacement)
    graph.fx.erase_node(node)
