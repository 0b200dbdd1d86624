"""`hwact train-logic`: train a differentiable logic-gate network and export it for `hwact convert`.

Writes into OUT (built in a temporary folder, renamed when complete):
    logic_model.pt2   thermometer encoding + one hwact::logic_netlist op (the discretized net); its
                      `logic_accuracy` buffer holds the (soft, discrete) held-out accuracy
    test.npz          the held-out split (x float32, y int64): `hwact convert --calib`, benchmarks
    report.json       soft vs discrete accuracy, gates, depth, seeds, wall time, recipe
    report.md         the same for people
"""

from __future__ import annotations

from pathlib import Path

import click

from hwact.commands.params import FINITE, Count
from hwact.errors import InputError
from hwact.limits import MAX_BATCH, MAX_EPOCHS, MAX_SEED
from hwact.outputs import atomic_dir, check_output


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise InputError(f"--layers '{text}': expected comma-separated integers, e.g. 2000,2000") from None
    if not widths or min(widths) < 1:
        raise InputError(f"--layers '{text}': at least one layer, every width >= 1")
    return widths


def _markdown(report: dict) -> str:
    rows = [("data", report["data"]), ("classes", report["classes"]), ("train / test samples",
            f"{report['train_samples']} / {report['test_samples']}"), ("input bits", report["input_bits"]),
            ("layers", ",".join(map(str, report["layers"]))), ("parametrization", report["parametrization"]),
            ("init", report["init"]), ("connections", report["connections"]), ("tau", f"{report['tau']:.3g}"),
            ("epochs", report["epochs"]), ("seed", report["seed"]),
            ("soft accuracy (held out)", f"{report['soft_accuracy']:.4f}"),
            ("discrete accuracy (held out)", f"{report['discrete_accuracy']:.4f}"),
            ("discrete accuracy (train)", f"{report['train_discrete_accuracy']:.4f}"),
            ("gates (unsimplified)", report["gates"]), ("depth", report["depth"]),
            ("wall time", f"{report['wall_seconds']:.1f} s")]
    return ("# hwact train-logic report\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
            + "\nSoft = train-mode relaxation; discrete = argmax gate / thresholded truth table, exactly the "
              "exported netlist.\n")


@click.command("train-logic")
@click.option("--data", required=True, help="digits, breast-cancer, or an .npz with x (N, F) and y (N,) labels 0..C-1.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@click.option("--layers", default="2000,2000", show_default=True, help="Logic layer widths, comma separated.")
@click.option("--parametrization", type=click.Choice(["softmax16", "iwp"]), default="softmax16", show_default=True)
@click.option("--init", type=click.Choice(["residual", "gaussian"]), default="gaussian", show_default=True)
@click.option("--connections", type=click.Choice(["random", "unique"]), default="random", show_default=True)
@click.option("--levels", type=click.IntRange(min=1), default=3, show_default=True, help="Thermometer thresholds per feature.")
@click.option("--tau", type=FINITE, default=None, help="GroupSum temperature (default sqrt(last width / classes)).")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), default=60, show_default=True)
@click.option("--lr", type=FINITE, default=0.01, show_default=True)
@click.option("--batch", type=Count(1, MAX_BATCH), default=100, show_default=True)
@click.option("--test-fraction", type=FINITE, default=0.25, show_default=True, help="Held-out share of the data.")
@click.option("--seed", type=Count(0, MAX_SEED), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Training device (cpu, cuda).")
def train_logic_command(data, outdir, force, layers, parametrization, init, connections, levels, tau, epochs, lr,
                        batch, test_fraction, seed, device):
    """Train a logic-gate network; report soft vs discretized held-out accuracy; write logic_model.pt2."""
    check_output(outdir, force, inputs=(data,))   # first: fails in well under a second
    import numpy as np
    import torch

    from hwact.report import to_json
    from hwact.train.logic import export_logic_model, load_logic_data, split, train_logic

    widths = _widths(layers)
    if tau is not None and not tau > 0:
        raise InputError(f"--tau must be > 0, got {tau}")
    if not 0 < test_fraction < 1:
        raise InputError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    if not lr > 0:
        raise InputError(f"--lr must be > 0, got {lr}")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device {device}: logic layers train on cpu or cuda[:N]", hint="use --device cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here", hint="use --device cpu")
    target = Path(outdir)
    dataset = load_logic_data(data)
    x_train, y_train, x_test, y_test = split(dataset, test_fraction, seed)
    click.echo(f"train-logic: {dataset.name}, {len(y_train)} train / {len(y_test)} test samples, "
               f"{dataset.x.shape[1]} features x {levels} levels, layers {','.join(map(str, widths))}, {parametrization}")
    result = train_logic(x_train, y_train, x_test, y_test, dataset.num_classes, widths, parametrization, connections,
                         init, levels, dataset.encoding, tau, epochs, lr, batch, seed, device, log=click.echo)
    netlist = result.model.to_netlist()
    report = {"data": dataset.name, "classes": dataset.num_classes, "train_samples": int(len(y_train)),
              "test_samples": int(len(y_test)), "features": int(dataset.x.shape[1]), "levels": levels,
              "input_bits": netlist.num_inputs, "layers": list(widths), "parametrization": parametrization,
              "init": init, "connections": connections, "tau": result.model.group_sum.tau, "epochs": epochs, "lr": lr,
              "batch": batch, "seed": seed, "device": device, "soft_accuracy": result.soft_accuracy,
              "discrete_accuracy": result.discrete_accuracy, "train_discrete_accuracy": result.train_discrete_accuracy,
              "gates": netlist.num_gates, "depth": netlist.depth(), "wall_seconds": result.seconds,
              "history": result.history}
    with atomic_dir(target, force, inputs=(data,)) as tmp:  # written completely or not at all
        # two rows (batch 1 would specialize the exported batch dimension), from either split
        example = torch.as_tensor(np.concatenate([x_test, x_train, x_test])[:2])
        module = export_logic_model(result.model, example, tmp / "logic_model.pt2",
                                    (result.soft_accuracy, result.discrete_accuracy))
        with torch.no_grad():  # the exported op must reproduce the discrete accuracy exactly
            exported = float((module(torch.as_tensor(x_test)).argmax(dim=1).numpy() == y_test).mean())
        if exported != result.discrete_accuracy:
            raise InputError(f"internal: exported netlist accuracy {exported} != discrete accuracy "
                             f"{result.discrete_accuracy}")
        np.savez(tmp / "test.npz", x=x_test.astype(np.float32), y=y_test.astype(np.int64))
        (tmp / "report.json").write_text(to_json(report, indent=2) + "\n")
        (tmp / "report.md").write_text(_markdown(report))
    click.echo(f"wrote {target}/logic_model.pt2 (soft accuracy {result.soft_accuracy:.4f}, discrete accuracy "
               f"{result.discrete_accuracy:.4f}, {netlist.num_gates} gates, depth {netlist.depth()})")


COMMANDS = [train_logic_command]
