"""Recipes: the one table of named pass lists, with the postconditions each must establish.

A target names its default recipe per kind of model (hwact/targets/*.toml); `--recipe NAME` overrides
it and `--passes a,b` replaces it with a list of one's own, which may name postconditions too (they run
after the passes, wherever they are listed). A postcondition is a check on the final graph, run and reported by the pass manager:

    integer-only   no node computes in floating point between the input quantize and the output
                   dequantize (hwact.ir.summary.float_compute_nodes): what the int8 recipes promise
"""

from __future__ import annotations

from dataclasses import dataclass

from hwact.errors import InputError
from hwact.ir.graph import Graph, module_path, op_name
from hwact.ir.summary import float_compute_nodes
from hwact.passes.base import all_passes


@dataclass(frozen=True)
class Recipe:
    passes: tuple[str, ...]
    postconditions: tuple[str, ...] = ()


# explicit-padding first (a conv with string padding gets numbers), fold-bn before canonicalize turns a conv1d into
# a conv2d (a BatchNorm1d after it would then sit behind a squeeze)
INTEGER_PREPARE = ("explicit-padding", "fold-bn", "canonicalize", "decompose-sdpa", "fold-layer-scale", "cleanup")

RECIPES: dict[str, Recipe] = {
    "none": Recipe(()),
    "relu": Recipe(("gelu-to-relu", "fold-bn", "cleanup")),
    "helu": Recipe(("gelu-to-helu", "fold-bn", "cleanup")),
    "fold-bn": Recipe(("fold-bn", "cleanup")),
    # canonicalize + decompose-sdpa + explicit-padding bring exported models (Hugging Face: eval dropout,
    # SDPA, string padding, addmm, conv1d, in-place ops) to the forms the lowering knows; cleanup folds
    # constant subgraphs (Swin's relative-position bias, position ids, causal masks) into constants,
    # which fold-quant-scales then quantizes offline
    "int8-relu": Recipe(INTEGER_PREPARE[:3] + ("gelu-to-relu",) + INTEGER_PREPARE[3:] + ("cle", "calibrate",
                        "fold-quant-scales", "lut-activations", "i-layernorm", "shiftmax"), ("integer-only",)),
    "int8-shiftgelu": Recipe(INTEGER_PREPARE + ("calibrate", "fold-quant-scales", "shift-gelu",
                                                "lut-activations", "i-layernorm", "shiftmax"), ("integer-only",)),
    # for NPUs without 64-bit arithmetic (Arm Ethos-U via TOSA): GELU and other activations as per-code tables,
    # LayerNorm and softmax as the int32 ops of hwact/ir/int_npu_ops.py
    "int8-npu": Recipe(INTEGER_PREPARE + ("calibrate", "fold-quant-scales", "lut-gelu", "lut-activations",
                                          "npu-layernorm", "npu-softmax"), ("integer-only",)),
    "logic": Recipe(("lower-logic",)),
    "delta": Recipe(("lower-delta",)),
}


def integer_only(graph: Graph) -> list[str]:
    """The integer-only postcondition: one line per node that still computes in float."""
    return [f"{node.name} ({op_name(node)}{', ' + module_path(node) if module_path(node) else ''}) computes in float"
            for node in float_compute_nodes(graph)]


POSTCONDITIONS = {"integer-only": integer_only}


def resolve(passes: str | None, recipe: str | None, default: str = "none") -> Recipe:
    """The recipe asked for by `--passes a,b`, `--recipe NAME` (not both), or the target's default."""
    if passes and recipe:
        raise InputError("give either --passes or --recipe, not both")
    if passes is not None and not recipe:   # a postcondition may be named among the passes; it runs last
        names = tuple(p.strip() for p in passes.split(",") if p.strip())
        registry = all_passes()
        for name in names:
            if name not in registry and name not in POSTCONDITIONS:
                raise InputError(f"unknown pass '{name}'", hint="known passes: " + ", ".join(registry)
                                 + "; postconditions: " + ", ".join(POSTCONDITIONS))
        return Recipe(tuple(n for n in names if n not in POSTCONDITIONS),
                      tuple(n for n in names if n in POSTCONDITIONS))
    name = recipe or default
    if name not in RECIPES:
        raise InputError(f"unknown recipe '{name}'", hint="known recipes: " + ", ".join(sorted(RECIPES)))
    return RECIPES[name]
