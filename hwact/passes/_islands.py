"""Float islands left by fold-quant-scales, and their replacement by one integer op.

fold-quant-scales leaves every op it cannot lower (GELU, softmax, LayerNorm) as exactly

    q_in → hwact.dequantize(q_in, S_in) → <one aten op> → hwact.quantize(y, S_out, qmin, qmax) → q_out

`find_islands` returns those around the given aten ops (and, for an op of that kind that is not in
such an island, a violation naming it); `replace_island` swaps the three nodes for one call of an
integer op taking (q_in, S_in, S_out, ..., qmin, qmax, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from hwact.ir import int_nonlinear_ops  # noqa: F401  (registers the hwact integer non-linear ops)
from hwact.ir import int_ops  # noqa: F401
from hwact.ir.graph import Graph, module_path

hw = torch.ops.hwact
aten = torch.ops.aten

# Where each integer op keeps its (qmin, qmax) arguments: the range of the codes it produces.
_BOUNDS_AT = {hw.quantize.default: (2, 3), hw.requantize.default: (3, 4), hw.int_linear.default: (6, 7),
              hw.int_conv2d.default: (10, 11), hw.int_matmul.default: (5, 6), hw.int_add.default: (4, 5),
              hw.shift_gelu.default: (3, 4), hw.lambda_shift_gelu.default: (3, 4), hw.shiftmax.default: (4, 5),
              hw.i_layernorm.default: (7, 8)}
_PASS_THROUGH = {aten.reshape.default, aten.view.default, aten.permute.default, aten.transpose.int,
                 aten.select.int, aten.slice.Tensor, aten.flatten.using_ints, aten.expand.default,
                 aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
                 aten.contiguous.default, aten.clone.default, aten.t.default, aten.roll.default,
                 aten._unsafe_view.default, aten.alias.default, aten.detach.default,
                 hw.int_max_pool2d.default}
INT8 = (-128, 127)


@dataclass
class Island:
    dequantize: torch.fx.Node
    op: torch.fx.Node
    quantize: torch.fx.Node
    q_in: torch.fx.Node
    in_scale: float
    out_scale: float
    qmin: int
    qmax: int
    in_bounds: tuple[int, int]    # codes q_in can take (from its producer; int8 when unknown)
    in_bounds_known: bool

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def module(self) -> str:
        return module_path(self.op)


def input_bounds(node: torch.fx.Node) -> tuple[int, int] | None:
    """(qmin, qmax) of the integer tensor `node`, read from the op that produced it."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function":
        if node.target in _PASS_THROUGH:
            node = node.args[0]
            continue
        if node.target is aten.clamp.default:
            inner = input_bounds(node.args[0])
            low = node.args[1] if len(node.args) > 1 and node.args[1] is not None else None
            if inner is None:
                return None
            return (max(inner[0], low) if low is not None else inner[0]), inner[1]
        where = _BOUNDS_AT.get(node.target)
        if where is None:
            return None
        return int(node.args[where[0]]), int(node.args[where[1]])
    return None


def find_islands(graph: Graph, targets: set) -> tuple[list[Island], list[str]]:
    """The islands around ops in `targets`, and one violation line per such op not inside an island."""
    islands, violations = [], []
    for node in graph.call_nodes():
        if node.target not in targets:
            continue
        source = node.args[0] if node.args else None
        users = list(node.users)
        if not (isinstance(source, torch.fx.Node) and source.target is hw.dequantize.default):
            violations.append(f"{node.name} ({node.target}): its input is not hwact.dequantize — "
                              "run fold-quant-scales first")
            continue
        if len(users) != 1 or users[0].target is not hw.quantize.default or users[0].args[0] is not node:
            violations.append(f"{node.name} ({node.target}): its output is not one hwact.quantize — "
                              "run fold-quant-scales first")
            continue
        quantize = users[0]
        q_in = source.args[0]
        bounds = input_bounds(q_in)
        islands.append(Island(source, node, quantize, q_in, float(source.args[1]), float(quantize.args[1]),
                              int(quantize.args[2]), int(quantize.args[3]), bounds or INT8, bounds is not None))
    return islands, violations


def each_island(graph: Graph, targets: set):
    """The islands around ops in `targets`, each found again after the one before was replaced: an
    island's output quantize can be the next island's input (Swin: two LayerNorms back to back), and
    replacing it erases that node."""
    while True:
        islands, _ = find_islands(graph, targets)
        if not islands:
            return
        yield islands[0]


def replace_island(graph: Graph, island: Island, target, args: tuple) -> torch.fx.Node:
    """Insert `target(*args)` in place of the island; the dequantize stays only if something else uses it."""
    with graph.fx.inserting_before(island.quantize):
        node = graph.fx.call_function(target, args)
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "val"):
        source = island.quantize if key == "val" else island.op
        if key in source.meta:
            node.meta[key] = source.meta[key]
    island.quantize.replace_all_uses_with(node)
    graph.fx.erase_node(island.quantize)
    graph.fx.erase_node(island.op)
    if not island.dequantize.users:
        graph.fx.erase_node(island.dequantize)
    return node


def record(graph: Graph, entry: dict) -> None:
    """Append one per-layer line to graph.meta['hwact_nonlinear'] (what each pass chose)."""
    graph.meta.setdefault("hwact_nonlinear", []).append(entry)
