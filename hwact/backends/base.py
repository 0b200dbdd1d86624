"""Backend contract and registry.

A backend turns a graph (the model after its target's recipe) into artifacts in a folder. A target's
TOML names, per kind of model, the chain of backends that deploying to it means (hwact/targets/); the
pipeline (hwact/pipeline.py) runs them in order into one output folder:

    problems = backend.check(graph)                 # before anything is written: one line per node/reason
    section  = backend.emit(graph, outdir, context) # writes artifacts; returns its report section, which
                                                    # must list them under "artifacts" (paths in outdir)
    section |= backend.verify(graph, outdir, context)  # checks the artifacts against `graph` on the
                                                    # calibration inputs; raises VerificationError
    backend.bench(outdir, request)                  # optional: what `hwact bench OUTDIR` runs

`options` declares the backend's options with their defaults; a target sets them in a
`[backend.NAME]` table, and the CLI overrides the ones it exposes (e.g. --pipeline-every). Adding a
backend is one module in hwact/backends/ with a class decorated by `@register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from hwact.errors import UnsupportedError
from hwact.ir.graph import Graph
from hwact.registry import Registry

@dataclass
class EmitContext:
    """What a backend gets besides the graph: the target, its options, the calibration batches, the
    graph as loaded (before the recipe; None unless a backend of the chain reads_original), the report
    sections of the backends before it, each pass of the recipe (its record as in report.json), and the
    graph's outputs on the batches when the pipeline knows them (`reference`: per batch, the tensor leaves of
    its outputs, from the pass manager's last verification of this very graph; None: run the graph)."""
    target: Any
    options: dict
    batches: list[tuple]
    original: Graph | None
    log: Callable[[str], None] = print
    sections: dict = field(default_factory=dict)
    passes: dict = field(default_factory=dict)
    reference: list[list[Any]] | None = None


@dataclass
class BenchRequest:
    """`hwact bench OUTDIR` options a backend's runner may use."""
    stream: str | None = None
    threshold: float | None = None
    batch: int = 1
    iterations: int | None = None
    duration: float = 3.0
    threads: int = 0                 # 0: the runner's default
    compare: str | None = None       # a second model to time interleaved with it (an .onnx path)
    rpc: str | None = None           # HOST:PORT of a TVM RPC tracker (tvm folders: time on a remote device)
    key: str | None = None           # the device key to request from that tracker


class Backend:
    name: ClassVar[str] = ""
    section: ClassVar[str] = ""                 # report.json key of its section (default: name)
    options: ClassVar[dict[str, Any]] = {}      # option -> default
    reads_original: ClassVar[bool] = False      # uses context.original (the pipeline then keeps a copy)

    def applies(self, graph: Graph) -> bool:
        """Whether this backend of the chain deploys `graph` at all (the integer runtime: only graphs an
        int8 recipe made); the pipeline leaves out one that does not, and says so in the report."""
        return True

    def check(self, graph: Graph) -> list[str]:
        """What this backend cannot take, one line per node and reason; empty when it can."""
        return []

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def verify(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        return {}

    @classmethod
    def bench(cls, outdir: Path, request: BenchRequest) -> dict:
        raise UnsupportedError(f"{outdir}: the {cls.name} backend has no benchmark runner")


_REGISTRY = Registry("hwact.backends", "backend", skip=("base",))
register = _REGISTRY.register          # class decorator
all_backends = _REGISTRY.all           # name -> Backend class
get_backend = _REGISTRY.get            # InputError for an unknown name
