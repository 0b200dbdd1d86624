"""A per-tensor MinMaxObserver keeps its range as python floats: calibrate holds one per node across all
batches, and small tensors kept that long fragmented the heap (zoo:vit-s16's calibrate held 420 MiB of
freed activations, the convert's peak RSS). Same range as torch's min/max."""

from __future__ import annotations

import torch

from hwact.quant.observers import MinMaxObserver


def test_per_tensor_range_is_floats_and_exact():
    observer = MinMaxObserver()
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(3, 50, generator=generator) * (i + 1) for i in range(4)]
    for x in values:
        observer.observe(x)
    assert isinstance(observer.lo, float) and isinstance(observer.hi, float) and observer.state_size() == 2
    everything = torch.cat([x.reshape(-1) for x in values])
    assert observer.range() == (float(everything.min()), float(everything.max()))


def test_per_channel_range_stays_vectors():
    observer = MinMaxObserver(axis=1)
    observer.observe(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    lo, hi = observer.channel_ranges()
    assert lo.tolist() == [1.0, -2.0] and hi.tolist() == [3.0, 4.0] and observer.state_size() == 4
