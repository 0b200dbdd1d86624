"""Latency of ONNX models on onnxruntime, alone or two models interleaved in one process.

Interleaving (A B B A A B ...) exposes both models to the same machine noise, so the ratio of their
medians holds on a busy machine even when absolute numbers drift.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hwact.errors import InputError
from hwact.limits import MAX_BENCH_RUNS, MAX_INPUT_BYTES, check_bytes

_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass
class Runner:
    path: Path
    session: object
    feeds: dict

    def __call__(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feeds)
        return time.perf_counter() - start


def make_runner(path: Path, batch: int, threads: int, seed: int = 0) -> Runner:
    from hwact.backends.onnx import ort_session

    try:
        session = ort_session(path, threads)
    except Exception as exc:
        raise InputError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from exc
    shapes = {}
    for value in session.get_inputs():
        fixed = value.shape[0] if value.shape and isinstance(value.shape[0], int) else None
        if fixed is not None and fixed != batch:
            raise InputError(f"{path}: input '{value.name}' has a fixed batch of {fixed} (the model was exported "
                             f"without a dynamic batch), not {batch}", hint=f"pass --batch {fixed}")
        dims = [batch if i == 0 else d for i, d in enumerate(value.shape)]
        if any(not isinstance(d, int) for d in dims):
            raise InputError(f"{path}: input '{value.name}' has a symbolic dimension besides the batch: {value.shape}")
        dtype = _NP_TYPES.get(value.type)
        if dtype is None:
            raise InputError(f"{path}: input '{value.name}' has unsupported type {value.type}")
        shapes[value.name] = (dims, dtype)
    # drawn as float64 / int64, then cast: 8 + itemsize bytes per value while an input is built
    needed = sum(math.prod(dims) * (8 + np.dtype(dtype).itemsize) for dims, dtype in shapes.values())
    check_bytes(f"--batch {batch}: the random inputs of {path}", needed, MAX_INPUT_BYTES, hint="use a smaller --batch")
    rng = np.random.default_rng(seed)
    feeds = {name: (rng.standard_normal(dims).astype(dtype) if np.issubdtype(dtype, np.floating)
                    else rng.integers(0, 2, dims).astype(dtype)) for name, (dims, dtype) in shapes.items()}
    return Runner(path, session, feeds)


def stats(seconds: list[float], batch: int) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"iterations": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "throughput_per_s": float(batch * 1e3 / np.percentile(ms, 50))}


def measure(runners: list[Runner], warmup: int, iterations: int | None, duration: float | None,
            batch: int, progress: bool = True) -> list[dict]:
    """Time each runner; several runners are interleaved, alternating their order every round. A --duration
    run stops at MAX_BENCH_RUNS rounds too (each round keeps its times: memory stays bounded)."""
    for _ in range(max(warmup, 1)):
        for run in runners:
            run()
    per_round = sum(run() for run in runners)
    rounds = iterations if iterations else max(1, int((duration or 1.0) / max(per_round, 1e-6)))
    expected = per_round * rounds
    samples: list[list[float]] = [[] for _ in runners]
    bar = tqdm(total=rounds, desc="bench", unit="it", disable=not progress or expected < 1.0, leave=False)
    deadline = time.perf_counter() + duration if duration and not iterations else None
    done = 0
    while done < MAX_BENCH_RUNS and ((time.perf_counter() < deadline) if deadline else done < rounds):
        order = range(len(runners)) if done % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            samples[i].append(runners[i]())
        done += 1
        bar.update(1)
    bar.close()
    return [stats(s, batch) for s in samples]
