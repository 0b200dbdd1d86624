"""Pass manager: run passes in order and verify each against its input graph.

After every pass the new graph and the graph it was given are run on the same calibration batches and
compared on all floating-point outputs:
    max_abs_err = max |y' − y|        mean_abs_err = mean |y' − y|
    cosine      = <y', y> / (|y'|·|y|)  (outputs flattened per run; 1.0 when y' = y exactly)
    top1_agreement = share of samples whose argmax class is unchanged (when the first output is (N, C>1))
A pass with a declared `tolerance` that exceeds it fails with an error naming it and the passes before it.
When the reference outputs are all zero (or one constant) on the calibration batches, one warning line
goes to stderr (every cosine is then meaningless) and into the first record's details.
Every error raised while a pass checks, runs or is verified names the pass (and, for an op that fails
while the graph runs, e.g. a requantization multiplier no int32 dyadic holds, the node).
A pass that changed only metadata (calibrate's ranges: the same module, generated code and tensors, none
modified in place) computes what its input computed: its outputs are taken to be the previous ones instead
of running the graph again (the record is the same, the time is saved).
The outputs of the last verification are handed back (Reference) with the state of the graph that gave
them: a backend verifying its artifacts against the final graph on the same batches reads them instead of
running the graph again, for as long as the graph is still that computation (Reference.runs_of).
Calibration batches are random (seeded) by default, or come from a user .npz whose arrays are named after
the model inputs (or `x` for a single-input model). A pass whose constructor takes `calibration_batches`
(e.g. one that collects activation ranges) receives these same batches.
"""

from __future__ import annotations

import copy
import itertools
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hwact.errors import InputError, PreconditionError, VerificationError
from hwact.ir import activations
from hwact.ir.graph import Graph, InputSpec, first_line, module_path, op_name
# run_outputs: re-exported (tests/passes, benchmarks/bench_cle.py)
from hwact.ir.metrics import (Outputs, collect, compare, degenerate, nonfinite_batch, output_runs,
                              require_finite_reference, run_outputs)
from hwact.npz import REAL, Npz, open_npz
from hwact.passes.base import all_passes, make_pass, option_names
from hwact.passes.recipes import POSTCONDITIONS


@dataclass
class PassRecord:
    name: str
    changed: int
    max_abs_err: float
    mean_abs_err: float
    cosine: float
    top1_agreement: float | None
    seconds: float
    note: str = ""
    details: dict = field(default_factory=dict)   # what the pass published in graph.meta (its figures)

    def as_dict(self) -> dict:
        return asdict(self)


def random_batches(inputs: list[InputSpec], samples: int = 16, batch: int = 8, seed: int = 0,
                   fixed_batch: int | None = None) -> list[tuple]:
    """Seeded random inputs; a graph traced at one batch size (`fixed_batch`) gets only full batches of it."""
    generator = torch.Generator().manual_seed(seed)
    if fixed_batch:
        return [tuple(spec.random(fixed_batch, generator) for spec in inputs)
                for _ in range(max(1, samples // fixed_batch))]
    return [tuple(spec.random(min(batch, samples - start), generator) for spec in inputs)
            for start in range(0, samples, batch)]


def load_calibration(path: str, inputs: list[InputSpec], batch: int = 8, limit: int | None = None,
                     fixed_batch: int | None = None) -> list[tuple]:
    """Batches of user calibration data from an .npz: only the first `limit` samples are read (hwact.npz)."""
    with open_npz(path) as archive:
        return list(iter_calibration(archive, inputs, batch, limit, fixed_batch))


def calibration_arrays(archive: Npz, inputs: list[InputSpec]) -> tuple[list[str], int]:
    """The array feeding each input (named after it, or `x` for a single input) and the number of samples
    they all have, checked from the .npy headers alone."""
    path, keys = archive.path, []
    for i, spec in enumerate(inputs):
        key = spec.name if spec.name in archive else ("x" if i == 0 and len(inputs) == 1 and "x" in archive else None)
        if key is None:
            raise InputError(f"{path}: no array named '{spec.name}'", hint=f"arrays found: {', '.join(archive.files) or 'none'}")
        shape = archive.info(key).shape
        if len(shape) != len(spec.shape) or tuple(shape[1:]) != tuple(spec.shape[1:]):
            raise InputError(f"{path}: array '{key}' has shape {tuple(shape)}, the model expects "
                             f"(N, {', '.join(map(str, spec.shape[1:]))})")
        if shape[0] == 0:
            raise InputError(f"{path}: array '{key}' is empty")
        keys.append(key)
    return keys, min(archive.info(key).shape[0] for key in keys)


def iter_calibration(archive: Npz, inputs: list[InputSpec], batch: int = 8, limit: int | None = None,
                     fixed_batch: int | None = None) -> Iterator[tuple]:
    """Calibration batches read from `archive` as they are used (memory: one batch per input)."""
    keys, count = calibration_arrays(archive, inputs)
    if limit:
        count = min(count, limit)
    if fixed_batch:
        if count < fixed_batch:
            raise InputError(f"{archive.path}: {count} samples, but the model was traced at a fixed batch of {fixed_batch}")
        batch, count = fixed_batch, count - count % fixed_batch
    kinds = [REAL + "b" if spec.dtype == torch.bool else REAL for spec in inputs]
    columns = [archive.rows(key, batch, count, kind) for key, kind in zip(keys, kinds)]
    for parts in zip(*columns):
        for key, part in zip(keys, parts):
            if part.dtype.kind == "f" and not np.isfinite(part).all():
                raise InputError(f"{archive.path}: array '{key}' holds NaN or infinite values")
        yield tuple(torch.from_numpy(part).to(spec.dtype) for part, spec in zip(parts, inputs))


def _shown(violations: list[str]) -> str:
    """Five violations in full, then every other one by its first word (the node name): none left out."""
    rest = [v.split(" ", 1)[0].rstrip(":") for v in violations[5:]]
    return "; ".join(violations[:5]) + (f"; and {len(rest)} more: {', '.join(rest)}" if rest else "")


def check_site_globs(graph: Graph, names: list[str], options: dict) -> None:
    """The only/skip globs must reach a pass that takes them and each match a GELU site of `graph`."""
    only, skip = tuple(options.get("only") or ()), tuple(options.get("skip") or ())
    if not only and not skip:
        return
    if not any("only" in option_names(name) for name in names):
        takers = [name for name in all_passes() if "only" in option_names(name)]
        raise InputError(f"--only/--skip choose the sites of {', '.join(takers)}; none of them runs here "
                         f"(passes: {', '.join(names) or 'none'})", hint=f"run {' or '.join(takers)}, or drop --only/--skip")
    activations.require_matches(activations.gelu_sites(graph), only, skip)


def _failing_node(graph: Graph, batches: list[tuple]) -> torch.fx.Node | None:
    """The node whose evaluation raises a PreconditionError on `batches` (run again node by node)."""
    current: list[torch.fx.Node] = []

    class Locator(torch.fx.Interpreter):
        def run_node(self, node):
            current[:] = [node]
            return super().run_node(node)

    try:
        with torch.no_grad():
            for batch in batches:
                Locator(graph.module).run(*batch)
    except PreconditionError:
        return current[0] if current else None
    return None


Runs = list[list[torch.Tensor]]   # per calibration batch, the tensor outputs of one run (pytree leaves)


def _outputs(graph: Graph, batches: list[tuple], where: str) -> tuple[Runs, Outputs]:
    """The graph's tensor outputs on every batch (as hwact.ir.metrics.run_outputs takes them) and their
    Outputs; a PreconditionError an op raises while running (hwact.ir.int_ops.dyadic's knows no node) names
    `where` (the pass) and the node that raised it."""
    try:
        runs = output_runs(graph, batches)
        return runs, collect(runs)
    except PreconditionError as exc:
        node = _failing_node(graph, batches)
        at = "" if node is None else \
            f" at {node.name} ({op_name(node)}{', ' + module_path(node) if module_path(node) else ''})"
        raise PreconditionError(f"{where}: the graph fails to run{at}: {exc.message}", hint=exc.hint) from None


def _state(graph: Graph):
    """What running `graph` depends on: its module, the generated code and every tensor it reads (held
    weakly, with its storage and in-place version counter); None when that cannot be told (a tensor with
    no version counter, such as an inference tensor)."""
    module = graph.module
    try:
        codes = tuple(m.code for m in module.modules() if isinstance(m, torch.fx.GraphModule))
        tensors = dict(itertools.chain(module.named_parameters(remove_duplicate=False),
                                       module.named_buffers(remove_duplicate=False)))
        for node in graph.fx.nodes:
            if node.op == "get_attr":
                value = module
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                if isinstance(value, torch.Tensor):
                    tensors[node.target] = value
        return module, codes, {name: (weakref.ref(t), t.data_ptr(), t._version) for name, t in tensors.items()}
    except (RuntimeError, AttributeError, TypeError):
        return None


def _same_computation(before, graph: Graph) -> bool:
    """Whether `graph` is still the one `before` (_state) described: same module, code and tensors, none
    replaced or modified in place. Then its outputs are those it gave before."""
    after = _state(graph)
    if before is None or after is None or before[0] is not after[0] or before[1] != after[1] \
            or before[2].keys() != after[2].keys():
        return False
    return all(ref() is not None and ref() is after[2][name][0]() and (ptr, version) == after[2][name][1:]
               for name, (ref, ptr, version) in before[2].items())


@dataclass
class Reference:
    """The outputs of the pass manager's last verification: per calibration batch, the tensor outputs of
    the graph (`runs`), the batches they were computed on and the state (_state) of the graph that gave them."""
    runs: Runs
    batches: list[tuple]
    state: object

    def runs_of(self, graph: Graph, batches: list[tuple]) -> Runs | None:
        """The runs, when `graph` on `batches` is still the computation that gave them (the same batches, and
        module, code and tensors unchanged, none modified in place); None when that cannot be told."""
        return self.runs if batches is self.batches and _same_computation(self.state, graph) else None


def _warn(message: str) -> None:
    print(f"hwact: warning: {message}", file=sys.stderr)


def run_passes(graph: Graph, names: list[str], options: dict, batches: list[tuple],
               log=lambda message: None, postconditions: tuple[str, ...] = (),
               warn=_warn) -> tuple[Graph, list[PassRecord]]:
    """Run `names` in order on `graph` (mutated), verifying each, then check the `postconditions` (names
    in hwact.passes.recipes.POSTCONDITIONS) on the result; returns the graph and one record per pass.
    `warn(line)` gets the one warning about degenerate reference outputs (stderr by default)."""
    graph, records, _ = run_verified(graph, names, options, batches, log, postconditions, warn)
    return graph, records


def run_verified(graph: Graph, names: list[str], options: dict, batches: list[tuple],
                 log=lambda message: None, postconditions: tuple[str, ...] = (),
                 warn=_warn) -> tuple[Graph, list[PassRecord], Reference]:
    """run_passes, and the Reference: the final graph's outputs on `batches` from the last verification."""
    records: list[PassRecord] = []
    check_site_globs(graph, names, options)
    try:
        runs, before_outputs = _outputs(graph, batches, "the graph given to the passes")
    except PreconditionError:
        raise
    except Exception as exc:  # e.g. token ids beyond the embedding table
        raise InputError(f"the model rejects the calibration inputs ({first_line(exc)})",
                         hint="check --input-shape (e.g. a sequence longer than the position table) and the "
                              "--calib arrays' values (token ids must be below the vocabulary size)") from exc
    reference = Reference(runs, batches, _state(graph))
    require_finite_reference(before_outputs, batches)
    flat = degenerate(before_outputs) if names else None
    warning = None
    if flat is not None:
        warning = (f"the model's outputs are {flat} on the calibration data: cosine is meaningless; "
                   "check the weights/calibration")
        warn(warning)
    for index, name in enumerate(names):
        done = ", ".join(names[:index]) or "none"
        where = f"pass {name} (after: {done})"
        the_pass = make_pass(name, {**options, "calibration_batches": batches})
        violations = the_pass.check(graph)
        if violations:
            stated = " and ".join(the_pass.preconditions)
            if "hwact_integer" in graph.meta:  # it ran: the violations say what it left in float
                stated = stated.replace(" (run fold-quant-scales first)", "")
            raise PreconditionError(f"{where}: precondition '{stated}' fails at {_shown(violations)}")
        start = time.perf_counter()
        meta_before = {k: copy.copy(v) for k, v in graph.meta.items()}
        state_before = _state(graph)
        try:
            graph, changed = the_pass(graph)
        except PreconditionError as exc:  # a pass's own error line may lack its name (or be prefixed by it)
            raise PreconditionError(f"{where}: {exc.message.removeprefix(name + ': ')}", hint=exc.hint) from None
        details = {k: v for k, v in graph.meta.items() if k not in meta_before or meta_before[k] != v}
        seconds = time.perf_counter() - start
        if not changed:
            record = PassRecord(name, 0, 0.0, 0.0, 1.0, 1.0, round(seconds, 4),
                                "; ".join(filter(None, ["no change: nothing matched", the_pass.note])))
        else:
            # a pass that declares it only annotates (calibrate), and left module, code and tensors as they
            # were: nothing to run again (declared, because a write through .data escapes the version check)
            same = the_pass.annotates_only and _same_computation(state_before, graph)
            if same:
                after_outputs = before_outputs
            else:
                runs, after_outputs = _outputs(graph, batches, where)
                reference = Reference(runs, batches, _state(graph))
            broken = nonfinite_batch(after_outputs)
            if broken is not None:
                raise VerificationError(f"{where} made the outputs NaN/Inf on calibration "
                                        f"batch {broken + 1} of {len(batches)} (they were finite before it)")
            metrics = compare(before_outputs, after_outputs)
            record = PassRecord(name, changed, **metrics, seconds=round(time.perf_counter() - start, 4),
                                note=the_pass.note)
            if the_pass.tolerance is not None and not metrics["max_abs_err"] <= the_pass.tolerance:  # NaN fails
                raise VerificationError(f"{where} changed outputs by {metrics['max_abs_err']:.3g}, "
                                        f"over its tolerance {the_pass.tolerance:g}")
            before_outputs = after_outputs
        record.details = details
        if warning is not None and not records:
            record.details = {**details, "warning": warning}
        records.append(record)
        log(record)
    check_postconditions(graph, names, postconditions)
    return graph, records, reference


def check_postconditions(graph: Graph, names: list[str], postconditions: tuple[str, ...]) -> None:
    """What a recipe promises of its final graph; the error names every violating node (as preconditions)."""
    for condition in postconditions:
        violations = POSTCONDITIONS[condition](graph)
        if violations:
            raise PreconditionError(f"postcondition '{condition}' fails after passes {', '.join(names)}: "
                                    + _shown(violations))
