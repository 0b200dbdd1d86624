"""Pass contract, registry and recipes.

A pass is a small object with a kebab-case `name`, a docstring that states its math and shows a
before/after graph snippet, declared `preconditions` (text shown to users), a `check(graph)` that
returns the violations of those preconditions (one string per node, naming it and the reason), and
`__call__(graph) -> (graph, number_changed)`. Passes may mutate the graph they are given.

`tolerance` declares a pass as numerically exact up to float rounding: the pass manager fails
verification when the max abs error exceeds it. Lossy passes (an activation swap) leave it None and
their error is only reported.

Every module in hwact/passes/ is imported by `all_passes()`, so adding a pass is adding a file with a
class decorated by `@register`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import ClassVar

from hwact.errors import InputError
from hwact.ir.graph import Graph

_REGISTRY: dict[str, type["Pass"]] = {}

# Named lists of passes. Options (e.g. only/skip, helu_alpha) are given to every pass that takes them.
RECIPES: dict[str, list[str]] = {
    "relu": ["gelu-to-relu", "fold-bn", "cleanup"],
    "helu": ["gelu-to-helu", "fold-bn", "cleanup"],
    "fold-bn": ["fold-bn", "cleanup"],
}


class Pass:
    name: ClassVar[str] = ""
    preconditions: ClassVar[tuple[str, ...]] = ()
    tolerance: ClassVar[float | None] = None
    note: str = ""   # set by a run that has something to say besides its count (shown in the report)

    def check(self, graph: Graph) -> list[str]:
        """Violations of the preconditions, one line per offending node; empty when they hold."""
        return []

    def __call__(self, graph: Graph) -> tuple[Graph, int]:  # pragma: no cover - interface
        raise NotImplementedError


def register(cls: type[Pass]) -> type[Pass]:
    if not cls.name or cls.name != cls.name.lower() or " " in cls.name or "_" in cls.name:
        raise ValueError(f"pass name must be kebab-case: {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def all_passes() -> dict[str, type[Pass]]:
    package = importlib.import_module("hwact.passes")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "manager"):
            importlib.import_module(f"hwact.passes.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def option_names(name: str) -> set[str]:
    """The options the constructor of the registered pass `name` accepts."""
    return set(inspect.signature(all_passes()[name].__init__).parameters) - {"self"}


def make_pass(name: str, options: dict) -> Pass:
    """Instantiate pass `name`, handing it the options its constructor accepts."""
    registry = all_passes()
    if name not in registry:
        raise InputError(f"unknown pass '{name}'", hint="known passes: " + ", ".join(registry))
    accepted = option_names(name)
    return registry[name](**{k: v for k, v in options.items() if k in accepted and v is not None})


def resolve(passes: str | None, recipe: str | None) -> list[str]:
    """The pass names asked for by `--passes a,b` or `--recipe NAME` (not both)."""
    if passes and recipe:
        raise InputError("give either --passes or --recipe, not both")
    if recipe:
        all_passes()  # recipes may be added by pass modules
        if recipe not in RECIPES:
            raise InputError(f"unknown recipe '{recipe}'", hint="known recipes: " + ", ".join(sorted(RECIPES)))
        return list(RECIPES[recipe])
    names = [p.strip() for p in (passes or "").split(",") if p.strip()]
    registry = all_passes()
    for name in names:
        if name not in registry:
            raise InputError(f"unknown pass '{name}'", hint="known passes: " + ", ".join(registry))
    return names
