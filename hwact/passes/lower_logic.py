"""lower-logic: discretize a logic-gate network and simplify its netlist (ALGORITHMS.md §5).

Discretization: each neuron becomes its argmax gate (softmax16) or its thresholded truth table (iwp);
`discretize(LogicNet)` gives the unsimplified Netlist (train-logic already exports that netlist inside
one hwact::logic_netlist op). `simplify(netlist)` then rewrites it without changing any output bit:

  * every signal is a literal: a constant 0/1, or (node, negated);
  * a gate's truth table T[x][y] (T[x][y] = (op >> (3 - 2x - y)) & 1) absorbs its operands' negations
    (T'[x][y] = T[1-x][y] for a negated A) and constants (T restricted to the constant row/column), and a
    gate reading the same node twice becomes a one-input function f(x) = T[x][x];
  * constant propagation: a function that does not depend on its inputs is a constant literal;
  * pass-through / NOT removal: a function equal to one input or its negation is that literal (no gate),
    so chains of NOTs cancel (double negation);
  * canonical form: operands ordered (u < v, transposing T when swapped), polarity chosen so that
    T[0][0] = 0 (a gate with T[0][0] = 1 is kept as the negated literal of its complement);
  * duplicate-gate merging: gates with the same canonical (T, u, v) are one gate (this covers commuted
    operands of symmetric gates and complemented duplicates such as AND / NAND of the same pair);
  * outputs: a negated literal of a gate becomes the complement gate (15 - op) on the same operands, of an
    input a NOT gate; a constant a gate 0 or 15; dead gates (not reachable from the outputs) are dropped.

Before (graph): %bits = aten.to(aten.flatten(aten.gt(%x, %thresholds)), uint8)
                %counts = hwact.logic_netlist(%bits, %ops, %a, %b, %outputs, 10)      # 4000 gates
After:          %counts = hwact.logic_netlist(%bits, %ops_s, %a_s, %b_s, %outputs_s, 10) # fewer gates, same counts
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from hwact.errors import InputError, PreconditionError
from hwact.ir.graph import Graph
from hwact.ir.logic_ops import LOGIC_NETLIST, netlist_of_node
from hwact.ir.netlist import Netlist
from hwact.ir.ops import op_args, set_op_args
from hwact.passes.base import Pass, register

# ops that keep values binary when their input is binary, and ops that produce binary values
_SHAPE_OPS = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
              "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.default", "aten.permute.default",
              "aten.transpose.int", "aten.clone.default", "aten.contiguous.default", "aten.to.dtype",
              "aten._to_copy.default", "aten.slice.Tensor", "aten.cat.default", "aten.alias.default",
              "aten.select.int", "aten.expand.default"}
_BINARY_OPS = {"aten.gt.Tensor", "aten.gt.Scalar", "aten.ge.Tensor", "aten.ge.Scalar", "aten.lt.Tensor",
               "aten.lt.Scalar", "aten.le.Tensor", "aten.le.Scalar", "aten.eq.Tensor", "aten.eq.Scalar",
               "aten.ne.Tensor", "aten.ne.Scalar", "aten.logical_and.default", "aten.logical_or.default",
               "aten.logical_not.default", "aten.logical_xor.default"}


def discretize(model) -> Netlist:
    """A trained LogicNet -> its unsimplified netlist (argmax gates / thresholded truth tables)."""
    return model.to_netlist()


def _table(op: int) -> list[list[int]]:
    return [[(op >> (3 - 2 * x - y)) & 1 for y in (0, 1)] for x in (0, 1)]


def _op(table) -> int:
    return sum(table[x][y] << (3 - 2 * x - y) for x in (0, 1) for y in (0, 1))


def simplify(netlist: Netlist) -> tuple[Netlist, dict]:
    """Equivalent, smaller netlist (same inputs, same outputs bit for bit) and counts of what changed."""
    n_in = netlist.num_inputs
    # literal: ("c", value) or ("n", node_id_in_new_netlist, negated)
    literal: list[tuple] = [("n", i, False) for i in range(n_in)]
    new_ops: list[int] = []
    new_a: list[int] = []
    new_b: list[int] = []
    canonical: dict[tuple[int, int, int], int] = {}
    stats = {"constant": 0, "pass_through": 0, "merged": 0}

    for g in range(netlist.num_gates):
        table = _table(int(netlist.ops[g]))
        la, lb = literal[netlist.a[g]], literal[netlist.b[g]]
        if la[0] == "n" and la[2]:
            table = [table[1], table[0]]
        if lb[0] == "n" and lb[2]:
            table = [[row[1], row[0]] for row in table]
        result = _reduce(table, la, lb)
        if result[0] == "c":
            stats["constant"] += 1
            literal.append(result)
            continue
        if result[0] == "lit":
            stats["pass_through"] += 1
            literal.append(result[1])
            continue
        _, table, u, v = result
        negated = table[0][0] == 1
        if negated:
            table = [[1 - t for t in row] for row in table]
        key = (_op(table), u, v)
        if key in canonical:
            stats["merged"] += 1
        else:
            canonical[key] = n_in + len(new_ops)
            new_ops.append(key[0])
            new_a.append(u)
            new_b.append(v)
        literal.append(("n", canonical[key], negated))

    # materialize the outputs
    extra: dict[tuple, int] = {}
    outputs = []
    for node in netlist.outputs:
        lit = literal[node]
        if lit[0] == "n" and not lit[2]:
            outputs.append(lit[1])
            continue
        if lit[0] == "c":
            key = ("c", lit[1])
            gate = (15 if lit[1] else 0, 0, 0)
        elif lit[1] < n_in:
            key = ("not", lit[1])
            gate = (12, lit[1], lit[1])
        else:
            g = lit[1] - n_in
            key = ("not", lit[1])
            gate = (15 - new_ops[g], new_a[g], new_b[g])
        if key not in extra:
            if n_in == 0:
                raise InputError("netlist: a constant output needs at least one input node")
            extra[key] = n_in + len(new_ops)
            new_ops.append(gate[0])
            new_a.append(gate[1])
            new_b.append(gate[2])
        outputs.append(extra[key])

    simplified, dead = _drop_dead(Netlist(n_in, np.array(new_ops, np.uint8), np.array(new_a, np.int64),
                                          np.array(new_b, np.int64), np.array(outputs, np.int64),
                                          netlist.num_classes, netlist.tau))
    stats["dead"] = dead
    stats.update({"gates_before": netlist.num_gates, "gates_after": simplified.num_gates,
                  "depth_before": netlist.depth(), "depth_after": simplified.depth()})
    return simplified, stats


def _reduce(table, la, lb):
    """Apply constants / shared operands: ("c", v) | ("lit", literal) | ("gate", table, u, v)."""
    if la[0] == "c" and lb[0] == "c":
        return ("c", table[la[1]][lb[1]])
    if la[0] == "c":
        return _one_input([table[la[1]][0], table[la[1]][1]], lb[1])
    if lb[0] == "c":
        return _one_input([table[0][lb[1]], table[1][lb[1]]], la[1])
    u, v = la[1], lb[1]
    if u == v:
        return _one_input([table[0][0], table[1][1]], u)
    if table[0] == table[1]:  # independent of A
        return _one_input(table[0], v)
    if [row[0] for row in table] == [row[1] for row in table]:  # independent of B
        return _one_input([table[0][0], table[1][0]], u)
    if u > v:
        table = [[table[0][0], table[1][0]], [table[0][1], table[1][1]]]
        u, v = v, u
    return ("gate", table, u, v)


def _one_input(f: list[int], node: int):
    if f[0] == f[1]:
        return ("c", f[0])
    return ("lit", ("n", node, f[0] == 1))


def _drop_dead(netlist: Netlist) -> tuple[Netlist, int]:
    n_in = netlist.num_inputs
    live = np.zeros(netlist.num_nodes, dtype=bool)
    live[netlist.outputs] = True
    for g in range(netlist.num_gates - 1, -1, -1):
        if live[n_in + g]:
            live[netlist.a[g]] = True
            live[netlist.b[g]] = True
    live[:n_in] = True
    renumber = np.cumsum(live) - 1
    keep = live[n_in:]
    result = Netlist(n_in, netlist.ops[keep], renumber[netlist.a[keep]], renumber[netlist.b[keep]],
                     renumber[netlist.outputs], netlist.num_classes, netlist.tau, dict(netlist.meta))
    return result, int((~keep).sum())


# ------------------------------------------------------------------------------------------- the pass
def _op_name(node: torch.fx.Node) -> str:
    return str(node.target) if isinstance(node.target, torch._ops.OpOverload) else str(node.target)


def binary_source_violation(graph: Graph, node: torch.fx.Node) -> str | None:
    """Why the bits fed to a logic_netlist node may not be binary (None when they provably are, or the
    graph input is declared bool/uint8 with values < 2)."""
    pending = [op_args(node).bits]
    while pending:
        current = pending.pop()
        if not isinstance(current, torch.fx.Node):
            continue
        if current.op == "placeholder":
            spec = next((s for s in graph.inputs if s.name == current.name), None)
            val = current.meta.get("val")
            dtype = spec.dtype if spec is not None else getattr(val, "dtype", None)
            if dtype == torch.bool or (dtype is not None and not dtype.is_floating_point and spec is not None
                                       and (spec.high or 2) <= 2):
                continue
            return (f"node {node.name}: reads graph input '{current.name}' ({dtype}) directly; logic netlist "
                    "inputs must be binary (0/1)")
        if current.op != "call_function":
            return f"node {node.name}: its bits come from {current.op} {current.name}, not a binary computation"
        name = _op_name(current)
        if name in _BINARY_OPS:
            continue
        if name in _SHAPE_OPS:
            pending.extend(a for a in current.args if isinstance(a, torch.fx.Node) or isinstance(a, (list, tuple)))
            pending = [p for item in pending for p in (item if isinstance(item, (list, tuple)) else [item])]
            continue
        return (f"node {node.name}: its input bits come from {name} ({current.name}), which is not binary; "
                "logic netlist inputs must be 0/1 (threshold them, e.g. with a thermometer encoder)")
    return None


@register
class LowerLogic(Pass):
    """Simplify every hwact::logic_netlist node's netlist (see the module docstring for the math)."""

    name = "lower-logic"
    preconditions = ("every hwact::logic_netlist reads binary bits (comparisons, or a bool/0-1 integer input)",
                     "the netlist tensors are graph constants")
    tolerance = 0.0

    def __init__(self):
        self.stats: list[dict] = []

    def check(self, graph: Graph) -> list[str]:
        problems = []
        for node in graph.call_nodes():
            if node.target is LOGIC_NETLIST:
                problem = binary_source_violation(graph, node)
                if problem:
                    problems.append(problem)
        return problems

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        problems = self.check(graph)
        if problems:
            raise PreconditionError(problems[0], hint="feed the netlist 0/1 values (x > threshold) or a bool input")
        changed = 0
        self.stats = []
        for node in graph.call_nodes():
            if node.target is not LOGIC_NETLIST:
                continue
            args = op_args(node)
            bits_val = args.bits.meta.get("val") if isinstance(args.bits, torch.fx.Node) else None
            num_inputs = int(bits_val.shape[1]) if bits_val is not None else None
            ops_value = _constant(graph, args.ops)
            if num_inputs is None:
                raise PreconditionError(f"node {node.name}: unknown input bit count")
            netlist = netlist_of_node(graph.module, node, num_inputs)
            simplified, stats = simplify(netlist)
            stats["node"] = node.name
            self.stats.append(stats)
            node.meta["hwact_logic"] = stats
            with graph.fx.inserting_before(node):
                tensors = {}
                for label, array in (("ops", simplified.ops.astype(np.int64)), ("a", simplified.a),
                                     ("b", simplified.b), ("outputs", simplified.outputs)):
                    attr = f"{node.name}_{label}_simplified"
                    graph.module.register_buffer(attr, torch.as_tensor(array).to(ops_value.device))
                    tensors[label] = graph.fx.get_attr(attr)
            set_op_args(node, **tensors)
            changed += 1
        if changed:
            graph.recompile()
        graph.meta["lower_logic"] = self.stats
        return graph, changed


def _constant(graph: Graph, node) -> torch.Tensor:
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        raise PreconditionError(f"logic netlist tensor {node} is not a graph constant")
    value = graph.module
    for part in node.target.split("."):
        value = getattr(value, part)
    return value
