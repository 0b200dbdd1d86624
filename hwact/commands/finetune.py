"""`hwact finetune`: swap GELU (ReLU/HeLU) and recover accuracy by distillation from the original model.

Writes OUT/model.pt2 (the fine-tuned, swapped graph), OUT/state_dict.pt (its weights; `hwact convert
OUT/state_dict.pt --arch NAME --recipe relu` re-applies the swap to them), OUT/report.json and report.md.
Runs unchanged under `torchrun --nproc-per-node N` (DistributedDataParallel; rank 0 writes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from hwact.commands.core import model_options
from hwact.commands.params import FINITE, Count
from hwact.errors import InputError, VerificationError
from hwact.limits import MAX_BATCH, MAX_EPOCHS, MAX_SEED
from hwact.outputs import atomic_dir, check_output
from hwact.report import to_json


@click.command()
@model_options
@click.option("--data", required=True, help="digits (scikit-learn), an .npz with x[, y], or an ImageFolder directory.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@click.option("--swap", type=click.Choice(["helu", "relu", "none"]), default="helu", show_default=True,
              help="Activation put in place of GELU (none: plain supervised training of MODEL, needs labels).")
@click.option("--teacher", help="The original model when MODEL is already swapped (then MODEL is the student as is).")
@click.option("--helu-alpha", type=FINITE, default=None, help="HeLU backward margin (default 0.05).")
@click.option("--only", multiple=True, metavar="GLOB", help="Only swap sites under these module paths (repeatable).")
@click.option("--skip", multiple=True, metavar="GLOB", help="Leave these module paths as GELU (repeatable).")
@click.option("--schedule", type=click.Choice(["staged", "all"]), default="staged", show_default=True,
              help="staged: swap one stage, distill, then the next; all: swap everything, distill once.")
@click.option("--stages", type=int, default=None, help="Merge the natural stages into this many groups.")
@click.option("--stage", "stage_globs", multiple=True, metavar="GLOB", help="An explicit stage (module-path glob); repeat, in order.")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), default=10, show_default=True, help="Epochs per stage.")
@click.option("--batch-size", type=Count(1, MAX_BATCH), default=64, show_default=True)
@click.option("--lr", type=FINITE, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=FINITE, default=0.01, show_default=True)
@click.option("--temperature", type=FINITE, default=4.0, show_default=True, help="Distillation temperature T.")
@click.option("--ce-weight", type=FINITE, default=0.0, show_default=True, help="Weight of hard-label cross-entropy (labels needed).")
@click.option("--feature-weight", type=FINITE, default=0.0, show_default=True, help="Weight of per-block feature MSE.")
@click.option("--patience", type=Count(0, MAX_EPOCHS), default=3, show_default=True, help="Stop a stage after this many epochs without validation gain (0: never).")
@click.option("--seed", type=Count(0, MAX_SEED), default=0, show_default=True, help="Training seed (batch order).")
@click.option("--split-seed", type=Count(0, MAX_SEED), default=0, show_default=True, help="Seed of the train/validation split.")
@click.option("--val-fraction", type=FINITE, default=0.2, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUTDIR.ckpt/ (written after every epoch).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def finetune(model, arch, input_shapes, trust_checkpoint, data, outdir, force, swap, teacher, helu_alpha, only, skip,
             schedule, stages, stage_globs, epochs, batch_size, lr, weight_decay, temperature, ce_weight,
             feature_weight, patience, seed, split_seed, val_fraction, resume, no_progress):
    """Swap GELU in MODEL for HeLU/ReLU and distill it from the original on DATA (accuracy recovery)."""
    inputs = (model, teacher, data)
    check_output(outdir, force, inputs)   # first: fails in well under a second
    from hwact.ir.graph import check_finite
    from hwact.load import load
    from hwact.train.distill import init_world
    from hwact.train.recover import recover

    if not lr > 0 or not temperature > 0:
        raise InputError("--lr and --temperature must be > 0")
    if min(ce_weight, feature_weight, weight_decay) < 0:
        raise InputError("--ce-weight, --feature-weight and --weight-decay must be >= 0")
    if helu_alpha is not None and helu_alpha < 0:
        raise InputError(f"--helu-alpha must be >= 0, got {helu_alpha}")
    if teacher and swap == "none":
        raise InputError("--swap none trains MODEL alone; it takes no --teacher")
    out = Path(outdir)
    world = init_world()
    log = click.echo if world.main else (lambda *a, **k: None)
    loaded = load(model, arch=arch, input_shapes=tuple(input_shapes), trust=trust_checkpoint)
    check_finite(loaded.graph, loaded.source)
    options = {"helu_alpha": helu_alpha, "only": tuple(only), "skip": tuple(skip), "schedule": schedule,
               "stages": stages, "stage_globs": tuple(stage_globs), "epochs": epochs, "batch_size": batch_size,
               "lr": lr, "weight_decay": weight_decay, "temperature": temperature, "ce_weight": ce_weight,
               "feature_weight": feature_weight, "patience": patience, "seed": seed, "split_seed": split_seed,
               "val_fraction": val_fraction, "progress": not no_progress}
    checkpoint_dir = Path(str(out) + ".ckpt")
    log(f"hwact finetune: {loaded.source} ({loaded.format}) on {data}, swap {swap}, schedule "
        f"{'all' if teacher else schedule}" + (f", {world.size} processes" if world.size > 1 else ""))
    if teacher:
        teacher_loaded = load(teacher, arch=arch, input_shapes=tuple(input_shapes), trust=trust_checkpoint)
        check_finite(teacher_loaded.graph, teacher_loaded.source)
        student, section = recover(teacher_loaded.graph, None, data, {**options, "schedule": "all"}, log,
                                   student=loaded.graph, world=world, checkpoint_dir=checkpoint_dir, resume=resume)
    else:
        student, section = recover(loaded.graph, swap, data, options, log, world=world,
                                   checkpoint_dir=checkpoint_dir, resume=resume)
    digests = section["weights_sha256"]
    if len(set(digests)) != 1:
        raise VerificationError(f"ranks ended with different weights: {', '.join(d[:12] for d in digests)}")
    if world.main:
        write_outputs(out, force, loaded, student, section, data, inputs)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        log(f"wrote {out / 'model.pt2'}, {out / 'state_dict.pt'}, {out / 'report.json'}, {out / 'report.md'}")
    world.barrier()
    if world.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()


def write_outputs(out: Path, force: bool, loaded, student, section: dict, data: str, inputs=()) -> dict:
    import torch

    from hwact.report import machine, versions

    report = {"command": "finetune", "input": loaded.describe(), "data": str(data), "recovery": section,
              "artifacts": ["model.pt2", "state_dict.pt", "report.json", "report.md"],
              "machine": machine(), "versions": versions()}
    with atomic_dir(out, force, inputs) as tmp:
        torch.export.save(student.export(), tmp / "model.pt2")
        state = {k: v.detach().clone() for k, v in student.module.state_dict().items()}
        if loaded.module is not None:   # keep exactly the keys of the eager architecture (for --arch)
            wanted = loaded.module.state_dict().keys()
            state = {k: v for k, v in state.items() if k in wanted}
        torch.save(state, tmp / "state_dict.pt")
        (tmp / "report.json").write_text(to_json(report, indent=2, default=str) + "\n")
        (tmp / "report.md").write_text(render_markdown(report))
    return report


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def render_markdown(report: dict) -> str:
    rec = report["recovery"]
    lines = ["# hwact finetune report\n",
             f"Model: `{report['input']['path']}` ({report['input']['format']}); data: `{report['data']}` "
             f"({rec['data']['train']} train / {rec['data']['val']} validation samples, "
             f"{'labeled' if rec['data']['labeled'] else 'unlabeled'}).\n",
             f"Swap: {rec['swap']}" + (f" (alpha {rec['helu_alpha']})" if rec.get("helu_alpha") is not None else "")
             + f", schedule: {rec['schedule']}, processes: {rec['world_size']}, seeds: split {rec['seeds']['split']}, "
             f"train {rec['seeds']['train']}.\n",
             "## Validation accuracy (top-1) and agreement with the original\n",
             "| step | accuracy | agreement | epochs | seconds |", "|---|---|---|---|---|"]

    def row(step, m, epochs="", seconds=""):
        lines.append(f"| {step} | {_pct(m.get('accuracy'))} | {_pct(m.get('teacher_agreement'))} | {epochs} | {seconds} |")

    row("original", rec["original"])
    if "swapped_untuned" in rec:
        row("swapped, no tuning", rec["swapped_untuned"])
    for i, stage in enumerate(rec["stages"], 1):
        if "after_swap" in stage:
            row(f"stage {i} `{stage['stage']}`: swapped ({stage['sites']} sites)", stage["after_swap"])
        row(f"stage {i} `{stage['stage']}`: distilled", stage["after_distill"], stage["epochs_run"],
            f"{stage['seconds']:.1f}")
    lines += ["", "## Training settings\n", "```json", to_json(rec["config"], indent=2), "```", "",
              f"Total {rec['seconds']:.1f}s. Weights sha256 per rank: " + ", ".join(f"`{d[:16]}`" for d in rec["weights_sha256"]),
              "", "## Versions\n", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


COMMANDS = [finetune]
