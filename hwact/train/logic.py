"""Train a differentiable logic-gate network (ALGORITHMS.md §5) on tabular/image data and export it.

Data: `digits` (scikit-learn, 1797 8x8 images, 64 features 0..16, 10 classes), `breast-cancer`
(scikit-learn, 569 samples, 30 features, 2 classes) or an .npz with x (N, F) real features and
y (N,) integer labels 0..C-1. The data is split (stratified, `test_fraction` held out, seeded).

Encoding: a thermometer code with `levels` thresholds per feature, fitted on the training split only
(digits: evenly spaced over each pixel's range; other data: the training quantiles (i+1)/(levels+1)).

Recipe (difflogic): Adam, lr 0.01, batch 100, cross-entropy on GroupSum logits (scores / tau) in train
(soft) mode. Soft accuracy = train-mode (relaxed) predictions; discrete accuracy = eval-mode (argmax
gate / thresholded truth table) predictions, which equal the exported netlist's class counts (ties
between class counts go to the lowest class index, as torch.argmax does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwact.errors import InputError
from hwact.limits import MAX_TRAIN_BYTES, check_bytes
from hwact.nn.logic import LogicNet, ThermometerEncoder
from hwact.npz import open_npz
from hwact.train import guard

BUILTIN = ("digits", "breast-cancer")
EVAL_BATCH = 1000      # rows per evaluation batch


@dataclass
class LogicData:
    name: str
    x: np.ndarray          # (N, F) float32
    y: np.ndarray          # (N,) int64
    num_classes: int
    encoding: str          # "uniform" or "quantile" thermometer thresholds


def load_logic_data(source: str) -> LogicData:
    """`digits`, `breast-cancer` or an .npz with x (N, F) and y (N,) -> validated LogicData."""
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return _checked("digits", bunch.data, bunch.target, "uniform")
    if source == "breast-cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        return _checked("breast-cancer", bunch.data, bunch.target, "quantile")
    path = Path(source)
    if path.suffix != ".npz":
        raise InputError(f"unknown data '{source}'", hint="give digits, breast-cancer or an .npz with x and y")
    if not path.exists():
        raise InputError(f"{source}: no such file")
    with open_npz(path) as archive:
        if "x" not in archive or "y" not in archive:
            raise InputError(f"{source}: the .npz needs arrays 'x' (N, F) and 'y' (N,)",
                             hint=f"it holds {', '.join(archive.files) or 'nothing'}")
        x, y = archive.read("x", per_sample=False), archive.read("y", per_sample=False)
    return _checked(path.name, x, y, "quantile")


def _checked(name: str, x, y, encoding: str) -> LogicData:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name}: x must be a non-empty (samples, features) array, got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"{name}: y must be (samples,) = ({x.shape[0]},), got shape {tuple(y.shape)}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise InputError(f"{name}: x must hold finite numbers")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.array_equal(y, np.round(y)):
            raise InputError(f"{name}: labels y must be integers 0..C-1")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise InputError(f"{name}: label {int(y.min())} out of range: labels must be 0..C-1")
    classes = int(y.max()) + 1
    if classes < 2:
        raise InputError(f"{name}: the labels name only one class")
    missing = sorted(set(range(classes)) - set(np.unique(y).tolist()))
    if missing:
        raise InputError(f"{name}: labels must be 0..C-1 with every class present; class {missing[0]} has no sample",
                         hint=f"labels seen: 0..{classes - 1} with gaps")
    return LogicData(name, x.astype(np.float32), y, classes, encoding)


def split(data: LogicData, test_fraction: float = 0.25, seed: int = 0):
    """Stratified split -> (x_train, y_train, x_test, y_test)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(data.y)
    stratify = data.y if counts.min() >= 2 and len(data.y) * test_fraction >= data.num_classes else None
    try:
        xa, xb, ya, yb = train_test_split(data.x, data.y, test_size=test_fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise InputError(f"{data.name}: too few samples ({len(data.y)}) to hold out a test split ({exc})") from None
    return xa, ya, xb, yb


def make_encoder(x_train: np.ndarray, levels: int, encoding: str) -> ThermometerEncoder:
    if levels < 1:
        raise InputError(f"thermometer levels must be >= 1, got {levels}")
    if encoding == "uniform":
        low, high = x_train.min(axis=0), x_train.max(axis=0)
        steps = (np.arange(levels) + 1) / (levels + 1)
        thresholds = low[:, None] + (high - low)[:, None] * steps[None, :]
        return ThermometerEncoder(torch.as_tensor(thresholds, dtype=torch.float32))
    return ThermometerEncoder.from_data(x_train, levels)


def default_tau(width: int, classes: int) -> float:
    """GroupSum temperature: scores of a group of n/k bits span [0, n/k/tau]; aim for ~[0, 10]-ish logits."""
    return max(1.0, (width / classes) ** 0.5)


def training_bytes(num_bits: int, widths: tuple[int, ...], parametrization: str, batch: int, rows: int) -> int:
    """Estimated peak memory of train_logic: weights (logits, gradients, two Adam moments, wiring) plus the
    larger of a training step and an evaluation batch; per row, the thermometer bits (bool + float32) and
    about 8 float32 temporaries per gate (10 with autograd). Measured on CPU, it runs 10-25% above the
    real peak (width 20000 x 2, 192 bits, batch 100: 1.30 GB estimated, 1.07 GB measured)."""
    gates = sum(widths)
    weights = gates * ((16 if parametrization == "softmax16" else 4) * 4 * 4 + 16)
    evaluate = min(EVAL_BATCH, rows) * (5 * num_bits + 32 * gates)
    step = min(batch, rows) * (5 * num_bits + 40 * gates)
    return weights + max(evaluate, step)


def accuracy(model: LogicNet, x: torch.Tensor, y: torch.Tensor, soft: bool, batch: int = EVAL_BATCH) -> float:
    model.train(soft)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            correct += int((model(x[start:start + batch]).argmax(dim=1) == y[start:start + batch]).sum())
    model.eval()
    return correct / max(len(x), 1)


@dataclass
class LogicTrainResult:
    model: LogicNet
    soft_accuracy: float
    discrete_accuracy: float
    train_discrete_accuracy: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def train_logic(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_classes: int,
                widths: tuple[int, ...] = (2000, 2000), parametrization: str = "softmax16", connections: str = "random",
                init: str = "residual", levels: int = 3, encoding: str = "quantile", tau: float | None = None,
                epochs: int = 30, lr: float = 0.01, batch: int = 100, seed: int = 0, device: str = "cpu",
                progress: bool = True, log=None) -> LogicTrainResult:
    from tqdm import tqdm

    if not widths or min(widths) < 1:
        raise InputError(f"layer widths must be >= 1, got {list(widths)}")
    if widths[-1] % num_classes:
        raise InputError(f"the last layer width {widths[-1]} must be a multiple of the {num_classes} classes")
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    num_bits = x_train.shape[1] * levels
    check_bytes(f"training a logic net on {num_bits} input bits ({x_train.shape[1]} features x {levels} levels), "
                f"layers {','.join(map(str, widths))}, batch {batch}",
                training_bytes(num_bits, widths, parametrization, batch, max(len(x_train), len(x_test))),
                MAX_TRAIN_BYTES, hint="lower --levels, --layers or --batch")
    torch.manual_seed(seed)
    start_time = time.perf_counter()
    encoder = make_encoder(x_train, levels, encoding)
    tau = float(tau) if tau else default_tau(widths[-1], num_classes)
    model = LogicNet(x_train.shape[1], tuple(widths), num_classes, tau, connections, parametrization, init, seed,
                     encoder).to(device)
    x, y = torch.as_tensor(x_train, device=device), torch.as_tensor(y_train, device=device)
    xt, yt = torch.as_tensor(x_test, device=device), torch.as_tensor(y_test, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc="train-logic", disable=None if progress else True, leave=False)  # None: a terminal only
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        total = 0.0
        for begin in range(0, len(x), batch):
            index = order[begin:begin + batch]
            loss = F.cross_entropy(model(x[index]), y[index])
            value = float(loss.detach())
            guard.check_loss(value, epoch + 1, begin // batch + 1, "lower --lr")
            optimizer.zero_grad()
            loss.backward()
            guard.step(optimizer, epoch + 1, begin // batch + 1, "lower --lr")
            total += value * len(index)
        guard.check_weights(model, epoch + 1, "lower --lr")
        history.append({"epoch": epoch + 1, "loss": total / len(x)})
        bar.set_postfix(loss=f"{total / len(x):.4f}")
    soft = accuracy(model, xt, yt, soft=True)
    discrete = accuracy(model, xt, yt, soft=False)
    train_discrete = accuracy(model, x, y, soft=False)
    seconds = time.perf_counter() - start_time
    if log:
        log(f"soft accuracy {soft:.4f}, discrete accuracy {discrete:.4f} (held out, {len(yt)} samples), "
            f"{seconds:.1f} s")
    return LogicTrainResult(model.cpu().eval(), soft, discrete, train_discrete, seconds, history)


def export_logic_model(model: LogicNet, example: torch.Tensor, path, accuracy: tuple[float, float] | None = None):
    """Save thermometer encoding + one hwact::logic_netlist op (the unsimplified discretized net) as .pt2."""
    from hwact.ir.logic_ops import LogicNetlistModule

    thresholds = model.encoder.thresholds if model.encoder is not None else None
    module = LogicNetlistModule(model.to_netlist(), thresholds, accuracy).eval()
    if thresholds is None:
        example = example.to(torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return module
