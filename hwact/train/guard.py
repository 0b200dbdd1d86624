"""Stop a training run whose loss or weights stop being finite, before anything is saved.

A learning rate too large (or a loss weight) can send the loss to inf and the weights to NaN within a
step; training on would only save a NaN model. `check_loss` runs on every step's loss, `step` makes the
optimizer's update (one that overflows float32, as a learning rate near 1e38 does, is divergence too)
and `check_weights` runs after every epoch (a NaN update shows in the next loss, except after an
epoch's last step); all raise InputError: "training diverged at epoch E step S (loss nan)", with a hint.
"""

from __future__ import annotations

import math

import torch

from hwact.errors import InputError


def check_loss(loss: float, epoch: int, step: int, hint: str, phase: str = "training") -> None:
    """InputError when `loss` (of epoch `epoch`, step `step`, both from 1) is NaN or infinite."""
    if not math.isfinite(loss):
        raise InputError(f"{phase} diverged at epoch {epoch} step {step} (loss {loss}); nothing was saved",
                         hint=hint)


def step(optimizer: torch.optim.Optimizer, epoch: int, step_index: int, hint: str, phase: str = "training") -> None:
    """optimizer.step(); an update too large for float32 (torch: "... without overflow") is divergence."""
    try:
        optimizer.step()
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise InputError(f"{phase} diverged at epoch {epoch} step {step_index} (the update overflows float32); "
                         "nothing was saved", hint=hint) from exc


def check_weights(module: torch.nn.Module, epoch: int, hint: str, phase: str = "training") -> None:
    """InputError naming the first parameter of `module` that holds NaN or infinite values."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if not torch.isfinite(parameter).all():
                raise InputError(f"{phase} diverged at epoch {epoch}: weight '{name}' holds NaN or infinite "
                                 "values; nothing was saved", hint=hint)
