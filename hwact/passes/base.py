"""Pass contract and registry.

A pass is a small object with a kebab-case `name`, a docstring that states its math and shows a
before/after graph snippet, declared `preconditions` (text shown to users), a `check(graph)` that
returns the violations of those preconditions (one string per node, naming it and the reason), and
`__call__(graph) -> (graph, number_changed)`. Passes may mutate the graph they are given.

`tolerance` declares a pass as numerically exact up to float rounding: the pass manager fails
verification when the max abs error exceeds it. Lossy passes (an activation swap) leave it None and
their error is only reported.

`takes` declares the options a pass reads (its constructor's keywords). Every module in hwact/passes/ is
imported by `all_passes()`, so adding a pass is adding a file with a class decorated by `@register`.
Recipes (named pass lists) are in hwact/passes/recipes.py.
"""

from __future__ import annotations

from typing import ClassVar

from hwact.ir.graph import Graph
from hwact.registry import Registry

class Pass:
    name: ClassVar[str] = ""
    preconditions: ClassVar[tuple[str, ...]] = ()
    tolerance: ClassVar[float | None] = None
    # the options the pass reads, named as hwact convert's options (hwact.pipeline.ConvertOptions) plus
    # `calibration_batches` (given by the pass manager); its constructor takes them as keywords
    takes: ClassVar[tuple[str, ...]] = ()
    # True for a pass that only adds metadata (calibrate): the manager then skips re-running the graph when
    # module, code and tensors are provably unchanged
    annotates_only: ClassVar[bool] = False
    note: str = ""   # set by a run that has something to say besides its count (shown in the report)

    def check(self, graph: Graph) -> list[str]:
        """Violations of the preconditions, one line per offending node; empty when they hold."""
        return []

    def __call__(self, graph: Graph) -> tuple[Graph, int]:  # pragma: no cover - interface
        raise NotImplementedError


_REGISTRY = Registry("hwact.passes", "pass", skip=("base", "manager", "recipes"))
register = _REGISTRY.register          # class decorator
all_passes = _REGISTRY.all             # name -> Pass class


def option_names(name: str) -> set[str]:
    """The options the registered pass `name` declares that it takes."""
    return set(all_passes()[name].takes)


def make_pass(name: str, options: dict) -> Pass:
    """Instantiate pass `name` with the options (of `options`) it declares; the others are not its."""
    cls = _REGISTRY.get(name)
    return cls(**{k: options[k] for k in cls.takes if options.get(k) is not None})
