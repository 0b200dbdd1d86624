"""Conversion flows for graphs that carry hwact's own layer ops (logic-gate netlists, delta layers).

`hwact convert` asks each module in FLOW_MODULES whether it `matches(graph)`; the first that does
converts the graph instead of the generic pass+ONNX path. A flow module defines:

    NAME: str                                   # e.g. "logic"
    TARGETS: tuple[str, ...]                    # target names it accepts (hwact/targets/<name>.toml)
    def matches(graph: Graph) -> bool           # the graph holds this flow's hwact ops
    def convert(graph, target, outdir, options) -> dict
        # writes artifacts into `outdir` (a temporary folder renamed by the caller on success) and
        # returns a dict merged into report.json; it must contain "artifacts": [relative paths].
    def bench(outdir, options) -> dict           # optional: `hwact bench OUTDIR` on a folder it wrote;
        # options: stream (.npz path or None), threshold, batch, iterations, duration. Returns printable JSON.
`hwact convert` records the flow's NAME as "flow" in report.json, which is how `hwact bench` finds it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hwact.ir.graph import Graph

FLOW_MODULES = ("hwact.backends.logic_flow", "hwact.backends.delta_flow")


def find_flow(graph: Graph) -> ModuleType | None:
    for name in FLOW_MODULES:
        module = importlib.import_module(name)
        if module.matches(graph):
            return module
    return None
