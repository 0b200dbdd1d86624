"""hwact's op library: ops ATen lacks, registered with torch.library under the `hwact` namespace.

Convention: each family lives in hwact/ir/<family>_ops.py and
  * defines its ops with `torch.library.custom_op("hwact::<name>", mutates_args=())` plus a
    `register_fake` (so torch.export keeps each as one node);
  * implements the op *once*, in exact integer arithmetic (that implementation is the semantics every
    backend is tested bit-exact against);
  * registers its ONNX translation (an onnxscript function) with `@onnx_translation(torch.ops.hwact.x.default)`.

`load_all_ops()` imports every such module; loaders and exporters call it before they touch a graph
that may hold hwact ops (a .pt2 archive with hwact ops cannot be loaded before its ops exist).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

ONNX_TRANSLATIONS: dict[object, Callable] = {}


def onnx_translation(op) -> Callable[[Callable], Callable]:
    """Decorator: `fn` (an onnxscript function) is how `op` is written into ONNX."""

    def decorate(fn: Callable) -> Callable:
        ONNX_TRANSLATIONS[op] = fn
        return fn

    return decorate


def load_all_ops() -> None:
    package = importlib.import_module("hwact.ir")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_ops"):
            importlib.import_module(f"hwact.ir.{info.name}")
