"""Conversion flow for delta models (see hwact/flows.py for the contract). Filled in by its issue."""

NAME = "delta"
TARGETS: tuple[str, ...] = ()


def matches(graph) -> bool:
    return False


def convert(graph, target, outdir, options) -> dict:  # pragma: no cover - placeholder
    raise NotImplementedError
