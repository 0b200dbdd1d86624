"""What a graph contains: op census, parameters, FLOPs, and which ops a target runs natively."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

from hwact.ir.graph import Graph, module_path, op_name
from hwact.targets import Target

# Ops that only move or describe data; they are listed in the census but never block a target.
_BOOKKEEPING = ("getitem", "_operator.getitem", "aten.sym_size.int")


def is_bookkeeping(node: torch.fx.Node) -> bool:
    """getitem/sym_size, and Python arithmetic on symbolic sizes (operator.mul of a dynamic batch)."""
    return op_name(node) in _BOOKKEEPING or getattr(node.target, "__module__", None) == "_operator"


def has_float_units(target: Target) -> bool:
    return any(fmt.startswith(("float", "bfloat")) for fmt in target.numeric_formats)


def op_census(graph: Graph) -> dict[str, int]:
    return dict(sorted(Counter(op_name(n) for n in graph.call_nodes()).items()))


def param_count(graph: Graph) -> int:
    return sum(p.numel() for p in graph.module.parameters())


def weight_bytes(graph: Graph) -> int:
    return sum(t.numel() * t.element_size() for t in graph.module.state_dict().values())


def flops(graph: Graph) -> int:
    """FLOPs of one sample (2 per multiply-accumulate) of matmul/conv-type ops, counted by running it."""
    args = graph.example_inputs(batch=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph.module(*args)
    return int(counter.get_total_flops())


def target_support(graph: Graph, target: Target) -> dict:
    """Per op: native or not, with the reason and (for blockers) the first nodes and module paths."""
    native: dict[str, int] = {}
    blocked: dict[str, dict] = {}
    float_nodes = set()
    if not has_float_units(target):  # an op the target has a datapath for still needs integer operands
        from hwact.passes.assert_integer_only import float_compute_nodes

        float_nodes = set(float_compute_nodes(graph))
    for node in graph.call_nodes():
        name = op_name(node)
        if is_bookkeeping(node):
            continue
        ok, reason = target.support(name)
        if ok and node in float_nodes:
            ok, reason = False, (f"computes in float: {target.name} has no float units "
                                 "(lower it with --recipe int8-relu or int8-shiftgelu)")
        if ok:
            native[name] = native.get(name, 0) + 1
            continue
        entry = blocked.setdefault(name, {"count": 0, "reason": reason, "nodes": []})
        entry["count"] += 1
        if len(entry["nodes"]) < 5:
            entry["nodes"].append(f"{node.name} ({module_path(node) or 'top'})")
    return {"target": target.name, "native": dict(sorted(native.items())),
            "not_native": dict(sorted(blocked.items())), "deployable": not blocked}
