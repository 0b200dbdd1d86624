"""Lookups and masks (hwact::int_embedding, hwact::int_mask): hand-computed values, the declared output
bounds, and bit-exactness of the ONNX translations against the references in onnxruntime on random codes
(ids at the table's ends, masks broadcast over the scores)."""

from __future__ import annotations

import numpy as np
import torch

from hwact.ir import int_ops  # noqa: F401  (registers the ops)
from hwact.ir.graph import InputSpec, trace
from hwact.ir.ops import output_bounds
from int_helpers import edge_int8, onnx_outputs

hw = torch.ops.hwact


# ----- int_embedding -------------------------------------------------------------------------------
def test_int_embedding_hand_computed():
    table = torch.tensor([[1, -2], [127, -127], [0, 5]], dtype=torch.int8)
    ids = torch.tensor([[2, 0], [1, 1]])
    out = hw.int_embedding(table, ids)
    assert out.dtype == torch.int32 and out.tolist() == [[[0, 5], [1, -2]], [[127, -127], [127, -127]]]


class _Lookup(torch.nn.Module):
    def __init__(self, generator: torch.Generator, rows: int = 37, width: int = 16):
        super().__init__()
        self.register_buffer("table", torch.randint(-127, 128, (rows, width), generator=generator,
                                                    dtype=torch.int32).to(torch.int8))

    def forward(self, ids):
        return hw.int_embedding(self.table, ids)


def test_int_embedding_declares_int8_bounds():
    graph = trace(_Lookup(torch.Generator().manual_seed(0)), [InputSpec("ids", (2, 5), torch.int64, high=37)])
    (node,) = [n for n in graph.call_nodes() if n.target is hw.int_embedding.default]
    assert output_bounds(node) == (-127, 127)


def test_int_embedding_onnx_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(1)
    module = _Lookup(generator)
    ids = torch.randint(0, 37, (4, 23), generator=generator)
    ids[0, :3] = torch.tensor([0, 36, 18])  # both ends of the table
    expected = module(ids)
    assert torch.equal(expected, module.table.to(torch.int32)[ids])
    (got,) = onnx_outputs(module, [ids], tmp_path / "embedding.onnx")
    assert got.dtype == np.int32 and np.array_equal(got, expected.numpy())


def test_int_embedding_onnx_takes_int32_ids(tmp_path):
    generator = torch.Generator().manual_seed(2)
    module = _Lookup(generator)
    ids = torch.randint(0, 37, (3, 9), generator=generator, dtype=torch.int32)
    (got,) = onnx_outputs(module, [ids], tmp_path / "embedding32.onnx")
    assert np.array_equal(got, module(ids).numpy())


# ----- int_mask ------------------------------------------------------------------------------------
def test_int_mask_hand_computed():
    q = torch.tensor([[5, -128, 127], [0, 1, 2]], dtype=torch.int32)
    keep = torch.tensor([True, False, True])   # broadcast over the rows
    out = hw.int_mask(q, keep, -32768, 127)
    assert out.dtype == torch.int32 and out.tolist() == [[5, -32768, 127], [0, -32768, 2]]


class _Mask(torch.nn.Module):
    def __init__(self, fill: int, qmax: int):
        super().__init__()
        self.fill, self.qmax = fill, qmax

    def forward(self, q, keep):
        return hw.int_mask(q, keep, self.fill, self.qmax)


def test_int_mask_declares_fill_to_qmax():
    graph = trace(_Mask(-32768, 255), [InputSpec("q", (2, 4, 4), torch.int32), InputSpec("keep", (2, 1, 4),
                                                                                       torch.bool)])
    (node,) = [n for n in graph.call_nodes() if n.target is hw.int_mask.default]
    assert output_bounds(node) == (-32768, 255)


def test_int_mask_onnx_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(3)
    q = edge_int8((4, 2, 6, 6), generator)
    keep = torch.rand(4, 1, 1, 6, generator=generator) > 0.4   # a key mask broadcast over heads and queries
    for fill, qmax, name in ((-32768, 127, "int16"), (-128, 127, "int8")):
        module = _Mask(fill, qmax)
        expected = module(q, keep)
        assert torch.equal(expected, torch.where(keep, q, fill))
        got = onnx_outputs(module, [q, keep], tmp_path / f"mask_{name}.onnx")[0]
        assert got.dtype == np.int32 and np.array_equal(got, expected.numpy())


def test_int_mask_onnx_with_a_constant_mask(tmp_path):
    class Causal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("keep", torch.ones(5, 5, dtype=torch.bool).tril())

        def forward(self, q):
            return hw.int_mask(q, self.keep, -32768, 255)

    generator = torch.Generator().manual_seed(4)
    q = edge_int8((3, 5, 5), generator, 0, 255)
    (got,) = onnx_outputs(Causal(), [q], tmp_path / "causal.onnx")
    expected = torch.where(torch.ones(5, 5, dtype=torch.bool).tril(), q, -32768)
    assert np.array_equal(got, expected.numpy())
