"""Memory of the integer CPU runtime: one static activation arena per input shape, and a size guard.

Arena. The first run of a plan for a given set of input shapes records, for every kernel output, its
size in bytes and its lifetime [the step that writes it, the last step that reads it or a view of it].
Two outputs may share bytes when their lifetimes are disjoint. `place` assigns byte offsets greedily,
largest buffer first, each at the lowest offset (aligned to ALIGN) that overlaps no already placed buffer
alive at the same time; the arena's size is the highest end. Later runs with the same shapes write every
kernel output into its slice of that one allocation, so a run allocates no activations (buffers reachable
from the plan's outputs are excluded: they are returned to the caller).

Guard. A plan read from a folder is hostile: a step could ask for a tensor of 10^12 elements (aten.full
with a huge size, a pad of 2^40, an expand made contiguous) and exhaust memory before anything fails.
`check_size` refuses any one tensor over half of this machine's memory; the recording run checks every
torch step on meta tensors (shapes only, no memory) before running it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.fx

from hwact.errors import InputError

ALIGN = 64


def memory_limit_bytes() -> int:
    """Half of this machine's physical memory: the largest single tensor a plan step may ask for."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 8 << 30


@dataclass(frozen=True)
class Buffer:
    step: int        # index of the step that writes it
    nbytes: int
    first: int       # lifetime, inclusive, in step indices
    last: int


@dataclass
class ArenaLayout:
    offsets: dict[int, tuple[int, int]]   # step index -> (byte offset, nbytes)
    arena_bytes: int                      # the arena's size
    activation_bytes: int                 # the same buffers without sharing (the sum)


def _aligned(value: int) -> int:
    return (value + ALIGN - 1) // ALIGN * ALIGN


def place(buffers: list[Buffer]) -> ArenaLayout:
    """Offsets for `buffers` such that two buffers alive at the same step never overlap (module doc)."""
    placed: list[tuple[int, int, Buffer]] = []          # (offset, end, buffer)
    offsets = {}
    for buffer in sorted(buffers, key=lambda b: (-b.nbytes, b.first, b.step)):
        busy = sorted((start, end) for start, end, other in placed
                      if other.first <= buffer.last and buffer.first <= other.last)
        offset = 0
        for start, end in busy:
            if offset + buffer.nbytes <= start:
                break
            offset = max(offset, _aligned(end))
        placed.append((offset, offset + buffer.nbytes, buffer))
        offsets[buffer.step] = (offset, buffer.nbytes)
    total = max((end for _, end, _ in placed), default=0)
    return ArenaLayout(offsets, _aligned(total), sum(b.nbytes for b in buffers))


def storages(value) -> set[int]:
    """The storage addresses of every tensor in `value` (a tensor, or lists / tuples of them)."""
    return {leaf.untyped_storage().data_ptr() for leaf in torch.utils._pytree.tree_leaves(value)
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu"}


def check_size(step, shape, dtype: torch.dtype, limit: int) -> None:
    """InputError when a tensor of `shape` and `dtype` would take more than `limit` bytes."""
    nbytes = math.prod(int(size) for size in shape) * dtype.itemsize
    if nbytes > limit:
        raise InputError(f"plan step {step.name} ({step.op_name}) asks for a tensor of shape {tuple(shape)}: "
                         f"{nbytes / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB one step may use")


def _to_meta(value):
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, torch.device):
        return torch.device("meta")
    return value


def check_torch_step(step, args, kwargs, limit: int) -> None:
    """Refuse a torch step whose result would be larger than `limit`, found on meta tensors (no memory)."""
    meta_args = torch.fx.node.map_aggregate(args, _to_meta)
    meta_kwargs = {key: torch.fx.node.map_aggregate(value, _to_meta) for key, value in kwargs.items()}
    if step.op in (torch.ops.aten.full.default, torch.ops.aten.zeros.default, torch.ops.aten.ones.default,
                   torch.ops.aten.arange.default, torch.ops.aten.arange.start, torch.ops.aten.arange.start_step) \
            and "device" not in meta_kwargs:
        meta_kwargs["device"] = torch.device("meta")
    try:
        result = step.op(*meta_args, **meta_kwargs)
    except Exception:          # noqa: BLE001 - the real call reports what is wrong with the step
        return
    for leaf in torch.utils._pytree.tree_leaves(result):
        if isinstance(leaf, torch.Tensor):
            check_size(step, leaf.shape, leaf.dtype, limit)
