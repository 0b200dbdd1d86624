"""Reading and adding constant tensors (parameters/buffers) of a Graph's module."""

from __future__ import annotations

import torch
import torch.fx

from hwact.errors import PreconditionError
from hwact.ir.graph import Graph


def get_tensor(graph: Graph, node) -> torch.Tensor | None:
    """The tensor behind a get_attr node (None for None)."""
    if node is None:
        return None
    if not (isinstance(node, torch.fx.Node) and node.op == "get_attr"):
        raise TypeError(f"{node} is not a get_attr node")
    value = graph.module
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def add_constant(graph: Graph, stem: str, value: torch.Tensor, before: torch.fx.Node, trainable: bool = True) -> torch.fx.Node:
    """Register `value` on the root module under a fresh name and return a get_attr node for it."""
    index = 0
    while hasattr(graph.module, f"{stem}_{index}"):
        index += 1
    name = f"{stem}_{index}"
    value = value.detach().clone().contiguous()
    if trainable and value.is_floating_point():
        graph.module.register_parameter(name, torch.nn.Parameter(value))
    else:
        graph.module.register_buffer(name, value)
    with graph.fx.inserting_before(before):
        node = graph.fx.get_attr(name)
    node.meta["val"] = value
    return node


def constant_value(graph: Graph, node) -> torch.Tensor:
    """Evaluate `node` when it depends only on parameters (get_attr) and literals."""
    if not isinstance(node, torch.fx.Node):
        return node
    if node.op == "get_attr":
        value = graph.module
        for part in node.target.split("."):
            value = getattr(value, part)
        return value.detach()
    if node.op != "call_function":
        raise PreconditionError(f"node {node.name}: a delta step must be a constant, it depends on input {node.name}")
    args = torch.fx.node.map_arg(node.args, lambda n: constant_value(graph, n))
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: constant_value(graph, n))
    with torch.no_grad():
        return node.target(*args, **kwargs)
