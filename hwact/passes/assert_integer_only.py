"""assert-integer-only: fail, naming each node, when anything between the input quantize and the output
dequantize still computes in floating point. Also defines the integer recipes.

The graph is run once on a small batch (torch.fx.Interpreter) and every call_function node's output
dtype is recorded. Every call_function node other than hwact.dequantize that yields a float tensor (the
op inside a float island left by fold-quant-scales, an op it does not lower) is a violation; a
dequantize is only the entry of such an island, or the allowed int → float step at the output:

    %y = hwact.dequantize(%q, 0.05)
    %g = aten.gelu(%y)                     violation: gelu (aten.gelu.default, blocks.0.mlp) computes in float
    %q2 = hwact.quantize(%g, 0.02, -128, 127)

The pass changes nothing; its precondition is the check (the pass manager reports the nodes).
"""

from __future__ import annotations

import torch
import torch.fx

from hwact.ir.graph import Graph, module_path, op_name
from hwact.passes.base import RECIPES, Pass, register

# cleanup folds constant subgraphs (Swin's relative-position bias: a table indexed by a constant) into
# one constant, which fold-quant-scales then adds in integers
RECIPES["int8-relu"] = ["gelu-to-relu", "fold-bn", "fold-layer-scale", "cleanup", "cle", "calibrate",
                        "fold-quant-scales", "i-layernorm", "shiftmax", "assert-integer-only"]
RECIPES["int8-shiftgelu"] = ["fold-bn", "fold-layer-scale", "cleanup", "calibrate", "fold-quant-scales",
                             "shift-gelu", "i-layernorm", "shiftmax", "assert-integer-only"]


class _DtypeRecorder(torch.fx.Interpreter):
    def __init__(self, module):
        super().__init__(module)
        self.floating: dict[torch.fx.Node, bool] = {}

    def run_node(self, node):
        result = super().run_node(node)
        if node.op == "call_function":
            tensors = [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
            self.floating[node] = any(t.is_floating_point() for t in tensors)
        return result


def float_compute_nodes(graph: Graph) -> list[torch.fx.Node]:
    """call_function nodes that produce a float tensor, other than hwact.dequantize (the entry of a float
    island: the op inside it is what gets reported, and a dequantize feeding the output is allowed)."""
    recorder = _DtypeRecorder(graph.module)
    with torch.no_grad():
        recorder.run(*graph.example_inputs(batch=2, seed=0))
    found = []
    for node, floating in recorder.floating.items():
        if not floating:
            continue
        if node.target is torch.ops.hwact.dequantize.default:
            continue
        found.append(node)
    return found


@register
class AssertIntegerOnly(Pass):
    name = "assert-integer-only"
    preconditions = ("no node computes in floating point between the input quantize and the output dequantize",)
    tolerance = 0.0

    def check(self, graph: Graph) -> list[str]:
        return [f"{node.name} ({op_name(node)}{', ' + module_path(node) if module_path(node) else ''}) computes in float"
                for node in float_compute_nodes(graph)]

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        return graph, 0
