"""calibrate: record the value range of every floating tensor the graph computes.

The float graph is run on the calibration batches, node by node (hwact.ir.record). Every
placeholder and every call_function node whose output is a floating tensor gets a streaming observer
(hwact.quant.observers; memory does not grow with the number of batches) and, at the end,

    node.meta["hwact_range"] = (lo, hi)          python floats, real units

    calib_method = minmax      lo = min x, hi = max x over all batches
                 = percentile  lo, hi = the 0.01-th and 99.99-th percentiles (histogram, ±1 bin)
                 = mse         the observed range clipped to ±c, c minimising E[(x − Q_c(x))²] for int8
                               (uint8 when the tensor is never negative)

±inf values of intermediate tensors that come from a constant (a -inf attention mask, e.g. after
run_decompositions, flows into the scores before softmax: a node with no tensor input, one fed an
infinite value, or one that takes an infinite number, like decompose-sdpa's where(mask, scores, -inf)) are left out of their node's range and counted in
graph.meta["hwact_calibration"]["infinite_values"] (node name -> count). An infinity a node makes from
finite inputs (float overflow), NaN anywhere and any non-finite calibration input are refused.

The graph itself is not changed (outputs are bit-identical: tolerance 0); the pass returns the number of
nodes annotated. graph.meta["hwact_calibration"] records the method, the number of samples and every
range (node name -> [lo, hi]); the pass manager puts it in the pass's report.json details.

Before:                                     After (same nodes, meta added):
    %x = placeholder                            %x     meta hwact_range=(-2.9, 3.1)
    %fc1 = aten.linear(%x, %w1, %b1)            %fc1   meta hwact_range=(-4.2, 5.0)
    %relu = aten.relu(%fc1)                     %relu  meta hwact_range=(0.0, 5.0)
"""

from __future__ import annotations

import math

import torch
import torch.fx

from hwact.errors import InputError
from hwact.ir.graph import Graph
from hwact.ir.record import Recorder
from hwact.passes.base import Pass, register
from hwact.quant.observers import METHODS, all_finite, make_observer

RANGE_KEY = "hwact_range"


def float_nodes(graph: Graph) -> list[torch.fx.Node]:
    """Placeholders and call_function nodes whose traced value (meta "val") is a floating tensor."""
    nodes = []
    for node in graph.fx.nodes:
        if node.op not in ("placeholder", "call_function"):
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            nodes.append(node)
    return nodes


@register
class Calibrate(Pass):
    name = "calibrate"
    takes = ("calibration_batches", "calib_method")
    preconditions = ("calibration batches are given",)
    tolerance = 0.0
    annotates_only = True

    def __init__(self, calibration_batches: list[tuple] | None = None, calib_method: str = "minmax"):
        if calib_method not in METHODS:
            raise InputError(f"unknown calibration method '{calib_method}'", hint="known: " + ", ".join(METHODS))
        self.batches = list(calibration_batches or [])
        self.method = calib_method

    def check(self, graph: Graph) -> list[str]:
        return [] if self.batches else ["graph: no calibration batches were given"]

    def _validate(self, graph: Graph) -> None:
        if not self.batches:
            raise InputError("calibrate: no calibration batches", hint="give --calib FILE.npz or random batches")
        for index, batch in enumerate(self.batches):
            if not isinstance(batch, (tuple, list)) or len(batch) != len(graph.inputs):
                count = len(batch) if isinstance(batch, (tuple, list)) else 1
                raise InputError(f"calibrate: batch {index} has {count} inputs, the model takes {len(graph.inputs)}")
            for tensor, spec in zip(batch, graph.inputs):
                if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape[1:]) != tuple(spec.shape[1:]):
                    shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                    raise InputError(f"calibrate: batch {index} input '{spec.name}' has shape {shape}, "
                                     f"the model expects (N, {', '.join(map(str, spec.shape[1:]))})")
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise InputError(f"calibrate: batch {index} input '{spec.name}' holds NaN or infinite values")

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        self._validate(graph)
        observers: dict[torch.fx.Node, object] = {}

        def observe(node: torch.fx.Node, value) -> None:
            """Every placeholder/call_function output that is a floating tensor goes to its node's observer."""
            if node.op not in ("placeholder", "call_function") or not isinstance(value, torch.Tensor) \
                    or not value.is_floating_point():
                return
            if node not in observers:
                observers[node] = make_observer(self.method)
            constant_infinity = node.op == "call_function" and not all_finite(value) and _inherits(node)
            try:
                observers[node].observe(value, ignore_infinite=constant_infinity)
            except InputError as exc:
                raise InputError(f"calibrate: node {node.name}: {exc.message}", hint=exc.hint) from None

        def _inherits(node: torch.fx.Node) -> bool:
            """The node's infinities come from a constant: it has no tensor input, an input is infinite, or
            it takes an infinite number (where(mask, scores, -inf): decompose-sdpa's masked fill)."""
            args, kwargs = recorder.inputs(node)
            leaves = torch.utils._pytree.tree_leaves((args, kwargs))
            tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
            literal = any(isinstance(v, float) and math.isinf(v) for v in leaves)
            return not tensors or literal or any(t.is_floating_point() and bool(torch.isinf(t).any()) for t in tensors)

        recorder = Recorder(graph.module, observe)
        recorder.run_batches(self.batches)
        samples = sum(batch[0].shape[0] if batch and batch[0].dim() else 1 for batch in self.batches)
        ranges = {}
        for node, observer in observers.items():
            if observer.count == 0:
                continue
            node.meta[RANGE_KEY] = ranges[node.name] = observer.range()
        annotated = len(ranges)
        graph.meta["hwact_calibration"] = {"method": self.method, "samples": samples, "nodes": annotated,
                                           "ranges": {name: list(r) for name, r in ranges.items()},
                                           "infinite_values": {node.name: observer.infinite
                                                               for node, observer in observers.items()
                                                               if observer.infinite}}
        return graph, annotated
