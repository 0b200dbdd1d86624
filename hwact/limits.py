"""Resource caps: sizes a user can ask for are estimated up front and refused above these limits.

A request that would need more than a cap ends with exit 2 and the estimate ("... would need 9.6 GB
for the example inputs; the limit is 4 GB"), before anything large is allocated. The caps sit far above
real use on a 24 GB machine (a batch of 64 ViT-S/16 images is 39 MB of input); they stop typos and
hostile files, not work.
"""

from __future__ import annotations

import os

from hwact.errors import InputError

MAX_ARRAY_BYTES = 2 * 10**9      # one array read from a user's .npz file
MAX_INPUT_BYTES = 4 * 10**9      # example / benchmark inputs built from shapes (all inputs of one batch)
MAX_TRAIN_BYTES = 16 * 10**9     # estimated peak memory of a training run
MAX_EPOCHS = 10_000              # epochs of any training command
MAX_BATCH = 65_536               # training mini-batch size
MAX_SEED = 2**32 - 1             # numpy and scikit-learn take seeds below 2**32
MAX_BENCH_RUNS = 10_000_000      # bench --warmup / --iterations (each timed run keeps one float)
THREADS_PER_CPU = 4              # bench --threads at most os.cpu_count() x this


def format_bytes(count: int | float) -> str:
    """Decimal units, as people read them: 9600000000 -> '9.6 GB'."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} bytes"


def check_bytes(what: str, needed: int, limit: int, hint: str) -> None:
    """InputError unless `needed` bytes fit in `limit`: '{what} would need X; the limit is Y'."""
    if needed > limit:
        raise InputError(f"{what} would need {format_bytes(needed)}; the limit is {format_bytes(limit)}", hint=hint)


def max_threads() -> int:
    """The most threads bench may ask onnxruntime for on this machine."""
    return (os.cpu_count() or 1) * THREADS_PER_CPU
