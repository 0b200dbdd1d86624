"""Verification metrics: the outputs of one run on calibration batches, and how two runs compare.

Below the passes and the backends, which both verify what they produce against the graph it came from
(the pass manager each pass against its input graph, a backend its artifacts against the graph it
emitted them from). For two runs y (reference) and y' on the same inputs, over all floating-point
outputs flattened per sample:
    max_abs_err = max |y' − y|        mean_abs_err = mean |y' − y|
    cosine      = <y', y> / (|y'|·|y|)  (all outputs of all samples as one vector); 1.0 when y' = y exactly
                  (also when both are all zero, where the formula is 0/0), 0.0 when only one is all zero
    top1_agreement = share of samples whose argmax class is unchanged (when the first output is (N, C>1))
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.utils._pytree as pytree

from hwact.errors import InputError
from hwact.ir.graph import Graph


@dataclass
class Outputs:
    flat: torch.Tensor             # (N, -1): all float outputs of all batches, concatenated
    classes: torch.Tensor | None   # (N,): argmax of the first output when it is (N, C>1) logits
    rows: list[int] = field(default_factory=list)  # rows of `flat` that each batch produced, in order


def collect(runs) -> Outputs:
    """Outputs of a run given, per batch, the list of its output tensors (the first one: the logits)."""
    flat, classes = [], []
    for tensors in runs:
        flat.append(torch.cat([t.detach().double().reshape(t.shape[0] if t.dim() else 1, -1) for t in tensors], 1))
        first = tensors[0]
        classes.append(first.argmax(dim=1) if first.dim() == 2 and first.shape[1] > 1 else None)
    has_classes = all(c is not None for c in classes)
    return Outputs(torch.cat(flat), torch.cat(classes) if has_classes else None, [f.shape[0] for f in flat])


def output_runs(graph: Graph, batches: list[tuple]) -> list[list[torch.Tensor]]:
    """The tensor outputs (pytree leaves) of `graph` on every batch, in order.

    The batches are independent, so they are spread over torch's threads (the machine's cores), one batch
    per thread with every op of it on that thread (torch's intra-op threads set to 1 meanwhile): no fork/join
    per op (most ops of an integer graph are small element-wise ones), and no threads waiting on each other
    for a CPU another job holds. The 8-batch integer verification of zoo:vit-s16 took 10 s this way and 58 s
    with 2 intra-op threads on the 2-core machine while other work kept it busy (load 3)."""
    def run(args: tuple) -> list[torch.Tensor]:
        with torch.no_grad():   # thread-local: set in the worker
            return [t for t in pytree.tree_leaves(graph.module(*args)) if isinstance(t, torch.Tensor)]

    workers = min(torch.get_num_threads(), len(batches))
    if workers <= 1:
        return [run(args) for args in batches]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, batches))
    finally:
        torch.set_num_threads(threads)


def run_outputs(graph: Graph, batches: list[tuple]) -> Outputs:
    """The tensor outputs of `graph` on every batch."""
    return collect(output_runs(graph, batches))


def nonfinite_batch(outputs: Outputs) -> int | None:
    """Index of the first batch whose outputs hold NaN or ±Inf; None when all are finite."""
    finite = torch.isfinite(outputs.flat).all(dim=1)
    if bool(finite.all()):
        return None
    row = int((~finite).nonzero()[0])
    return int(np.searchsorted(np.cumsum(outputs.rows), row, side="right"))


def require_finite_reference(outputs: Outputs, batches: list[tuple], what: str = "the model's outputs") -> None:
    """Raise InputError when the reference run is non-finite: nothing could be verified against it."""
    index = nonfinite_batch(outputs)
    if index is None:
        return
    floats = [a for a in batches[index] if a.is_floating_point() and a.numel()]
    peak = max((float(a.abs().max()) for a in floats), default=0.0)
    cause = f"inputs up to {peak:.3g}" + (" overflow float32 inside the model" if peak > 1e6 else "")
    raise InputError(f"{what} are NaN/Inf on calibration batch {index + 1} of {len(batches)} ({cause})",
                     hint="give --calib values in the range the model was trained on" if peak > 1e6 else
                     "check the model's weights and the --calib values: a layer overflows float32")


def degenerate(outputs: Outputs) -> str | None:
    """Why a cosine against these reference outputs means nothing, or None: they are all zero, or one
    constant value, on every calibration sample."""
    flat = outputs.flat
    if not flat.numel():
        return None
    low, high = float(flat.min()), float(flat.max())
    if low != high:
        return None
    return "all zero" if low == 0.0 else f"all {low:g}"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> / (|a|·|b|) of two flattened runs; 1.0 when they are equal (both all zero included: the formula
    is 0/0 there, and torch returns 0), 0.0 when exactly one is all zero."""
    if not a.numel() or torch.equal(a, b):
        return 1.0
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def compare(before: Outputs, after: Outputs) -> dict:
    """max/mean abs error, cosine similarity and top-1 agreement of two runs on the same inputs."""
    a, b = before.flat, after.flat
    diff = (a - b).abs()
    top1 = None
    if before.classes is not None and after.classes is not None:
        top1 = (before.classes == after.classes).double().mean().item()
    return {"max_abs_err": diff.max().item() if diff.numel() else 0.0,
            "mean_abs_err": diff.mean().item() if diff.numel() else 0.0, "cosine": cosine(a, b),
            "top1_agreement": top1}
