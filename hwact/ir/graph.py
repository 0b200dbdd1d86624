"""The Graph every pass and backend works on.

A Graph is the *unlifted* module of a `torch.export` ExportedProgram: an ATen-level torch.fx
GraphModule whose parameters are `get_attr` nodes (so a pass can replace a weight by registering a
new attribute), plus the example inputs it was traced with and the names of those inputs.
`Graph.export()` re-exports it (with a dynamic batch dimension) whenever an ExportedProgram is
needed, e.g. for ONNX. Node metadata from torch.export (`nn_module_stack`, `val`) is kept, so every
node can be traced back to the module path that produced it.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx

from hwact.errors import InputError
from hwact.limits import MAX_INPUT_BYTES, check_bytes


@dataclass
class InputSpec:
    """One model input: name, shape (batch first) and dtype; `high` bounds random integer inputs."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    high: int | None = None

    def nbytes(self, batch: int) -> int:
        """Bytes of a batch of this input (a random bool input is drawn as int64 first)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size() + (8 if self.dtype == torch.bool else 0)
        return batch * math.prod(self.shape[1:]) * itemsize

    def random(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        check_input_bytes([self], batch)
        shape = (batch, *self.shape[1:])
        if self.dtype.is_floating_point:
            return torch.randn(shape, generator=generator, dtype=self.dtype)
        if self.dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).bool()
        return torch.randint(0, self.high or 2, shape, generator=generator, dtype=self.dtype)

    def describe(self) -> str:
        return "x".join(str(d) for d in self.shape) + ("" if self.dtype == torch.float32 else f":{str(self.dtype).removeprefix('torch.')}")


def check_input_bytes(inputs: list[InputSpec], batch: int) -> None:
    """Refuse (InputError) example inputs larger than hwact.limits.MAX_INPUT_BYTES before building them."""
    described = ", ".join(f"{spec.name} {spec.describe()}" for spec in inputs)
    check_bytes(f"the example inputs ({described}) at batch {batch}", sum(s.nbytes(batch) for s in inputs),
                MAX_INPUT_BYTES, hint="give a smaller --input-shape")


@dataclass
class Graph:
    module: torch.fx.GraphModule
    inputs: list[InputSpec]
    meta: dict = field(default_factory=dict)
    fixed_batch: int | None = None  # set when the traced graph only runs at one batch size

    # ----- running -------------------------------------------------------------------------
    def __call__(self, *args: torch.Tensor):
        with torch.no_grad():
            return self.module(*args)

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        batch = self.fixed_batch or batch
        check_input_bytes(self.inputs, batch)
        generator = torch.Generator().manual_seed(seed)
        return tuple(spec.random(batch, generator) for spec in self.inputs)

    def copy(self) -> "Graph":
        with warnings.catch_warnings():  # torch's own pytree specs warn about a deprecated isinstance when copied
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            module = copy.deepcopy(self.module)
        return Graph(module, list(self.inputs), dict(self.meta), self.fixed_batch)

    # ----- graph access --------------------------------------------------------------------
    @property
    def fx(self) -> torch.fx.Graph:
        return self.module.graph

    def call_nodes(self):
        return [n for n in self.module.graph.nodes if n.op == "call_function"]

    def recompile(self) -> None:
        self.module.graph.eliminate_dead_code()
        self.module.graph.lint()
        self.module.recompile()

    def export(self, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
        """Re-export to an ExportedProgram, batch dimension dynamic (traced at batch 2)."""
        args = self.example_inputs(batch=2)
        dynamic_shapes = None
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            dynamic_shapes = tuple({0: batch} for _ in args)
        if self.fixed_batch or not dynamic_batch:
            return torch.export.export(self.module, args)
        return torch.export.export(self.module, args, dynamic_shapes=dynamic_shapes)


def module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost nn.Module that produced `node` ('' for the top module)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    return _clean_path(path)


def module_class(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    cls = list(stack.values())[-1][1]
    return cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))


def _clean_path(path: str) -> str:
    # torch.export writes paths such as "L['self'].blocks[0].mlp" or "blocks.0.mlp"
    path = path.replace("L['self']", "").replace("['", ".").replace("']", "")
    path = path.replace("[", ".").replace("]", "")
    return path.strip(".")


def op_name(node: torch.fx.Node) -> str:
    """'aten.gelu.default' style name of a call_function node."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", str(target))


def trace(module: torch.nn.Module, inputs: list[InputSpec], source: str = "model") -> Graph:
    """torch.export `module` (in eval mode) with a dynamic batch; return its unlifted Graph."""
    module = module.eval()
    graph = Graph(module=None, inputs=inputs)  # type: ignore[arg-type]
    args = graph.example_inputs(batch=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        try:
            ep = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
        except Exception:
            ep = torch.export.export(module, args)
    except Exception as exc:
        raise InputError(f"{source}: torch.export could not trace the model with inputs "
                         f"{', '.join(s.describe() for s in inputs)}: {first_line(exc)}",
                         hint="check --input-shape") from exc
    return from_exported(ep, inputs)


def from_exported(ep: torch.export.ExportedProgram, inputs: list[InputSpec]) -> Graph:
    gm = ep.module()
    _drop_guard_calls(gm)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = placeholders[-len(inputs):] if inputs else []
    batch_dims = [n.meta["val"].shape[0] for n in user if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].dim()]
    fixed = next((int(d) for d in batch_dims if isinstance(d, int)), None)
    return Graph(module=gm, inputs=inputs, fixed_batch=fixed)


def _drop_guard_calls(gm: torch.fx.GraphModule) -> None:
    """ep.module() inserts a `_guards_fn` call that checks input shapes; passes must not see it."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    gm.recompile()


def check_finite(graph: Graph, source: str) -> None:
    """Raise InputError when a weight the graph reads (parameter, buffer or constant) holds NaN or ±Inf.

    Found here, up front, such a model would otherwise fail later as a puzzling verification mismatch."""
    bad = []
    for node in graph.fx.nodes:
        if node.op != "get_attr":
            continue
        value = graph.module
        for part in node.target.split("."):
            value = getattr(value, part, None)
        if (isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())
                and not bool(torch.isfinite(value).all())):
            bad.append(node.target)
    if bad:
        count = f"{len(bad)} weight{'s' if len(bad) > 1 else ''} hold{'' if len(bad) > 1 else 's'}"
        raise InputError(f"{source}: {count} NaN/Inf (e.g. {bad[0]})",
                         hint="the checkpoint is corrupt or was saved after training diverged")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
