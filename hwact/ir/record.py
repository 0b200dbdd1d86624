"""Run a graph node by node and hand every node's value to a callback (calibration ranges, channel
statistics, quantization error means, output dtypes): the one torch.fx.Interpreter those share.

    record(module, batches, callback)      for each batch, for each node n in order:
                                               value = n evaluated;  callback(n, value)

Inside the callback, `Recorder.inputs(n)` gives the values n was called with (its args and kwargs, still
held by the interpreter at that moment). Runs under torch.no_grad(); the graph is not changed.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.fx

Callback = Callable[[torch.fx.Node, object], None]


class Recorder(torch.fx.Interpreter):
    """A torch.fx.Interpreter that calls `callback(node, value)` after each node it runs."""

    def __init__(self, module: torch.fx.GraphModule, callback: Callback):
        super().__init__(module)
        self.callback = callback

    def run_node(self, node: torch.fx.Node):
        value = super().run_node(node)
        self.callback(node, value)
        return value

    def inputs(self, node: torch.fx.Node) -> tuple[tuple, dict]:
        """(args, kwargs) of `node` as values; valid inside the callback for that node."""
        return self.fetch_args_kwargs_from_env(node)

    def run_batches(self, batches: Iterable[tuple]) -> None:
        with torch.no_grad():
            for batch in batches:
                self.run(*batch)


def record(module: torch.fx.GraphModule, batches: Iterable[tuple], callback: Callback) -> None:
    """Run `module` on every batch, calling `callback(node, value)` after each node."""
    Recorder(module, callback).run_batches(batches)
