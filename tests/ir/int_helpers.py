"""Shared test helpers for integer ops: run a small module through hwact's ONNX export and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hwact.backends.onnx import export_onnx, ort_session
from hwact.ir.graph import InputSpec, trace


def onnx_outputs(module: torch.nn.Module, inputs: list[torch.Tensor], path: Path) -> list[np.ndarray]:
    """Trace `module` on `inputs` (batch dim dynamic), export to ONNX at `path`, run onnxruntime on them."""
    specs = [InputSpec(f"in{i}", tuple(t.shape), t.dtype) for i, t in enumerate(inputs)]
    graph = trace(module, specs)
    export_onnx(graph, path)
    session = ort_session(path)
    feeds = {f"in{i}": t.numpy() for i, t in enumerate(inputs)}
    return session.run(None, feeds)


def edge_int8(shape: tuple[int, ...], generator: torch.Generator, low: int = -128, high: int = 127) -> torch.Tensor:
    """Random int32 values in [low, high] with the extremes and zero planted at the front."""
    values = torch.randint(low, high + 1, shape, generator=generator, dtype=torch.int32).reshape(-1)
    edges = torch.tensor([low, high, 0, low + 1, high - 1], dtype=torch.int32)
    values[: min(len(edges), values.numel())] = edges[: values.numel()]
    return values.reshape(shape)


class OpModule(torch.nn.Module):
    """fn(self, q) as a module, with tensors it reads registered as buffers (so they export as constants)."""

    def __init__(self, fn, **buffers):
        super().__init__()
        self.fn = fn
        for name, value in buffers.items():
            self.register_buffer(name, value)

    def forward(self, q):
        return self.fn(self, q)


def assert_onnx_bit_exact(module: torch.nn.Module, q: torch.Tensor, tmp_path: Path, name: str) -> None:
    """The module's int32 output equals its ONNX export's under onnxruntime, element for element."""
    want = module(q)
    got = onnx_outputs(module, [q], tmp_path / f"{name}.onnx")[0]
    assert got.dtype == np.int32
    assert np.array_equal(got, want.numpy()), f"{name}: {int((got != want.numpy()).sum())} elements differ"
