"""Train a keyword classifier dense, then fine-tune it with delta activations (ALGORITHMS.md §6.3).

Recipe (Delta Networks / Delta Activation Layer): train the dense FrameMLP on log-mel sequences
(clip logits = mean of the frame logits, cross-entropy); copy its weights into a delta model
(DeltaActivation on the input and after each ReLU, steps initialised from the dense activations'
spread); fine-tune with loss = CE + penalty_weight * sum of the layers' temporal L1 penalties.
Temporal sparsity of a layer = fraction of (frame, neuron) pairs whose code did not change since the
previous frame (the first frame is compared with the zero start state), i.e. the weight columns the
next layer skips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hwact.errors import InputError
from hwact.nn.delta import DeltaActivation, FrameMLP, delta_penalty
from hwact.train import guard


@dataclass
class DeltaTrainResult:
    dense: FrameMLP
    delta: FrameMLP
    dense_accuracy: float
    delta_accuracy: float
    sparsity: list[float]
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"dense_accuracy": self.dense_accuracy, "delta_accuracy": self.delta_accuracy,
                "temporal_sparsity": self.sparsity, "history": self.history}


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).mean(dim=1).argmax(dim=1) == y).float().mean())


def temporal_sparsity(model: FrameMLP, x: torch.Tensor) -> list[float]:
    """Per DeltaActivation: fraction of codes equal to the previous frame's (zero before frame 0)."""
    result, inputs = [], {}
    hooks = [m.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, (mod, args[0])))
             for i, m in enumerate(model.modules()) if isinstance(m, DeltaActivation)]
    model.eval()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    for i in sorted(inputs):
        module, value = inputs[i]
        codes = torch.clamp(torch.round(value / module.step()), -module.levels, module.levels)
        previous = torch.cat([torch.zeros_like(codes[:, :1]), codes[:, :-1]], dim=1)
        result.append(float((codes == previous).float().mean()))
    return result


def _fit(model, x, y, epochs, lr, batch, seed, penalty_weight=0.0, log=None, tag=""):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch):
            index = order[start:start + batch]
            logits = model(x[index]).mean(dim=1)
            loss = F.cross_entropy(logits, y[index])
            if penalty_weight:
                loss = loss + penalty_weight * delta_penalty(model)
            value = loss.item()
            guard.check_loss(value, epoch + 1, start // batch + 1, "lower --penalty", f"{tag} training")
            optimizer.zero_grad()
            loss.backward()
            guard.step(optimizer, epoch + 1, start // batch + 1, "lower --penalty", f"{tag} training")
            total += value * len(index)
        schedule.step()
        guard.check_weights(model, epoch + 1, "lower --penalty", f"{tag} training")
        history.append({"phase": tag, "epoch": epoch, "loss": total / len(x)})
        if log and (epoch % 10 == 9 or epoch == epochs - 1):
            log(f"{tag} epoch {epoch + 1}/{epochs} loss {total / len(x):.4f}")
    return history


def training_bytes(sequences: int, frames: int, features: int, hidden: tuple[int, ...], classes: int,
                   batch: int = 32) -> int:
    """Estimated peak memory of train_delta on `sequences` (train + test) of (frames, features): two float32
    values per frame and unit over the whole set (the step initialisation and the evaluations run on all of
    it at once), ten per unit for a training batch, and per weight the dense and delta copies with their
    gradients and two Adam moments. Measured on CPU: 1.45 GB for 2000 sequences x 1024,1024 (estimate 1.8 GB)."""
    dims = (features, *hidden, classes)
    weights = sum(a * b + b for a, b in zip(dims, dims[1:]))
    units = features + sum(hidden) + classes
    return 4 * (2 * sequences * frames * units + 10 * batch * frames * units + 8 * weights)


def train_delta(train: dict, test: dict, hidden: tuple[int, ...] = (128, 128), epochs: int = 60,
                delta_epochs: int = 30, penalty_weight: float = 0.02, step_scale: float = 0.1,
                lr: float = 3e-3, batch: int = 32, seed: int = 0, log=None) -> DeltaTrainResult:
    for name, part in (("train", train), ("test", test)):
        if len(part["y"]) == 0:
            raise InputError(f"the {name} split is empty", hint="give more sequences (train-delta: --per-word 2 or more)")
    torch.manual_seed(seed)
    x, y = torch.as_tensor(train["x"]), torch.as_tensor(train["y"])
    xt, yt = torch.as_tensor(test["x"]), torch.as_tensor(test["y"])
    classes = int(max(y.max(), yt.max())) + 1
    dense = FrameMLP(x.shape[2], hidden, classes)
    history = _fit(dense, x, y, epochs, lr, batch, seed, log=log, tag="dense")
    dense_accuracy = accuracy(dense, xt, yt)
    steps = _initial_steps(dense, x, step_scale)
    delta = dense.to_delta(init_steps=steps)
    history += _fit(delta, x, y, delta_epochs, lr / 3, batch, seed + 1, penalty_weight, log=log, tag="delta")
    delta_accuracy = accuracy(delta, xt, yt)
    sparsity = temporal_sparsity(delta, xt)
    if log:
        log(f"dense accuracy {dense_accuracy:.4f}, delta accuracy {delta_accuracy:.4f}, "
            f"temporal sparsity per layer {[round(s, 3) for s in sparsity]}")
    return DeltaTrainResult(dense.eval(), delta.eval(), dense_accuracy, delta_accuracy, sparsity, history)


def _initial_steps(dense: FrameMLP, x: torch.Tensor, scale: float) -> tuple[float, ...]:
    """Step per delta layer = scale * std of the values it will quantize (dense model, train data)."""
    values = [x]
    with torch.no_grad():
        h = x
        for module in dense.layers:
            h = module(h)
            if isinstance(module, torch.nn.ReLU):
                values.append(h)
    return tuple(max(float(v.std()) * scale, 1e-3) for v in values)


def export_delta_model(model: FrameMLP, example: torch.Tensor, path) -> None:
    """Save the delta model as a torch.export .pt2 (batch dynamic, time fixed by `example`)."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def numpy_stream(data: dict, path) -> None:
    """Write a stream file for `hwact bench --stream`: x (N, T, F) float32 frames, y (N,) labels."""
    np.savez(path, x=np.asarray(data["x"], dtype=np.float32), y=np.asarray(data["y"], dtype=np.int64))
