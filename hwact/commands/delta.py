"""`hwact train-delta`: train a keyword classifier dense, fine-tune it with delta activations, save .pt2.

Writes into OUT (built in a temporary folder, renamed when complete):
    delta_model.pt2   the delta model (hwact::delta_act nodes; `hwact convert` recognises it)
    dense_model.pt2   the dense baseline
    stream.npz        the held-out log-mel sequences (x, y) for `hwact bench OUT2 --stream stream.npz`
    train.json        accuracies, per-layer temporal sparsity, recipe
"""

from __future__ import annotations

from pathlib import Path

import click

from hwact.commands.params import FINITE, Count
from hwact.errors import InputError
from hwact.limits import MAX_EPOCHS, MAX_SEED, MAX_TRAIN_BYTES, check_bytes
from hwact.outputs import atomic_dir, check_output


@click.command("train-delta")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists.")
@click.option("--per-word", type=int, default=24, show_default=True, help="Utterances synthesized per keyword.")
@click.option("--hidden", default="128,128", show_default=True, help="Hidden widths, comma separated.")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), default=60, show_default=True, help="Dense training epochs.")
@click.option("--delta-epochs", type=Count(1, MAX_EPOCHS), default=30, show_default=True, help="Delta fine-tuning epochs.")
@click.option("--penalty", type=FINITE, default=0.02, show_default=True, help="Weight of the temporal L1 penalty.")
@click.option("--step-scale", type=FINITE, default=0.1, show_default=True,
              help="Initial delta step = this x std of the quantized values.")
@click.option("--seed", type=Count(0, MAX_SEED), default=0, show_default=True)
def train_delta_command(outdir, force, per_word, hidden, epochs, delta_epochs, penalty, step_scale, seed):
    """Train dense then delta on espeak-ng keywords (log-mel frames); report accuracy and temporal sparsity."""
    check_output(outdir, force)   # first: fails in well under a second
    import torch

    from hwact.data import speech
    from hwact.report import to_json
    from hwact.train.delta import export_delta_model, numpy_stream, train_delta, training_bytes

    try:
        widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    except ValueError:
        raise InputError(f"--hidden '{hidden}': expected comma-separated integers") from None
    if not widths or min(widths) < 1:
        raise InputError(f"--hidden '{hidden}': widths must be >= 1")
    if per_word < 2:
        raise InputError(f"--per-word must be >= 2, got {per_word}",
                         hint="one utterance per keyword is held out for testing, the rest train")
    if penalty < 0 or not step_scale > 0:
        raise InputError("--penalty must be >= 0 and --step-scale > 0")
    check_bytes(f"training on {per_word} utterances of each of {len(speech.KEYWORDS)} keywords with hidden "
                f"widths {','.join(map(str, widths))}", training_bytes(per_word * len(speech.KEYWORDS), speech.T_FRAMES,
                                                                      speech.N_MELS, widths, len(speech.KEYWORDS)),
                MAX_TRAIN_BYTES, hint="lower --per-word or --hidden")
    target = Path(outdir)
    data = speech.build_keywords(per_word=per_word, seed=seed)
    train, test = speech.split(data, seed=seed)
    result = train_delta(train, test, hidden=widths, epochs=epochs, delta_epochs=delta_epochs,
                         penalty_weight=penalty, step_scale=step_scale, seed=seed, log=click.echo)
    with atomic_dir(target, force) as tmp:  # written completely or not at all
        example = torch.as_tensor(test["x"][:2])
        export_delta_model(result.delta, example, tmp / "delta_model.pt2")
        export_delta_model(result.dense, example, tmp / "dense_model.pt2")
        numpy_stream(test, tmp / "stream.npz")
        summary = {**{k: v for k, v in result.as_dict().items() if k != "history"},
                   "keywords": data["words"], "train_sequences": int(len(train["y"])),
                   "test_sequences": int(len(test["y"])), "frames": int(data["x"].shape[1]),
                   "features": int(data["x"].shape[2]), "hidden": list(widths), "penalty": penalty, "seed": seed}
        (tmp / "train.json").write_text(to_json(summary, indent=2) + "\n")
    click.echo(f"wrote {target}/delta_model.pt2 (dense accuracy {result.dense_accuracy:.3f}, delta accuracy "
               f"{result.delta_accuracy:.3f}, temporal sparsity {', '.join(f'{s:.3f}' for s in result.sparsity)})")


COMMANDS = [train_delta_command]
