"""cleanup: constant folding, dead-code elimination and removal of unused weights.

Constant folding: a node all of whose inputs are constants (get_attr tensors or literals; a creation op
with no tensor input at all, such as arange(16) or zeros(1, 16), counts) computes a constant; each such node that feeds a non-constant node is evaluated once and replaced by a buffer.
Dead-code elimination then drops everything without users, and parameters/buffers that no get_attr
reads any more are deleted from the module (so exports carry only live weights).

Before:                                               After:
    %table = get_attr[rel_pos_table]                       %bias = get_attr[folded_const_0]
    %index = get_attr[rel_pos_index]
    %bias = aten.index.Tensor(%table, [%index])
    %logits = aten.add.Tensor(%qk, %bias)                  %logits = aten.add.Tensor(%qk, %bias)

Folding freezes values computed from parameters, so run it for export, not before fine-tuning.
"""

from __future__ import annotations

import torch
import torch.fx

from hwact.ir.graph import Graph
from hwact.ir.params import add_constant
from hwact.passes.base import Pass, register

# Ops that are cheap views of a weight: folding them only duplicates memory in the export.
_VIEW_OPS = {"view", "reshape", "t", "transpose", "permute", "unsqueeze", "squeeze", "expand", "detach",
             "alias", "contiguous", "clone", "_to_copy", "to", "flatten", "slice", "select"}


def _is_constant(node: torch.fx.Node, constant: set) -> bool:
    if node.op == "get_attr":
        return True
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    if node.target._opname.startswith(("empty", "_assert", "sym_")):
        return False   # uninitialised memory, assertions and shape queries are not values to freeze
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor) and any(not isinstance(d, int) for d in value.shape):
        return False   # a size that follows the batch (arange(batch)) is not a constant
    return all(i in constant for i in node.all_input_nodes)   # no inputs: arange(16), zeros(...), full(...)


@register
class Cleanup(Pass):
    name = "cleanup"
    tolerance = 1e-5

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        changed = self._fold_constants(graph)
        before = len(graph.fx.nodes)
        graph.fx.eliminate_dead_code()
        changed += before - len(graph.fx.nodes)
        changed += self._drop_unused_weights(graph)
        graph.recompile()
        return graph, changed

    @staticmethod
    def _fold_constants(graph: Graph) -> int:
        constant: set = set()
        computed: set = set()  # constants that are more than a view of one weight
        for node in graph.fx.nodes:
            if _is_constant(node, constant):
                constant.add(node)
                if node.op == "call_function" and (node.target._opname not in _VIEW_OPS
                                                   or any(i in computed for i in node.all_input_nodes)):
                    computed.add(node)
        frontier = [n for n in graph.fx.nodes if n in computed and any(u not in constant for u in n.users)]
        if not frontier:
            return 0
        interpreter = torch.fx.Interpreter(graph.module)
        env: dict = {}
        with torch.no_grad():
            for node in graph.fx.nodes:
                if node in constant:
                    env[node] = interpreter.fetch_attr(node.target) if node.op == "get_attr" else node.target(
                        *torch.fx.node.map_arg(node.args, lambda n: env[n]),
                        **torch.fx.node.map_arg(node.kwargs, lambda n: env[n]))
        folded = 0
        for node in frontier:
            value = env[node]
            if not isinstance(value, torch.Tensor):
                continue
            replacement = add_constant(graph, "folded_const", value, node, trainable=False)
            replacement.meta = dict(node.meta, val=value)
            node.replace_all_uses_with(replacement)
            folded += 1
        return folded

    @staticmethod
    def _drop_unused_weights(graph: Graph) -> int:
        used = {n.target for n in graph.fx.nodes if n.op == "get_attr"}
        dropped = 0
        for name, _ in list(graph.module.named_parameters()) + list(graph.module.named_buffers()):
            if name in used:
                continue
            owner_path, _, attr = name.rpartition(".")
            owner = graph.module.get_submodule(owner_path) if owner_path else graph.module
            delattr(owner, attr)
            dropped += 1
        return dropped
