"""What a graph contains: op census, parameters, FLOPs, and which nodes still compute in float."""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

from hwact.ir.graph import Graph, op_name
from hwact.ir.ops import load_all_ops
from hwact.ir.record import record

# Ops that only move or describe data; they are listed in the census but never block a target.
_BOOKKEEPING = ("getitem", "_operator.getitem", "aten.sym_size.int")


def is_bookkeeping(node: torch.fx.Node) -> bool:
    """getitem/sym_size, and Python arithmetic on symbolic sizes (operator.mul of a dynamic batch)."""
    return op_name(node) in _BOOKKEEPING or getattr(node.target, "__module__", None) == "_operator"


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


def float_compute_nodes(graph: Graph) -> list[torch.fx.Node]:
    """call_function nodes that produce a float tensor on a small batch, other than hwact.dequantize (the
    entry of a float island: the op inside it is what gets reported, and a dequantize feeding the output
    is allowed). An integer-only graph has none:

        %y = hwact.dequantize(%q, 0.05)
        %g = aten.gelu(%y)                 reported: gelu computes in float
        %q2 = hwact.quantize(%g, 0.02, -128, 127)

    The answer is remembered per module, for as long as its graph and its tensors' dtypes stay the same (a
    convert asks after the recipe, in its report and in each backend's check: one run of ViT-S/16's integer
    graph each)."""
    load_all_ops()
    module = graph.module
    key = (str(module.graph), tuple((name, t.dtype) for name, t in module.state_dict(keep_vars=True).items()))
    known = _FLOAT_NODES.get(module)
    if known is None or known[0] != key:
        known = _FLOAT_NODES[module] = (key, _run_float_nodes(graph))
    by_name = {node.name: node for node in graph.fx.nodes}
    return [by_name[name] for name in known[1]]


_FLOAT_NODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _run_float_nodes(graph: Graph) -> list[str]:
    """The names of float_compute_nodes, from one run on a batch of 2."""
    floating: dict[torch.fx.Node, bool] = {}

    def note_dtype(node: torch.fx.Node, value) -> None:
        if node.op == "call_function":
            tensors = [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]
            floating[node] = any(t.is_floating_point() for t in tensors)

    record(graph.module, [graph.example_inputs(batch=2, seed=0)], note_dtype)
    dequantize = torch.ops.hwact.dequantize.default
    return [node.name for node, is_float in floating.items() if is_float and node.target is not dequantize]
