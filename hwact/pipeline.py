"""The one conversion pipeline behind `hwact convert`, `hwact export-onnx` and `hwact demo`:

    graph (loaded and traced once)
      -> kind = model_kind(graph)                        tensor | logic | delta   (hwact/ir/kinds.py)
      -> deployment = target.deployment(kind)            default recipe + backend chain (the target's TOML)
      -> recipe = --passes | --recipe | the default      (hwact/passes/recipes.py)
      -> every option the user set must be taken by a pass of the recipe, a backend of the chain or the
         recovery step (--recover kd); otherwise it is refused, never ignored
      -> the recipe's passes through the pass manager, each verified on the calibration inputs, then
         the recipe's postconditions
      -> --recover kd: distillation from the graph as loaded
      -> each backend's check (nothing is written when one fails)
      -> into a temporary folder: each backend emits its artifacts and verifies them against the graph
         (on the outputs of the pass manager's last verification while the graph is still that one)
      -> report.json / report.md; the folder is renamed into place (hwact/outputs.py)
The pipeline never branches on a target's name or a model's kind: the target's TOML decides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from hwact import heap
from hwact.backends.base import Backend, EmitContext, all_backends, get_backend
from hwact.backends.onnx_backend import OnnxBackend
from hwact.errors import InputError
from hwact.ir import activations
from hwact.ir.graph import Graph, check_finite
from hwact.ir.kinds import model_kind
from hwact.ir.summary import float_compute_nodes, op_census
from hwact.load import Loaded
from hwact.npz import INTEGER, open_npz
from hwact.outputs import atomic_dir, atomic_file
from hwact.passes.base import all_passes, option_names
from hwact.passes.lowerable import lowering_advice
from hwact.passes.manager import (Reference, calibration_arrays, iter_calibration, load_calibration, random_batches,
                                  run_verified)
from hwact.passes.recipes import Recipe, resolve
from hwact.report import versions, write_report
from hwact.targets import Target

RECOVERY_OPTIONS = ("recover", "data", "epochs", "schedule", "temperature", "ce_weight")


@dataclass(frozen=True)
class ConvertOptions:
    """What `hwact convert` was asked to do besides MODEL, TARGET and OUTDIR (None / (): not given)."""
    passes: str | None = None
    recipe: str | None = None
    calib: str | None = None
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    helu_alpha: float | None = None
    calib_method: str | None = None
    delta_threshold: float | None = None
    key_interval: int | None = None
    pipeline_every: int | None = None
    recover: str | None = None
    data: str | None = None
    epochs: int | None = None
    schedule: str | None = None
    temperature: float | None = None
    ce_weight: float | None = None
    tune_trials: int | None = None          # the tvm backend: MetaSchedule trials (0: untuned)

    def given(self) -> dict:
        """The options the user set, by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) not in (None, (), "")}

    def check(self) -> None:
        """Checks on the options alone, before any model is loaded."""
        if self.recover and not self.data:
            raise InputError("--recover kd needs --data (digits, an .npz or an image folder)")
        if not self.recover and any(getattr(self, k) is not None for k in RECOVERY_OPTIONS[1:]):
            raise InputError("--data, --epochs, --schedule, --temperature and --ce-weight belong to --recover kd")
        if (self.temperature is not None and not self.temperature > 0) or (
                self.ce_weight is not None and not self.ce_weight >= 0):
            raise InputError("--temperature must be > 0 and --ce-weight >= 0")
        if self.delta_threshold is not None and self.delta_threshold < 0:
            raise InputError(f"--delta-threshold must be >= 0, got {self.delta_threshold}")


@dataclass
class Plan:
    """What one convert will do: the model's kind, the recipe and the backends with their options."""
    kind: str
    recipe: Recipe
    backends: list[Backend]
    backend_options: dict[str, dict]


def plan(graph: Graph, options: ConvertOptions, target: Target, source: str) -> Plan:
    kind = model_kind(graph)
    deployment = target.deployment(kind, source)
    recipe = resolve(options.passes, options.recipe, deployment.recipe)
    backends, backend_options = [], {}
    for name in deployment.backends:
        backend = get_backend(name)
        unknown = sorted(set(target.backend_options.get(name, {})) - set(backend.options))
        if unknown:
            raise InputError(f"target {target.name}: [backend.{name}] sets {', '.join(unknown)}, which the {name} "
                             f"backend does not take", hint=f"its options: {', '.join(backend.options) or 'none'}")
        settings = {**backend.options, **target.backend_options.get(name, {})}
        settings.update({k: v for k, v in options.given().items() if k in backend.options})
        backends.append(backend())
        backend_options[name] = settings
    _refuse_unused_options(options, recipe, backends, kind, source)
    return Plan(kind, recipe, backends, backend_options)


def _refuse_unused_options(options: ConvertOptions, recipe: Recipe, backends: list[Backend], kind: str,
                           source: str) -> None:
    """An option that no pass of the recipe, no backend of the chain and no recovery step takes is an
    error: the convert would otherwise exit 0 having done nothing of it."""
    taken = {k for name in recipe.passes for k in option_names(name)}
    taken |= {k for backend in backends for k in backend.options}
    if kind == "tensor":
        taken |= set(RECOVERY_OPTIONS)
    for key in options.given():
        if key in taken or key in ("passes", "recipe", "calib", "only", "skip"):  # only/skip: the manager
            continue
        takers = [name for name in all_passes() if key in option_names(name)]
        takers += [name for name, backend in all_backends().items() if key in backend.options]
        flag = "--" + key.replace("_", "-")
        ran = ", ".join(recipe.passes) or "none"
        where = (f"{' and '.join(takers)} {'does' if len(takers) == 1 else 'do'} not run here" if takers
                 else "accuracy recovery (--recover kd) fine-tunes tensor models only" if key in RECOVERY_OPTIONS
                 else "nothing takes it")
        raise InputError(f"{flag} does not apply to {source}, a {kind} model: {where} (passes: {ran}; backends: "
                         f"{', '.join(b.name for b in backends)})",
                         hint=f"it is for {' or '.join(takers)}" if takers else "drop it")


def calibration(graph: Graph, calib: str | None, samples: int = 16, batch: int = 4) -> list[tuple]:
    """Verification inputs: batches of 4 keep the activations of a 224x224 ViT-S/16 forward at ~40 MB."""
    if calib:
        return load_calibration(calib, graph.inputs, batch=batch, limit=max(samples, 64), fixed_batch=graph.fixed_batch)
    return random_batches(graph.inputs, samples, batch, fixed_batch=graph.fixed_batch)


def labelled_accuracy(graph: Graph, calib: str | None, batch: int = 64) -> float | None:
    """Top-1 accuracy on the calibration file's `y` labels, when it has them (inputs read a batch at a time)."""
    if not calib:
        return None
    with open_npz(calib) as archive:
        if "y" not in archive:
            return None
        _, samples = calibration_arrays(archive, graph.inputs)
        info = archive.info("y")
        if info.shape != (samples,) or info.dtype.kind not in INTEGER:
            raise InputError(f"{calib}: labels 'y' of shape {info.shape} and dtype {info.dtype}; expected one "
                             f"integer class per sample, shape ({samples},)")
        labels = torch.from_numpy(archive.read("y", kinds=INTEGER)).long()
        low, high = int(labels.min()), int(labels.max())
        correct = seen = 0
        with torch.no_grad():
            for args in iter_calibration(archive, graph.inputs, batch, fixed_batch=graph.fixed_batch):
                predicted = graph.module(*args)
                predicted = predicted[0] if isinstance(predicted, (tuple, list)) else predicted
                if predicted.dim() != 2 or low < 0 or high >= predicted.shape[1]:
                    raise InputError(f"{calib}: labels 'y' span {low}..{high}, the model's output "
                                     f"{tuple(predicted.shape)} is not (N, classes) over that range")
                truth = labels[seen:seen + predicted.shape[0]]
                correct += int((predicted.argmax(dim=1) == truth).sum())
                seen += predicted.shape[0]
    return correct / seen if seen else None


def run_recipe(graph: Graph, recipe: Recipe, options: ConvertOptions, batches: list[tuple],
               log) -> tuple[Graph, dict, Reference]:
    """The recipe's passes (verified) and postconditions, then --recover kd; returns the graph, the report
    body (op census and activation sites before/after, pass records, accuracy, recovery) and the pass
    manager's Reference (the outputs of its last verification, for the backends' checks)."""
    if options.recover and any(n in recipe.passes for n in ("calibrate", "fold-quant-scales")):
        integer = [n for n in recipe.passes if n in ("calibrate", "fold-quant-scales")]
        raise InputError(f"--recover {options.recover} fine-tunes a float graph; the recipe lowers it to "
                         f"integers ({', '.join(integer)}), which has no gradients",
                         hint="recover with --recipe relu|helu first, then convert that output with the integer recipe")
    body: dict = {"ops_before": op_census(graph),
                  "activations_before": [s.describe() for s in activations.find_sites(graph)]}
    accuracy_before = labelled_accuracy(graph, options.calib)
    teacher = graph.copy() if options.recover else None
    pass_options = {k: v for k, v in options.given().items() if k not in ("passes", "recipe", "calib")}
    graph, records, reference = run_verified(graph, list(recipe.passes), pass_options, batches,
                                             log=lambda r: log(pass_line(r)), postconditions=recipe.postconditions)
    body["passes"] = [r.as_dict() for r in records]
    if recipe.postconditions:
        body["postconditions"] = list(recipe.postconditions)
    if teacher is not None:
        from hwact.train.recover import recover_accuracy

        graph, body["recovery"] = recover_accuracy(graph, teacher, options.data, pass_options, log)
    body["ops_after"] = op_census(graph)
    body["activations_after"] = [s.describe() for s in activations.find_sites(graph)]
    if accuracy_before is not None:
        body["accuracy"] = {"before": accuracy_before, "after": labelled_accuracy(graph, options.calib)}
    if "hwact_integer" in graph.meta:
        body["integer"] = {"float_nodes": [n.name for n in float_compute_nodes(graph)],
                           "layers": graph.meta["hwact_integer"],
                           "nonlinear": graph.meta.get("hwact_nonlinear", [])}
    if "hwact_cle" in graph.meta:
        body["cle"] = graph.meta["hwact_cle"]
    return graph, body, reference


def convert(loaded: Loaded, options: ConvertOptions, target: Target, outdir: Path, force: bool, log=print) -> dict:
    """`hwact convert`: see the module docstring. Returns the report (also written as report.json)."""
    graph = loaded.graph
    check_finite(graph, loaded.source)
    the_plan = plan(graph, options, target, loaded.source)
    batches = calibration(graph, options.calib)
    # the graph as loaded, for the backends that compare against it (a deep copy: only when one does)
    original = graph.copy() if any(backend.reads_original for backend in the_plan.backends) else None
    graph, body, reference = run_recipe(graph, the_plan.recipe, options, batches, log)
    skipped = [backend.name for backend in the_plan.backends if not backend.applies(graph)]
    the_plan = dataclasses.replace(the_plan, backends=[b for b in the_plan.backends if b.name not in skipped])
    problems = [f"{backend.name}: {line}" for backend in the_plan.backends for line in backend.check(graph)]
    if problems:
        raise InputError(f"{loaded.source}: target {target.name} cannot take this graph: " + "; ".join(problems[:5])
                         + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
    with atomic_dir(outdir, force, inputs=(loaded.source, options.calib, options.data)) as tmp:
        body["model"] = the_plan.kind
        body["backends"] = [backend.name for backend in the_plan.backends]
        if skipped:
            body["backends_not_applicable"] = skipped
        artifacts: list[str] = []
        sections: dict = {}
        for backend in the_plan.backends:
            context = EmitContext(target, the_plan.backend_options[backend.name], batches, original, log, sections,
                                  {r["name"]: r for r in body["passes"]})
            section = backend.emit(graph, tmp, context)
            artifacts += section.pop("artifacts")
            context.reference = reference.runs_of(graph, batches)   # None once anything changed the graph
            section.update(backend.verify(graph, tmp, context))
            sections[backend.section or backend.name] = section
            heap.return_freed_memory()   # the next backend starts from what is live (hwact/heap.py)
        body.update(sections)
        body["target_support"] = target.support_report(graph, lowering_advice)  # inspect's advice
        report = {"input": loaded.describe(), "target": target.name, **body, "versions": versions()}
        report["artifacts"] = sorted(set(artifacts) | {"report.json", "report.md"})
        write_report(tmp, report)
    return report


def export_onnx(loaded: Loaded, options: ConvertOptions, output: Path, force: bool, log=print) -> dict:
    """`hwact export-onnx`: the recipe's passes, then the onnx backend alone, into one verified file
    (verified before it takes the output's place: a failed check leaves the old file, or none)."""
    graph = loaded.graph
    check_finite(graph, loaded.source)
    recipe = resolve(options.passes, options.recipe)
    batches = calibration(graph, options.calib)
    graph, _, reference = run_recipe(graph, recipe, options, batches, log)
    with atomic_file(output, force, inputs=(loaded.source, options.calib)) as staged:
        backend = OnnxBackend(staged.name, shown=str(output))
        context = EmitContext(None, {}, batches, graph, log)
        section = backend.emit(graph, staged.parent, context)
        context.reference = reference.runs_of(graph, batches)
        section.update(backend.verify(graph, staged.parent, context))
    return section


def pass_line(record) -> str:
    if not record.changed:
        return f"  {record.name:16s} {record.note}"
    top1 = "" if record.top1_agreement is None else f"  top1 {record.top1_agreement:.3f}"
    note = f"  ({record.note})" if record.note else ""
    return (f"  {record.name:16s} changed {record.changed:4d}  max|err| {record.max_abs_err:.3g}  "
            f"cos {record.cosine:.6f}{top1}  {record.seconds:.2f}s{note}")
