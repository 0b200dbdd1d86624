"""The int-cpu runtime's memory: the static activation arena (buffers alive at the same step never share
bytes; runs that use it stay bit-exact and never touch what an earlier call returned) and the size guard
that refuses a hostile plan's giant tensor before it is allocated."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from hwact.backends import int_cpu_lib
from hwact.backends.int_cpu_memory import ALIGN, Buffer, place
from hwact.backends.int_cpu_plan import make_plan, read_plan, write_plan
from hwact.backends.int_cpu_runtime import IntCpuProgram
from hwact.errors import InputError
from tests.backends.test_int_cpu_backend import integer_graph


@pytest.fixture(scope="module")
def library():
    return int_cpu_lib.load(int_cpu_lib.build())


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("seed", range(20))
def test_live_buffers_never_share_bytes(seed):
    rng = random.Random(seed)
    buffers = []
    for step in range(rng.randint(1, 60)):
        last = step + rng.choice([0, 0, 1, 2, 5, 30])
        buffers.append(Buffer(step, rng.choice([1, 7, 64, 100, 4096, rng.randint(1, 100_000)]), step, last))
    layout = place(buffers)
    for i, a in enumerate(buffers):
        start, size = layout.offsets[a.step]
        assert start % ALIGN == 0 and start + size <= layout.arena_bytes and size == a.nbytes
        for b in buffers[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                other = layout.offsets[b.step]
                assert not _overlap((start, start + size), (other[0], other[0] + other[1])), (a, b)
    peak_live = max(sum(b.nbytes for b in buffers if b.first <= step <= b.last) for step in range(len(buffers) + 30))
    assert peak_live <= layout.arena_bytes <= layout.activation_bytes + ALIGN * len(buffers)
    assert layout.activation_bytes == sum(b.nbytes for b in buffers)


def test_a_chain_reuses_two_slots():
    """x0 -> x1 -> x2 -> x3, each read only by the next step: two buffers' worth of memory."""
    layout = place([Buffer(step, 1000, step, step + 1) for step in range(4)])
    assert layout.arena_bytes == 2 * 1024 and layout.activation_bytes == 4000
    assert layout.offsets[0][0] == layout.offsets[2][0] != layout.offsets[1][0] == layout.offsets[3][0]


def test_arena_runs_are_bit_exact_and_leave_returned_outputs_alone(library, tmp_path):
    graph = integer_graph("vit-tiny")
    write_plan(make_plan(graph), tmp_path)
    program = IntCpuProgram(read_plan(tmp_path), library, use_static=False)   # the Python executor's arena
    inputs = [graph.example_inputs(batch=3) for _ in range(3)] + [(torch.randn(3, 3, 32, 32) * 40,)]
    returned = [program(*batch)[0] for batch in inputs]          # the first records; the others use the arena
    layout = program.layout((3, 3, 32, 32))
    assert layout is not None and len(program.layouts) == 1
    assert 0 < layout.arena_bytes < layout.activation_bytes / 3   # the activations share memory
    for batch, produced in zip(inputs, returned):              # none was overwritten by a later call
        assert torch.equal(produced, graph(*batch))
    arena = program.layouts[next(iter(program.layouts))][1]
    assert all(produced.untyped_storage().data_ptr() != arena.untyped_storage().data_ptr() for produced in returned)
    program(*graph.example_inputs(batch=5))                    # a new shape gets its own layout
    assert len(program.layouts) == 2 and program.layout((5, 3, 32, 32)).arena_bytes > layout.arena_bytes


def _one_step_plan(folder, op: str, args: list):
    body = {"format": "hwact-int-cpu-plan", "version": 1, "inputs": ["x"], "outputs": ["big"],
            "steps": [{"name": "big", "op": op, "args": args, "kwargs": {}, "out_type": "other"}]}
    (folder / "plan.json").write_text(json.dumps(body))
    np.savez(folder / "constants.npz", unused=np.zeros(1, np.int8))
    return read_plan(folder)


@pytest.mark.parametrize("op,args", [
    ("aten.full.default", [[1024, 1024, 4], 0]),                  # 4 Mi int64 elements = 32 MiB
    ("aten.constant_pad_nd.default", [{"ref": "x"}, [0, 1 << 22], 0]),
    ("aten.arange.default", [1 << 23]),
    ("aten.clone.default", [{"ref": "x"}]),                       # fine: the input's own size
])
def test_a_hostile_plan_cannot_allocate_a_giant_tensor(library, tmp_path, op, args):
    program = IntCpuProgram(_one_step_plan(tmp_path, op, args), library)
    program.memory_limit = 1 << 20                                # 1 MiB per step, so a failure is cheap
    x = torch.zeros(8, 8, dtype=torch.int8)
    if op == "aten.clone.default":
        assert torch.equal(program(x)[0], x)
        return
    with pytest.raises(InputError, match=r"plan step big \(.*\) asks for a tensor of shape .* more than"):
        program(x)
