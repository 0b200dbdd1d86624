"""Training data for accuracy recovery: one loader, three sources, checked against the model.

    load_dataset("digits")            scikit-learn's handwritten digits (1797 real 8x8 grey images, 10
                                      classes, ships with scikit-learn): x (1797, 1, 8, 8) float32 in
                                      [0, 1] (pixel / 16), y (1797,) int64.
    load_dataset("data.npz")          arrays `x` (N, ...) and optionally `y` (N,) integer labels; x is
                                      used as stored (cast to float32). No pickles are ever loaded.
    load_dataset("images/")           an ImageFolder tree: images/<class>/<file>.png|jpg|...; classes
                                      are the sub-folder names in sorted order (label = index), pixels
                                      read with Pillow and scaled to [0, 1], layout (N, C, H, W).
Unlabeled data (an .npz without `y`) is fine for pure distillation.

`check_dataset(ds, input_shape, num_classes)` validates a dataset against a model (sample shape,
channel count, label range) and `split(ds, val_fraction, seed)` makes a deterministic train/validation
split (a seeded permutation; same seed, same split on every machine and every rank).
Every problem a user can cause raises hwact.errors.InputError with a one-line cause.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwact.errors import InputError
from hwact.ir.graph import first_line
from hwact.npz import INTEGER, REAL, open_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
BUILTIN = ("digits",)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # read as 1 channel; everything else as RGB


@dataclass
class Dataset:
    name: str
    x: torch.Tensor                  # (N, ...) float32 samples
    y: torch.Tensor | None = None    # (N,) int64 labels, or None (unlabeled)
    classes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labeled(self) -> bool:
        return self.y is not None

    def subset(self, index: torch.Tensor, name: str | None = None) -> "Dataset":
        return Dataset(name or self.name, self.x[index], None if self.y is None else self.y[index], self.classes)

    def describe(self) -> dict:
        return {"name": self.name, "samples": len(self), "sample_shape": list(self.x.shape[1:]),
                "labeled": self.labeled, "classes": None if self.classes is None else len(self.classes)}


def load_dataset(source: str) -> Dataset:
    """`digits`, an .npz file or an ImageFolder directory -> Dataset (see the module docstring)."""
    source = str(source)
    if source == "digits":
        return _digits()
    path = Path(source)
    if not path.exists():
        raise InputError(f"{source}: no such dataset", hint="give digits, an .npz file or an image folder")
    if path.is_dir():
        return _image_folder(path)
    return _npz(path)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset("digits", x, y, [str(c) for c in bunch.target_names])


def _npz(path: Path) -> Dataset:
    """x (and y) from an .npz, shapes and dtypes checked from the headers before any data is read."""
    with open_npz(path) as archive:
        x_info = archive.info("x")
        if len(x_info.shape) < 2 or x_info.shape[0] == 0:
            raise InputError(f"{path}: array 'x' has shape {x_info.shape}, expected (N, ...) with N > 0")
        y = None
        if "y" in archive:
            y_info = archive.info("y")
            if y_info.shape != x_info.shape[:1]:
                raise InputError(f"{path}: array 'y' has shape {y_info.shape}, expected ({x_info.shape[0]},) "
                                 "(one label per sample)")
            if y_info.dtype.kind not in INTEGER:
                raise InputError(f"{path}: array 'y' has dtype {y_info.dtype}, expected integer class labels")
            y = torch.from_numpy(archive.read("y", kinds=INTEGER).astype(np.int64))
        x = archive.read("x", kinds=REAL)
    return Dataset(path.name, torch.from_numpy(x).float(), y)


def _image_folder(root: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: empty image folder (no class sub-folders)",
                         hint="lay it out as ROOT/<class>/<image>.png (ImageFolder)")
    samples, labels, first = [], [], None
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)  # over Pillow's pixel cap
                    with Image.open(file) as image:
                        image.load()
                        array = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"), dtype=np.float32)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise InputError(f"{file}: too many pixels to decode safely ({first_line(exc)})",
                                 hint="training images are small (e.g. 32x32): resize it") from exc
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"{file}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            if first is None:
                first = (file, array.shape)
            elif array.shape != first[1]:
                raise InputError(f"{file}: image is {_shape_text(array.shape)}, but {first[0].name} is "
                                 f"{_shape_text(first[1])}", hint="all images must have one size and channel count")
            samples.append(array / 255.0)
            labels.append(label)
    if not samples:
        raise InputError(f"{root}: empty image folder (no images in {', '.join(classes)})",
                         hint="supported files: " + " ".join(IMAGE_SUFFIXES))
    x = torch.from_numpy(np.stack(samples).astype(np.float32))
    return Dataset(root.name, x, torch.tensor(labels, dtype=torch.int64), classes)


def _shape_text(chw) -> str:
    return f"{chw[2]}x{chw[1]} with {chw[0]} channel{'s' if chw[0] != 1 else ''}"


def check_dataset(ds: Dataset, input_shape: tuple[int, ...], num_classes: int | None) -> None:
    """Raise InputError unless every sample has the model's input shape and labels are in [0, num_classes)."""
    expected = tuple(input_shape[1:])
    got = tuple(ds.x.shape[1:])
    if got != expected:
        if len(got) == 3 and len(expected) == 3:
            if got[0] != expected[0]:
                raise InputError(f"{ds.name}: samples have {got[0]} channel(s), the model expects {expected[0]} "
                                 f"(samples {'x'.join(map(str, got))}, model {'x'.join(map(str, expected))})")
            raise InputError(f"{ds.name}: samples are {got[2]}x{got[1]} pixels, the model expects "
                             f"{expected[2]}x{expected[1]}", hint="resize the images to the model's input size")
        raise InputError(f"{ds.name}: samples have shape {got}, the model expects {expected}")
    if ds.y is not None and num_classes is not None and len(ds.y):
        low, high = int(ds.y.min()), int(ds.y.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise InputError(f"{ds.name}: label {bad} is out of range for a model with {num_classes} classes "
                             f"(labels must be in 0..{num_classes - 1})")
    if not torch.isfinite(ds.x).all():
        raise InputError(f"{ds.name}: samples contain NaN or infinite values")


def split(ds: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic train/validation split: a permutation from `seed`, the first val_fraction·N for validation."""
    if not 0 < val_fraction < 1:
        raise InputError(f"validation fraction must be in (0, 1), got {val_fraction}")
    count = len(ds)
    n_val = max(1, int(round(count * val_fraction)))
    if count - n_val < 1:
        raise InputError(f"{ds.name}: {count} sample(s) are too few for a train/validation split")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return ds.subset(order[n_val:], f"{ds.name}:train"), ds.subset(order[:n_val], f"{ds.name}:val")
