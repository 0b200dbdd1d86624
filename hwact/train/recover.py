"""Accuracy recovery after an activation swap: distill the swapped student from the frozen original.

Two schedules:
  * all-at-once: every selected GELU site is swapped (ReLU or HeLU), then one distillation run.
  * staged (iterative, as in the GELU-less Swin recipe, ALGORITHMS.md §3): the sites are grouped into
    stages; for each stage in graph order: swap that stage's sites, distill, then go to the next. The
    student always keeps the weights learned so far; the teacher is always the original model.

Stages: a site's natural stage is its module path up to and including the first numeric component
(`blocks.3.mlp.act` -> `blocks.3`, `stages.1.0.mlp.act` -> `stages.1`, `layers.0.ffn.act` ->
`layers.0`), i.e. one transformer block for ViT/BERT, one stage for Swin and ConvNeXt.
`stages=N` merges consecutive natural stages into N groups; `stage_globs` names the groups explicitly
(one glob on module paths per group).

Accuracy is measured on the validation split after every step (original, swapped without tuning,
after each stage's swap and after its distillation): top-1 accuracy on labels when the data has them,
and top-1 agreement with the original model always.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hwact.errors import InputError
from hwact.ir import activations
from hwact.ir.graph import Graph
from hwact.passes.base import make_pass
from hwact.train import data as datasets
from hwact.train.distill import (TrainConfig, World, check_classifier, evaluate, init_world, predict, train,
                                 weights_digest)

SWAP_PASSES = {"relu": "gelu-to-relu", "helu": "gelu-to-helu"}
DEFAULT_HELU_ALPHA = 0.05
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Stage:
    name: str
    prefixes: list[str]
    nodes: tuple[str, ...]   # output node names of the GELU sites swapped in this stage

    def describe(self) -> dict:
        return {"stage": self.name, "sites": len(self.nodes)}


def natural_stage(module: str) -> str:
    """Module path up to and including its first numeric component ('' -> 'model')."""
    parts = module.split(".") if module else []
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return ".".join(parts[:-1]) or (module or "model")


def plan_stages(graph: Graph, only=(), skip=(), stages: int | None = None, stage_globs=()) -> list[Stage]:
    """Group the selected GELU sites of `graph` into swap stages (see the module docstring)."""
    from fnmatch import fnmatchcase

    sites = activations.gelu_sites(graph)
    activations.require_matches(sites, tuple(only), tuple(skip))
    sites = activations.select(sites, tuple(only), tuple(skip))
    if not sites:
        raise InputError("no GELU sites to swap in the model" + (" (after --only/--skip)" if only or skip else ""))
    if stage_globs:
        plan, claimed = [], set()
        for glob in stage_globs:
            chosen = [s for s in sites if s.output.name not in claimed and
                      (fnmatchcase(s.module, glob) or fnmatchcase(s.module, glob + ".*"))]
            if not chosen:
                raise InputError(f"--stage '{glob}' matches no remaining GELU site",
                                 hint="sites: " + ", ".join(s.module for s in sites))
            claimed.update(s.output.name for s in chosen)
            plan.append(Stage(glob, [glob], tuple(s.output.name for s in chosen)))
        rest = [s for s in sites if s.output.name not in claimed]
        if rest:
            plan.append(Stage("rest", sorted({natural_stage(s.module) for s in rest}),
                              tuple(s.output.name for s in rest)))
        return plan
    groups: dict[str, list] = {}
    for site in sites:
        groups.setdefault(natural_stage(site.module), []).append(site)
    keys = list(groups)
    if stages is not None:
        if stages < 1:
            raise InputError(f"--stages must be >= 1, got {stages}")
        count = min(stages, len(keys))
        bounds = [round(i * len(keys) / count) for i in range(count + 1)]
        merged = [keys[bounds[i]:bounds[i + 1]] for i in range(count)]
    else:
        merged = [[k] for k in keys]
    return [Stage(group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}", group,
                  tuple(s.output.name for k in group for s in groups[k])) for group in merged]


def swap(graph: Graph, kind: str, nodes: tuple[str, ...] | None, skip=(), only=(), helu_alpha: float | None = None) -> int:
    """Swap the named GELU sites (all selected ones when nodes is None) in place; returns how many."""
    name = SWAP_PASSES[kind]
    options = {"only": tuple(nodes) if nodes is not None else tuple(only), "skip": tuple(skip),
               "helu_alpha": helu_alpha if helu_alpha is not None else DEFAULT_HELU_ALPHA}
    the_pass = make_pass(name, options)
    _, changed = the_pass(graph)
    return changed


def prepare_data(data, input_shape, num_classes, val_fraction: float, split_seed: int):
    """(train, val) Datasets from a name/path, a Dataset (split here) or a ready (train, val) pair."""
    if isinstance(data, tuple):
        train_data, val_data = data
    else:
        dataset = data if isinstance(data, datasets.Dataset) else datasets.load_dataset(data)
        datasets.check_dataset(dataset, input_shape, num_classes)
        train_data, val_data = datasets.split(dataset, val_fraction, split_seed)
    for part in (train_data, val_data):
        datasets.check_dataset(part, input_shape, num_classes)
    return train_data, val_data


def config_from(options: dict) -> TrainConfig:
    keys = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: options[k] for k in keys if options.get(k) is not None})


def _metrics(module_or_graph, val, teacher_classes, world) -> dict:
    module = module_or_graph.module if isinstance(module_or_graph, Graph) else module_or_graph
    return evaluate(module, val, teacher_classes, world.device if world else None)


def _fmt(m: dict) -> str:
    acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.4f}"
    agree = "-" if m["teacher_agreement"] is None else f"{m['teacher_agreement']:.4f}"
    return f"accuracy {acc}  agreement {agree}"


def recover_accuracy(student: Graph, teacher: Graph, data, options: dict, log=print) -> tuple[Graph, dict]:
    """`hwact convert --recover kd` hook: distill the already-swapped `student` from `teacher` (all at once).

    With options["schedule"] == "staged", the student is rebuilt from the teacher and swapped stage by stage
    (options "swap": relu|helu, default helu if the student holds HeLU sites else relu).
    """
    schedule = options.get("schedule") or "all"
    if schedule == "staged":
        kind = options.get("swap") or ("helu" if any(s.form == "helu" for s in activations.find_sites(student))
                                       else "relu")
        return recover(teacher, kind, data, {**options, "schedule": "staged"}, log)
    return recover(teacher, None, data, {**options, "schedule": "all"}, log, student=student)


def recover(teacher: Graph, kind: str | None, data, options: dict, log=print, student: Graph | None = None,
            world: World | None = None, checkpoint_dir: Path | None = None, resume: bool = False) -> tuple[Graph, dict]:
    """Swap (kind relu|helu, or None when `student` is given already swapped; 'none' = plain training of the
    original with labels) and distill; returns the trained student and the report section."""
    started = time.perf_counter()
    world = world or init_world()
    config = config_from(options)
    torch.manual_seed(config.seed)
    schedule = options.get("schedule") or "staged"
    val_fraction = 0.2 if options.get("val_fraction") is None else float(options["val_fraction"])
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be in (0, 1), got {val_fraction}",
                         hint="early stopping needs a validation split")
    split_seed = options.get("split_seed", 0)
    input_shape = teacher.inputs[0].shape
    if len(teacher.inputs) != 1 or not teacher.inputs[0].dtype.is_floating_point:
        raise InputError("accuracy recovery supports models with one floating-point input (images/features); "
                         f"this model takes {', '.join(s.describe() for s in teacher.inputs)}")
    dataset = data
    if not isinstance(data, (tuple, datasets.Dataset)):
        dataset = datasets.load_dataset(data)
    probe = dataset[0] if isinstance(dataset, tuple) else dataset
    datasets.check_dataset(probe, input_shape, None)
    if config.ce_weight > 0 and probe.y is None:
        raise InputError(f"{probe.name}: --ce-weight {config.ce_weight:g} asks for cross-entropy, but the data has "
                         "no labels", hint="add a 'y' array, or drop --ce-weight for pure distillation")
    needs_classes = kind == "none" or (probe.y is not None and config.ce_weight > 0)
    num_classes = check_classifier(teacher, probe, needs_classes, probe.name)
    train_data, val_data = prepare_data(dataset, input_shape, num_classes, val_fraction, split_seed)
    if num_classes is None and train_data.y is not None:
        log("  note: the model has no (N, classes) output; labels are ignored (pure distillation)")
        train_data.y = val_data.y = None

    if kind == "none":
        teacher_for_kd = None
        plan = [Stage("train", [], ())]
        student = teacher
    else:
        teacher_for_kd = teacher
        for p in teacher.module.parameters():
            p.requires_grad_(False)
    teacher_classes = predict(teacher.module, val_data.x).argmax(1) if teacher_for_kd is not None else None
    section: dict = {"data": {"source": probe.name, "train": len(train_data), "val": len(val_data),
                              "labeled": train_data.y is not None, "val_fraction": val_fraction},
                     "seeds": {"split": split_seed, "train": config.seed}, "swap": kind, "schedule": schedule,
                     "helu_alpha": _helu_alpha(options) if kind == "helu" else None,
                     "config": config.describe(), "world_size": world.size}
    section["original"] = _metrics(teacher, val_data, teacher_classes, None)
    log(f"  original            {_fmt(section['original'])}")

    if kind is None:        # convert hook: the student arrives swapped
        if config.feature_weight > 0:
            raise InputError("--feature-weight needs the swap done here (block taps are set up per stage); "
                             "the given student arrived already swapped", hint="pass the original model and --swap")
        plan = [Stage("all", [], tuple(s.output.name for s in activations.find_sites(student)))]
        section["swap"] = "given"
        section["swapped_untuned"] = _metrics(student, val_data, teacher_classes, None)
    elif kind != "none":
        if kind not in SWAP_PASSES:
            raise InputError(f"unknown swap '{kind}'", hint="one of relu, helu, none")
        alpha = options.get("helu_alpha")
        plan = plan_stages(teacher, options.get("only", ()), options.get("skip", ()), options.get("stages"),
                           options.get("stage_globs", ()))
        if schedule == "all":
            plan = [Stage("all", sorted({p for s in plan for p in s.prefixes}), tuple(n for s in plan for n in s.nodes))]
        untuned = teacher.copy()
        swap(untuned, kind, tuple(n for s in plan for n in s.nodes), helu_alpha=alpha)
        section["swapped_untuned"] = _metrics(untuned, val_data, teacher_classes, None)
        del untuned
        student = teacher.copy()
        for p in student.module.parameters():
            p.requires_grad_(True)
    if "swapped_untuned" in section:
        log(f"  swapped, no tuning  {_fmt(section['swapped_untuned'])}")
    section["plan"] = [s.describe() for s in plan]

    # ------------------------------------------------------------------ resume
    first_round, records, resume_train = 0, [], None
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir else None
    fingerprint = {"plan": [list(s.nodes) for s in plan], "swap": kind, "config": config.describe(),
                   "split_seed": split_seed, "val_fraction": val_fraction, "train": len(train_data)}
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise InputError(f"--resume: no checkpoint at {ckpt_path}", hint="run once without --resume first")
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != fingerprint:
            raise InputError(f"--resume: {ckpt_path} was written with other options or data",
                             hint="rerun with the same options, or drop --resume")
        first_round, records, resume_train = saved["round"], saved["records"], saved["train"]
        done = first_round + (1 if resume_train is not None else 0)
        for stage in plan[:done]:
            if kind not in (None, "none"):
                swap(student, kind, stage.nodes, helu_alpha=options.get("helu_alpha"))
        if resume_train is None:
            student.module.load_state_dict(saved["model"])
        log(f"  resuming at stage {first_round + 1}/{len(plan)}")

    for index in range(first_round, len(plan)):
        stage = plan[index]
        entry = {"stage": stage.name, "sites": len(stage.nodes)}
        continuing = resume_train is not None and index == first_round
        if kind not in (None, "none") and not continuing:
            entry["swapped"] = swap(student, kind, stage.nodes, helu_alpha=options.get("helu_alpha"))
            entry["after_swap"] = _metrics(student, val_data, teacher_classes, None)
            log(f"  stage {index + 1}/{len(plan)} {stage.name}: swapped {entry['swapped']}  {_fmt(entry['after_swap'])}")

        def save_epoch(state, index=index, entry=entry):
            if ckpt_path is not None and world.main:
                _save(ckpt_path, {"fingerprint": fingerprint, "round": index, "records": records,
                                  "train": {**state, "entry": entry}})

        result = train(student, teacher_for_kd, train_data, val_data, config, world, log,
                       tag=f"stage {index + 1}/{len(plan)}" if len(plan) > 1 else "distill" if teacher_for_kd else "train",
                       round_index=index, feature_prefixes=stage.prefixes or None,
                       resume_state=resume_train if continuing else None, on_epoch=save_epoch)
        if continuing:
            entry = {**resume_train.get("entry", {}), **entry}
        entry.update({k: result[k] for k in ("epochs_run", "best_epoch", "stopped_early", "seconds")})
        entry["after_distill"] = _metrics(student, val_data, teacher_classes, None)
        entry["history"] = result["history"]
        records.append(entry)
        log(f"  stage {index + 1}/{len(plan)} {stage.name}: tuned  {_fmt(entry['after_distill'])}  "
            f"({result['epochs_run']} epochs, {result['seconds']:.1f}s{', early stop' if result['stopped_early'] else ''})")
        if ckpt_path is not None and world.main:
            _save(ckpt_path, {"fingerprint": fingerprint, "round": index + 1, "records": records, "train": None,
                              "model": student.module.state_dict()})
        world.barrier()

    section["stages"] = records
    section["final"] = records[-1]["after_distill"] if records else section.get("swapped_untuned")
    section["weights_sha256"] = world.gather(weights_digest(student.module))
    section["seconds"] = round(time.perf_counter() - started, 3)
    return student, section


def _helu_alpha(options: dict) -> float:
    alpha = options.get("helu_alpha")
    return DEFAULT_HELU_ALPHA if alpha is None else float(alpha)


def _save(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

