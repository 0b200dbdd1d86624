"""Integer element functions (hwact::int_lut, hwact::int_mul): hand-computed values, an independent
pure-Python re-derivation, edge codes, rounding of negative halves, saturation, broadcasting, the guards,
and bit-exactness of both ONNX translations under onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwact.errors import PreconditionError
from hwact.ir import int_elementwise_ops as ew
from hwact.ir.int_ops import dyadic
from hwact.ir.ops import output_bounds
from int_helpers import edge_int8, onnx_outputs

hw = torch.ops.hwact
INT16_EDGES = [-32768, 32767, 0, -32767, 32766, -1, 1]


def py_lut(codes: list[int], table: list[int], in_qmin: int, qmin: int, qmax: int) -> list[int]:
    return [min(max(table[min(max(c - in_qmin, 0), len(table) - 1)], qmin), qmax) for c in codes]


def py_mul(a: int, b: int, multiplier: float, qmin: int, qmax: int) -> int:
    """The requantized product on python ints: floor((a·b·m0 + 2^(shift-1)) / 2^shift), clamped."""
    m0, shift = dyadic(multiplier)
    value = (a * b * m0 + (1 << shift >> 1)) >> shift
    return min(max(value, qmin), qmax)


# ----- int_lut -------------------------------------------------------------------------------------
def test_int_lut_hand_computed_values():
    # table for codes -2..2: f(q) = q², clamped to [0, 3] on the way out
    table = torch.tensor([4, 1, 0, 1, 4], dtype=torch.int32)
    q = torch.tensor([[-2, -1, 0, 1, 2]], dtype=torch.int32)
    out = hw.int_lut(q, table, -2, 0, 3)
    assert out.dtype == torch.int32 and out.tolist() == [[3, 1, 0, 1, 3]]
    # codes outside the table's span are saturated to its ends
    assert hw.int_lut(torch.tensor([-7, 9], dtype=torch.int32), table, -2, 0, 10).tolist() == [4, 4]


@pytest.mark.parametrize("in_bounds", [(-128, 127), (0, 255), (-32768, 32767)])
def test_int_lut_matches_python_on_every_code(in_bounds):
    generator = torch.Generator().manual_seed(in_bounds[1])
    size = in_bounds[1] - in_bounds[0] + 1
    table = torch.randint(-200, 200, (size,), generator=generator, dtype=torch.int32)
    codes = torch.arange(in_bounds[0], in_bounds[1] + 1, dtype=torch.int32)
    got = hw.int_lut(codes, table, in_bounds[0], -128, 127).tolist()
    assert got == py_lut(codes.tolist(), table.tolist(), in_bounds[0], -128, 127)


def test_int_lut_declares_its_bounds():
    class Lut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.zeros(256, dtype=torch.int32))

        def forward(self, q):
            return hw.int_lut(q, self.table, -128, 0, 255)

    from hwact.ir.graph import InputSpec, trace
    graph = trace(Lut(), [InputSpec("q", (2, 4), torch.int32)])
    (node,) = [n for n in graph.call_nodes() if n.target is hw.int_lut.default]
    assert output_bounds(node) == (0, 255)


@pytest.mark.parametrize("table", [torch.zeros(0, dtype=torch.int32), torch.zeros(ew.TABLE_LIMIT + 1, dtype=torch.int32),
                                   torch.zeros(4, 4, dtype=torch.int32), torch.zeros(8)])
def test_int_lut_refuses_a_table_that_is_not_one_entry_per_code(table):
    with pytest.raises(PreconditionError, match="int_lut"):
        hw.int_lut(torch.zeros(3, dtype=torch.int32), table, 0, -128, 127)


class _Luts(torch.nn.Module):
    """Three tables at once: int8 codes, uint8 codes (table entries beyond [qmin, qmax]), int16 codes."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.register_buffer("t8", torch.randint(-128, 128, (256,), generator=generator, dtype=torch.int32))
        self.register_buffer("tu8", torch.randint(-1000, 1000, (256,), generator=generator, dtype=torch.int32))
        self.register_buffer("t16", torch.randint(-32768, 32768, (65536,), generator=generator, dtype=torch.int32))

    def forward(self, q8, qu8, q16):
        return (hw.int_lut(q8, self.t8, -128, -128, 127), hw.int_lut(qu8, self.tu8, 0, -100, 300),
                hw.int_lut(q16, self.t16, -32768, -32768, 32767))


def test_int_lut_onnx_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(0)
    module = _Luts(generator)
    q8 = edge_int8((8, 3, 50), generator)
    qu8 = edge_int8((8, 3, 50), generator, 0, 255)
    qu8[0, 0, :4] = torch.tensor([-5, 256, 1000, -1000], dtype=torch.int32)  # outside the span: saturated
    q16 = edge_int8((8, 3, 50), generator, -32768, 32767)
    q16[1, 0, : len(INT16_EDGES)] = torch.tensor(INT16_EDGES, dtype=torch.int32)
    expected = module(q8, qu8, q16)
    got = onnx_outputs(module, [q8, qu8, q16], tmp_path / "lut.onnx")
    for g, e in zip(got, expected):
        assert g.dtype == np.int32 and np.array_equal(g, e.numpy())
    assert expected[1][0, 0, :4].tolist() == py_lut([-5, 256, 1000, -1000], module.tu8.tolist(), 0, -100, 300)


# ----- int_mul -------------------------------------------------------------------------------------
def test_int_mul_rounds_negative_halves_up():
    # multiplier 1/4 exactly (m0 = 2^30, shift = 32): a·b/4 = 1.5, -1.5, -1.25, -1.75, 0.5, -0.5, 2.5, -2.5
    a = torch.tensor([3, -3, -5, -7, 1, -1, 5, -5], dtype=torch.int32)
    b = torch.tensor([2, 2, 1, 1, 2, 2, 2, 2], dtype=torch.int32)
    out = hw.int_mul(a, b, 0.25, -128, 127)
    assert out.dtype == torch.int32 and out.tolist() == [2, -1, -1, -2, 1, 0, 3, -2]


def test_int_mul_saturates_and_broadcasts():
    x = torch.tensor([[[100], [-100]], [[127], [-128]]], dtype=torch.int32)     # (2, 2, 1)
    gate = torch.tensor([255, 128, 0], dtype=torch.int32)                       # (3,)
    out = hw.int_mul(x, gate, 1 / 255, -128, 127)
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[100, 50, 0], [-100, -50, 0]]     # 100·128/255 = 50.2; -50.2 -> -50
    assert out[1].tolist() == [[127, 64, 0], [-128, -64, 0]]     # 127·128/255 = 63.75 -> 64
    assert hw.int_mul(x, gate, 1.0, -128, 127)[1].tolist() == [[127, 127, 0], [-128, -128, 0]]


def test_int_mul_matches_python_on_random_and_extreme_codes():
    generator = torch.Generator().manual_seed(5)
    a = torch.cat([torch.tensor(INT16_EDGES), torch.randint(-32768, 32768, (3000,), generator=generator)])
    b = torch.cat([torch.tensor(INT16_EDGES[::-1]), torch.randint(-32768, 32768, (3000,), generator=generator)])
    a, b = a.to(torch.int32), b.to(torch.int32)
    for multiplier, bounds in ((2.0**-30, (-32768, 32767)), (3.7e-6, (-128, 127)), (1e-3, (-32768, 32767)),
                               (0.5, (-(2**31), 2**31 - 1))):
        got = hw.int_mul(a, b, multiplier, *bounds).tolist()
        assert got == [py_mul(x, y, multiplier, *bounds) for x, y in zip(a.tolist(), b.tolist())]


def test_int_mul_refuses_operands_beyond_int16():
    small = torch.tensor([1, 2], dtype=torch.int32)
    for big in (torch.tensor([32768, 0], dtype=torch.int32), torch.tensor([0, -32769], dtype=torch.int32)):
        with pytest.raises(PreconditionError, match="beyond int16"):
            hw.int_mul(big, small, 0.01, -128, 127)
        with pytest.raises(PreconditionError, match="beyond int16"):
            hw.int_mul(small, big, 0.01, -128, 127)
    with pytest.raises(PreconditionError, match="multiplier"):
        hw.int_mul(small, small, 0.0, -128, 127)


class _Muls(torch.nn.Module):
    """Squeeze-excite gating (N, C, H, W) · (N, C, 1, 1), a gated unit of int16 codes, a row broadcast."""

    def forward(self, x, gate, a, b, row):
        return (hw.int_mul(x, gate, 1 / 255 * 0.7, -128, 127),
                hw.int_mul(a, b, 2.0**-15 * 0.93, -32768, 32767),
                hw.int_mul(x, row, 0.004, 0, 255),
                hw.int_mul(a, b, 0.25, -128, 127))


def test_int_mul_onnx_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(1)
    x = edge_int8((4, 6, 5, 5), generator)
    gate = edge_int8((4, 6, 1, 1), generator, 0, 255)
    a = edge_int8((4, 10, 40), generator, -32768, 32767)
    a[0, 0, : len(INT16_EDGES)] = torch.tensor(INT16_EDGES, dtype=torch.int32)
    b = edge_int8((4, 10, 40), generator, -32768, 32767)
    b[0, 0, : len(INT16_EDGES)] = torch.tensor(INT16_EDGES[::-1], dtype=torch.int32)
    b[1, :, :] = 2  # with multiplier 1/4: a·2/4 = a/2, every odd a a tie (negative halves included)
    row = edge_int8((4, 1, 1, 5), generator)
    inputs = [x, gate, a, b, row]
    expected = _Muls()(*inputs)
    got = onnx_outputs(_Muls(), inputs, tmp_path / "mul.onnx")
    for g, e in zip(got, expected):
        assert g.dtype == np.int32 and np.array_equal(g, e.numpy())
    assert expected[3][1].tolist() == [[py_mul(v, 2, 0.25, -128, 127) for v in r] for r in a[1].tolist()]
    assert (expected[3] == 127).any() and (expected[3] == -128).any()   # saturated at qmax and qmin
