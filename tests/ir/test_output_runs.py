"""hwact.ir.metrics.output_runs spreads calibration batches over torch's threads: the outputs come back in batch
order, equal to running the batches one after another, and torch's thread count is restored (also on error)."""

from __future__ import annotations

import pytest
import torch

from hwact.ir.graph import InputSpec, trace
from hwact.ir.metrics import output_runs


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.arange(16.0).reshape(16, 1))

    def forward(self, x):
        return torch.cumsum(x, dim=1) * 3, x @ self.weight


def test_batches_come_back_in_order_and_threads_are_restored():
    graph = trace(Scaled(), [InputSpec("x", (2, 16), torch.float32)])
    batches = [(torch.full((2, 16), float(i)),) for i in range(7)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = output_runs(graph, batches)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len(runs) == 7
    for (x,), outs in zip(batches, runs):
        assert torch.equal(outs[0], torch.cumsum(x, dim=1) * 3) and torch.equal(outs[1], x @ torch.arange(16.0).reshape(16, 1))


def test_an_error_in_one_batch_reaches_the_caller_and_threads_are_restored():
    graph = trace(Scaled(), [InputSpec("x", (2, 16), torch.float32)])
    batches = [(torch.zeros(2, 16),), (torch.zeros(2, 15),), (torch.ones(2, 16),)]   # 15 columns: x @ W fails
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            output_runs(graph, batches)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
