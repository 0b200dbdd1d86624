"""Conversion flow for logic models (see hwact/flows.py for the contract). Filled in by its issue."""

NAME = "logic"
TARGETS: tuple[str, ...] = ()


def matches(graph) -> bool:
    return False


def convert(graph, target, outdir, options) -> dict:  # pragma: no cover - placeholder
    raise NotImplementedError
