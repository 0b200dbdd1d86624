"""What kind of model a graph is, which decides how a target deploys it (the `[deploy.KIND]` tables of
hwact/targets/*.toml):

    logic   holds a hwact::logic_netlist node (a trained logic-gate network, `hwact train-logic`)
    delta   holds delta-activation layer ops (delta_act, delta_linear, delta_conv2d, delta_gru[_float])
    tensor  anything else: an ordinary float model (and the integer graph an int8 recipe makes of it)
"""

from __future__ import annotations

import torch

from hwact.ir.graph import Graph
from hwact.ir.ops import load_all_ops

KINDS = ("tensor", "logic", "delta")
_LOGIC_OPS = ("logic_netlist",)
_DELTA_OPS = ("delta_act", "delta_linear", "delta_conv2d", "delta_gru_float", "delta_gru")


def model_kind(graph: Graph) -> str:
    load_all_ops()
    names = {node.target._opname for node in graph.call_nodes()
             if isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "hwact"}
    if names & set(_LOGIC_OPS):
        return "logic"
    if names & set(_DELTA_OPS):
        return "delta"
    return "tensor"
