"""hwact's op library: ops ATen lacks, registered with torch.library under the `hwact` namespace.

Convention: each family lives in hwact/ir/<family>_ops.py and
  * defines its ops with `@hwact_op("<name>", bounds=...)` (torch.library.custom_op("hwact::<name>")
    plus the op's declaration below) and a `register_fake` (so torch.export keeps each as one node);
  * implements the op *once*, in exact integer arithmetic (that implementation is the semantics every
    backend is tested bit-exact against);
  * registers its ONNX translation (an onnxscript function) with `@onnx_translation(torch.ops.hwact.x.default)`.

What an op declares (OP_SPECS), read by passes and backends instead of positions in node.args:
  * its argument names, in order: those of its Python signature (= its torch schema), so
    `op_args(node).scale` is the argument named `scale` whether the node holds it in args or kwargs;
  * the value bounds of its integer output: `bounds=(-128, 127)` (fixed), `bounds=("qmin", "qmax")`
    (the arguments that hold them), or `codes_of="q"` (the op passes on codes of its argument q
    unchanged, so its bounds are q's). An op that declares none has no integer output, and
    `output_bounds` refuses it: bounds are never assumed.

`load_all_ops()` imports every such module; loaders and exporters call it before they touch a graph
that may hold hwact ops (a .pt2 archive with hwact ops cannot be loaded before its ops exist).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
import torch.fx

from hwact.errors import PreconditionError

ONNX_TRANSLATIONS: dict[object, Callable] = {}


def onnx_translation(op) -> Callable[[Callable], Callable]:
    """Decorator: `fn` (an onnxscript function) is how `op` is written into ONNX."""

    def decorate(fn: Callable) -> Callable:
        ONNX_TRANSLATIONS[op] = fn
        return fn

    return decorate


@dataclass(frozen=True)
class OpSpec:
    """What a hwact op declares next to its definition (module docstring)."""

    names: tuple[str, ...]                                 # its arguments, in order
    defaults: dict[str, object]                            # the values of arguments a call may leave out
    bounds: tuple[int | str, int | str] | None = None      # output value range: ints or argument names
    codes_of: str | None = None                            # the argument whose codes it passes on unchanged


OP_SPECS: dict[torch._ops.OpOverload, OpSpec] = {}


def hwact_op(name: str, *, bounds: tuple[int | str, int | str] | None = None, codes_of: str | None = None):
    """Decorator: define `fn` as the op hwact::<name> (torch.library.custom_op, no mutated arguments) and
    declare its argument names and output bounds in OP_SPECS."""

    def decorate(fn: Callable):
        op = torch.library.custom_op(f"hwact::{name}", mutates_args=())(fn)
        overload = getattr(torch.ops.hwact, name).default
        names = tuple(argument.name for argument in overload._schema.arguments)
        defaults = {a.name: a.default_value for a in overload._schema.arguments if a.has_default_value()}
        named = [b for b in bounds or () if isinstance(b, str)] + ([codes_of] if codes_of else [])
        unknown = [n for n in named if n not in names]
        if unknown or (bounds is not None and codes_of is not None):
            raise ValueError(f"hwact::{name}: bounds {bounds!r} / codes_of {codes_of!r} do not name its "
                             f"arguments {names} (or both are given)")
        OP_SPECS[overload] = OpSpec(names, defaults, bounds, codes_of)
        return op

    return decorate


def op_spec(target) -> OpSpec:
    """The declaration of hwact op `target`; TypeError for anything else (an aten op, a function)."""
    spec = OP_SPECS.get(target)
    if spec is None:
        raise TypeError(f"{target} is not a declared hwact op (hwact.ir.ops.hwact_op); only hwact ops "
                        "have named arguments")
    return spec


def bind_args(target, args: tuple, kwargs: dict | None = None) -> SimpleNamespace:
    """The arguments of a call of hwact op `target` by name (values as given: fx nodes or constants; the
    declared default of an argument the call leaves out)."""
    spec = op_spec(target)
    values = {**spec.defaults, **dict(zip(spec.names, args)), **(kwargs or {})}
    if len(args) > len(spec.names) or set(values) != set(spec.names):
        raise TypeError(f"{target}: arguments {args!r} {kwargs!r} do not match its declared names {spec.names}")
    return SimpleNamespace(**values)


def op_args(node: torch.fx.Node) -> SimpleNamespace:
    """The arguments of hwact op node `node` by name: `op_args(node).scale`, `.qmin`."""
    if node.op != "call_function":
        raise TypeError(f"node {node.name} ({node.op}) is not a call of a hwact op")
    try:
        return bind_args(node.target, node.args, node.kwargs)
    except TypeError as exc:
        raise TypeError(f"node {node.name}: {exc}") from None


def set_op_args(node: torch.fx.Node, **values) -> None:
    """Replace the named arguments of hwact op node `node`; each stays where it was (args or kwargs)."""
    names = op_spec(node.target).names
    args, kwargs = list(node.args), dict(node.kwargs)
    for name, value in values.items():
        if name not in names:
            raise TypeError(f"node {node.name}: {node.target} has no argument '{name}' (it has {names})")
        if names.index(name) < len(args):
            args[names.index(name)] = value
        else:
            kwargs[name] = value
    node.args, node.kwargs = tuple(args), kwargs


def output_bounds(node: torch.fx.Node) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes hwact op node `node` produces, as its op declares them.
    PreconditionError for an op that declares no bounds (a float output, or codes_of: ask its input)."""
    spec = op_spec(node.target)
    if spec.bounds is None:
        passes_on = f"; it passes on the codes of its argument '{spec.codes_of}'" if spec.codes_of else ""
        raise PreconditionError(f"node {node.name}: {node.target} declares no integer output bounds{passes_on}")
    args = vars(op_args(node))
    low, high = (args[b] if isinstance(b, str) else b for b in spec.bounds)
    return int(low), int(high)


def load_all_ops() -> None:
    package = importlib.import_module("hwact.ir")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_ops"):
            importlib.import_module(f"hwact.ir.{info.name}")
