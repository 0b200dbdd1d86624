"""Float islands left by fold-quant-scales, and the pass skeleton that replaces each by one integer op.

fold-quant-scales leaves every op it cannot lower (GELU, softmax, LayerNorm) as exactly

    q_in → hwact.dequantize(q_in, S_in) → <one aten op> → hwact.quantize(y, S_out, qmin, qmax) → q_out

`find_islands` returns those around the given aten ops (and, for an op of that kind that is not in
such an island, a violation naming it); `replace_island` swaps the three nodes for one call of an
integer op taking (q_in, S_in, S_out, ..., qmin, qmax, ...). The codes q_in can take, [qmin_in, qmax_in],
are the output bounds its producing hwact op declares (hwact.ir.ops.output_bounds), followed through
ops that move codes unchanged; a hwact op that declares none is an error, an aten producer (or a graph
input) leaves them unknown: int8 is assumed and the island says so (in_bounds_known False).

`IslandPass` is the skeleton of shift-gelu, lambda-shift-gelu, shiftmax and i-layernorm: check() lists
the ops outside an island and the islands the integer op cannot take (the subclass's `guard`);
__call__ replaces every island by the op call the subclass's `lower` builds and records one line per
layer in graph.meta['hwact_nonlinear'].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx

from hwact.errors import PreconditionError
from hwact.ir import int_nonlinear_ops  # noqa: F401  (registers the hwact integer non-linear ops)
from hwact.ir import int_ops  # noqa: F401
from hwact.ir.graph import Graph, module_path, op_name
from hwact.ir.ops import OP_SPECS, op_args, output_bounds
from hwact.passes.base import Pass
from hwact.passes.fold_quant_scales import SHAPE_OPS
from hwact.passes.lowerable import INT8_CONDITIONS, INT8_LOWERABLE

hw = torch.ops.hwact
aten = torch.ops.aten
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

    @property
    def input_range(self) -> tuple[float, float]:
        """The real values the input codes span: S_in · (qmin_in, qmax_in)."""
        return self.in_bounds[0] * self.in_scale, self.in_bounds[1] * self.in_scale


def input_bounds(node: torch.fx.Node) -> tuple[int, int] | None:
    """(qmin, qmax) of the integer tensor `node`, declared by the hwact op that produced it (through shape
    ops, ops declared `codes_of` and ReLU's clamp(q, 0)); None when an aten op or no op produced it."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function":
        if node.target in SHAPE_OPS:
            node = node.args[0]
        elif node.target is aten.clamp.default:
            inner = input_bounds(node.args[0])
            low = node.args[1] if len(node.args) > 1 and node.args[1] is not None else None
            if inner is None:
                return None
            return (max(inner[0], low) if low is not None else inner[0]), inner[1]
        elif node.target in OP_SPECS:
            codes_of = OP_SPECS[node.target].codes_of
            if not codes_of:
                return output_bounds(node)
            node = getattr(op_args(node), codes_of)
        else:
            return None
    return None


def describe(node) -> str:
    """'name (op, module.path)' of a node, for error lines."""
    if not isinstance(node, torch.fx.Node):
        return repr(node)
    what = op_name(node) if node.op == "call_function" else node.op
    path = module_path(node)
    return f"{node.name} ({what}{', ' + path if path else ''})"


def _computes_in_float(node: torch.fx.Node) -> bool:
    """A node left in float by fold-quant-scales: a float-valued call of anything but a hwact op (the
    dequantize of an island is hwact's), a float placeholder or a float constant."""
    value = node.meta.get("val")
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return False
    if node.op == "call_function":
        return not (isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "hwact")
    return node.op in ("placeholder", "get_attr")


def _float_origin(node: torch.fx.Node) -> torch.fx.Node:
    """Walk back from `node` through float nodes to the first one on that path whose inputs are not float
    nodes left by fold-quant-scales (integer codes, token ids, nothing): where the float path starts."""
    seen = set()
    while node.op == "call_function" and node not in seen:
        seen.add(node)
        earlier = [a for a in node.all_input_nodes if _computes_in_float(a) and a.op == "call_function"]
        if not earlier:
            return node
        node = earlier[0]
    return node


def _why_float(node: torch.fx.Node) -> str:
    """What is known about why fold-quant-scales left `node` (where a float path starts) in float; empty
    when nothing is."""
    if node.op != "call_function":
        return ""
    name = op_name(node)
    if name not in INT8_LOWERABLE:
        return f"no pass lowers {name} to integers"
    lowered_from = [a for a in node.all_input_nodes if a.op == "call_function" and not _computes_in_float(a)]
    if not lowered_from:
        return f"{INT8_LOWERABLE[name]} lowers {name} only when an input is integer codes, and none is"
    condition = INT8_CONDITIONS.get(name)
    return f"{INT8_LOWERABLE[name]} lowers {name} only {condition}" if condition else ""


def _not_lowered(node: torch.fx.Node, source) -> str:
    """The violation for an op whose input fold-quant-scales did not turn into a dequantize of integer codes."""
    if not isinstance(source, torch.fx.Node):
        return f"{node.name} ({op_name(node)}): its input {source!r} is not a tensor fold-quant-scales lowered"
    line = f"{node.name} ({op_name(node)}): its input comes from {describe(source)}, which was not lowered to integers"
    origin = _float_origin(source) if source.op == "call_function" else source
    if origin is not source:
        line += f"; the float path starts at {describe(origin)}"
    why = _why_float(origin)
    return line + (f" ({why})" if why else "")


def find_islands(graph: Graph, targets: set) -> tuple[list[Island], list[str]]:
    """The islands around ops in `targets`, and one violation line per such op not inside an island: it
    says "run fold-quant-scales first" only when that pass has not run (graph.meta has no
    "hwact_integer"); after it, the line names the node still in float that feeds the op, where that float
    path starts, and why it was not lowered when that is known (hwact.passes.lowerable)."""
    islands, violations = [], []
    folded = "hwact_integer" in graph.meta
    for node in graph.call_nodes():
        if node.target not in targets:
            continue
        source = node.args[0] if node.args else None
        users = list(node.users)
        if not (isinstance(source, torch.fx.Node) and source.target is hw.dequantize.default):
            violations.append(_not_lowered(node, source) if folded else
                              f"{node.name} ({op_name(node)}): its input is not hwact.dequantize — "
                              "run fold-quant-scales first")
            continue
        if len(users) != 1 or users[0].target is not hw.quantize.default or op_args(users[0]).x is not node:
            violations.append(f"{node.name} ({op_name(node)}): its output goes to "
                              f"{', '.join(describe(u) for u in users) or 'nothing'}, not to one hwact.quantize"
                              if folded else f"{node.name} ({op_name(node)}): its output is not one "
                              "hwact.quantize — run fold-quant-scales first")
            continue
        quantize, dequantize = op_args(users[0]), op_args(source)
        bounds = input_bounds(dequantize.q)
        islands.append(Island(source, node, users[0], dequantize.q, float(dequantize.scale), float(quantize.scale),
                              int(quantize.qmin), int(quantize.qmax), bounds or INT8, bounds is not None))
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


class IslandPass(Pass):
    """A pass that replaces every float island around `ops` by one integer op (module docstring)."""

    ops: ClassVar[set] = set()      # the aten ops inside the islands

    def guard(self, graph: Graph, island: Island) -> None:
        """Raise PreconditionError when the integer op cannot take `island` (its own overflow guards)."""

    def lower(self, graph: Graph, island: Island) -> tuple[object, tuple, dict]:
        """(the integer op, its arguments, what to record for this layer) that replace `island`."""
        raise NotImplementedError

    def _named(self, island: Island, exc: PreconditionError) -> PreconditionError:
        """`exc` (e.g. hwact.ir.int_ops.dyadic's, which knows no node) with this pass and the island named."""
        return PreconditionError(f"{self.name}: {describe(island.op)}: {exc.message}", hint=exc.hint)

    def check(self, graph: Graph) -> list[str]:
        islands, violations = find_islands(graph, self.ops)
        for island in islands:
            try:
                self.guard(graph, island)
            except PreconditionError as exc:
                message = exc.message.removeprefix(f"{island.name}: ")
                violations.append(f"{describe(island.op)}: {message}")
        return violations

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        replaced = 0
        for island in each_island(graph, self.ops):
            try:
                target, args, details = self.lower(graph, island)
            except PreconditionError as exc:
                raise self._named(island, exc) from None
            replace_island(graph, island, target, args)
            graph.meta.setdefault("hwact_nonlinear", []).append(  # what the pass chose, per layer
                {"pass": self.name, "node": island.name, "module": island.module, **details,
                 "input_range": island.input_range, "input_bounds_known": island.in_bounds_known})
            replaced += 1
        if replaced:
            graph.recompile()
        return graph, replaced
