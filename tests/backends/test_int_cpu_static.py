"""Static programs (hwact/backends/int_cpu_static.py, int_cpu_runner/): a plan compiled for fixed shapes
runs as one C call, bit-exact with the integer reference on every ISA, as hwact_run natively and under
qemu-aarch64 (NEON dot product, plain NEON, scalar); its data movement equals torch's on random integers;
what it cannot run keeps the Python executor with the reason; malformed programs are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from hwact.backends import int_cpu_lib
from hwact.backends.int_cpu_plan import make_plan, read_plan, write_plan
from hwact.backends.int_cpu_runtime import IntCpuProgram
from hwact.backends.int_cpu_static import OPCODES, StaticProgram, load_static
from hwact.backends.toolchain import aarch64_emulator
from hwact.errors import InputError
from tests.backends.test_int_cpu_backend import integer_graph

MODELS = [("vit-tiny", "int8-shiftgelu"), ("swin-tiny", "int8-shiftgelu"), ("convnext-tiny", "int8-relu"),
          ("cnn-tiny", "int8-relu"), ("bert-tiny", "int8-shiftgelu"), ("vit-digits", "int8-relu")]


@pytest.fixture(scope="module")
def library():
    library = int_cpu_lib.load(int_cpu_lib.build())
    yield library
    library.hw_force_isa(-2)


def _reference(graph, batch):
    expected = graph(*batch)
    return list(expected) if isinstance(expected, (tuple, list)) else [expected]


def _inputs(graph, seed: int):
    """Three batches of one shape: the graph's examples, far outside the calibrated range (every code
    saturates), and plain noise."""
    first = graph.example_inputs(batch=3)
    if not first[0].is_floating_point():
        return [first, graph.example_inputs(batch=3), graph.example_inputs(batch=3)]
    generator = torch.Generator().manual_seed(seed)
    return [first, tuple(x * 60 for x in first), (torch.randn(first[0].shape, generator=generator) * 3,)]


@pytest.fixture(scope="module")
def compiled(library, tmp_path_factory):
    """model -> (graph, program whose first call compiled the static program, inputs)."""
    made = {}
    for model, recipe in MODELS:
        graph = integer_graph(model, recipe)
        folder = tmp_path_factory.mktemp(model)
        write_plan(make_plan(graph), folder)
        program = IntCpuProgram(read_plan(folder), library)
        inputs = _inputs(graph, 1)
        program(*inputs[0])
        made[model] = (graph, program, inputs, folder)
    return made


@pytest.mark.parametrize("model", [m for m, _ in MODELS])
def test_static_program_equals_the_reference_on_every_isa(model, compiled, library):
    graph, program, inputs, _ = compiled[model]
    shapes = [tuple(x.shape) for x in inputs[0]]
    assert program.executor(*shapes)["executor"] == "static C program"
    static = program.static[program.signature(*inputs[0])]
    tried = 0
    for isa in range(5):
        if not library.hw_isa_available(isa):
            continue
        assert library.hw_force_isa(isa) == 0                 # the program repacks its weights for it
        for batch in inputs:
            for got, want in zip(static(*batch), _reference(graph, batch)):
                assert torch.equal(got, want), library.hw_isa_name(isa)
        tried += 1
    library.hw_force_isa(-2)
    assert tried >= 2


QEMU_CPUS = [("max", None, "neon-dotprod"), ("cortex-a53", None, "neon"), ("max", 0, "scalar")]


@pytest.fixture(scope="module")
def arm_runner():
    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("qemu-aarch64 / aarch64-linux-gnu-gcc not installed (make tools)")
    return int_cpu_lib.build("aarch64", runner=True)


@pytest.mark.parametrize("model", ["vit-tiny", "swin-tiny", "cnn-tiny", "bert-tiny"])
@pytest.mark.parametrize("cpu,isa,path", QEMU_CPUS)
def test_whole_models_run_bit_exact_on_aarch64_under_qemu(model, cpu, isa, path, compiled, arm_runner):
    graph, program, inputs, folder = compiled[model]
    static = program.static[program.signature(*inputs[0])]
    static.save(folder)
    for batch in inputs[:2]:
        produced, reported = static.run_driver(arm_runner, folder, batch, (*aarch64_emulator(), "-cpu", cpu), isa=isa)
        assert reported == path
        for got, want in zip(produced, _reference(graph, batch)):
            assert torch.equal(got, want)


def _torch_plan(folder, steps: list[dict], inputs: list[str], outputs: list[str], constants: dict):
    body = {"format": "hwact-int-cpu-plan", "version": 1, "inputs": inputs, "outputs": outputs, "steps": steps}
    (folder / "plan.json").write_text(json.dumps(body))
    np.savez(folder / "constants.npz", **constants)
    return read_plan(folder)


def _step(name, op, *args, out_type="other"):
    return {"name": name, "op": op, "args": list(args), "kwargs": {}, "out_type": out_type}


def ref(name):
    return {"ref": name}


def test_data_movement_and_integer_arithmetic_equal_torch(library, tmp_path):
    """Every kind of data movement and integer op the runner has, on random int8 codes and token ids with
    negative values, wrap-around and a mask, against the same plan run by torch (the Python executor)."""
    steps = [
        _step("ids32", "aten._to_copy.default", ref("ids"), out_type="int32"),
        _step("pad", "aten.constant_pad_nd.default", ref("x"), [1, 2, 0, 1], -7, out_type="int8"),
        _step("rolled", "aten.roll.default", ref("pad"), [2, -3], [1, 2], out_type="int8"),
        _step("perm", "aten.permute.default", ref("rolled"), [0, 2, 1]),
        _step("copy", "aten.clone.default", ref("perm"), out_type="int8"),
        _step("cat", "aten.cat.default", [ref("copy"), ref("copy")], 1, out_type="int8"),
        _step("sum", "aten.sum.dim_IntList", ref("cat"), [1], True, out_type="int32"),
        _step("big", "aten.mul.Tensor", ref("sum"), ref("sum"), out_type="int32"),
        _step("wrap", "aten.add.Tensor", ref("x"), ref("x"), out_type="int8"),          # int8 wraps
        _step("keep", "aten.eq.Scalar", ref("ids"), 0),
        _step("not", "aten.logical_not.default", ref("keep")),
        _step("and", "aten.__and__.Tensor", {"const": "table"}, ref("keep")),
        _step("picked", "aten.index.Tensor", ref("x"), [None, {"const": "rows"}]),
        _step("gathered", "aten.gather.default", ref("ids"), 1, {"const": "columns"}),
        _step("neg", "aten.neg.default", ref("ids32"), out_type="int32"),
        _step("clamped", "aten.clamp.default", ref("x"), -5, 9, out_type="int8"),
        _step("relu", "aten.clamp.default", ref("x"), 0.0, out_type="float32"),     # float bound: float result
    ]
    outputs = ["big", "wrap", "not", "and", "picked", "gathered", "neg", "clamped", "relu"]
    constants = {"table": np.array([True, False, True, True, False, True]),
                 "rows": np.array([3, 0, 0, 2, 1], dtype=np.int64),
                 "columns": np.array([[5, 0, 1], [2, 2, 4], [0, 3, 5]], dtype=np.int64)}
    plan = _torch_plan(tmp_path, steps, ["x", "ids"], outputs, constants)
    static_program = IntCpuProgram(plan, library)
    python_program = IntCpuProgram(plan, library, use_static=False)
    generator = torch.Generator().manual_seed(0)
    for trial in range(6):
        x = torch.randint(-128, 128, (3, 4, 5), dtype=torch.int8, generator=generator)
        ids = torch.randint(-3, 4, (3, 6), generator=generator)
        if trial == 1:
            x[:] = 127
        produced, expected = static_program(x, ids), python_program(x, ids)
        for name, got, want in zip(outputs, produced, expected):
            assert got.dtype == want.dtype and torch.equal(got, want), name
    assert static_program.executor((3, 4, 5), (3, 6))["executor"] == "static C program"


def test_what_the_runner_cannot_compute_keeps_the_python_executor(library, tmp_path):
    plan = _torch_plan(tmp_path, [_step("twice", "aten.add.Tensor", ref("x"), ref("x"), out_type="float32")],
                       ["x"], ["twice"], {"unused": np.zeros(1, np.int8)})
    program = IntCpuProgram(plan, library)
    x = torch.randn(4, 5)
    assert torch.equal(program(x)[0], x + x) and torch.equal(program(x)[0], x + x)
    executor = program.executor((4, 5))
    assert executor["executor"] == "python" and "float arithmetic" in executor["why"]


def test_an_embedding_id_outside_the_table_is_refused_by_the_runner(compiled):
    graph, program, inputs, _ = compiled["bert-tiny"]
    ids = inputs[0][0].clone()
    ids[1, 2] = 10_000
    with pytest.raises(InputError, match="token id outside the embedding table"):
        program(ids)


def test_malformed_programs_are_refused(compiled, library):
    _, program, inputs, _ = compiled["cnn-tiny"]
    static: StaticProgram = program.static[program.signature(*inputs[0])]
    words, constants = static.words.copy(), static.constants
    cases = {
        "not an hwact static program": (words[:5], constants),
        "constants do not belong": (words, constants[:-64] + bytes(64)),
        "malformed region": (np.r_[words[:10], [9, 0, 0], words[13:]], constants),
        "malformed instruction": (_bad_opcode(words), constants),
        "trailing words": (np.r_[words, [0]], constants),
    }
    for message, (code, blob) in cases.items():
        with pytest.raises(InputError, match=message):
            load_static(library, code, blob, static.inputs, static.outputs)


def _bad_opcode(words: np.ndarray) -> np.ndarray:
    """The first instruction's opcode replaced by one past the last."""
    bad = words.copy()
    regions = int(bad[4])
    bad[10 + 3 * regions] = 99
    return bad


@pytest.mark.parametrize("seed", range(8))
def test_random_strided_copies_equal_torch(library, tmp_path, seed):
    """permute + strided slice + copy + type conversion of random shapes (size-1 dims, merged dims, odd
    steps) through the runner's strided copy."""
    rng = np.random.default_rng(seed)
    shape = [int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 6)))]
    order = [int(v) for v in rng.permutation(len(shape))]
    dim = int(rng.integers(len(shape)))
    permuted = [shape[d] for d in order]
    start, step = int(rng.integers(0, max(1, permuted[dim] - 1))), int(rng.integers(1, 3))
    target = ["int8", "int16", "int32"][seed % 3]
    steps = [_step("p", "aten.permute.default", ref("x"), order),
             _step("s", "aten.slice.Tensor", ref("p"), dim, start, permuted[dim], step),
             _step("c", "aten.clone.default", ref("s"), out_type="int8"),
             _step("t", "aten._to_copy.default", ref("s"), out_type=target, )]
    steps[-1]["kwargs"] = {"dtype": {"dtype": target}}
    plan = _torch_plan(tmp_path, steps, ["x"], ["c", "t"], {"unused": np.zeros(1, np.int8)})
    program = IntCpuProgram(plan, library)
    for trial in range(2):
        x = torch.from_numpy(rng.integers(-128, 128, size=shape).astype(np.int8))
        c, t = program(x)
        want = x.permute(order)[(slice(None),) * dim + (slice(start, None, step),)]
        assert torch.equal(c, want) and torch.equal(t, want.to(getattr(torch, target)))
    assert program.executor(tuple(shape))["executor"] == "static C program"


@pytest.mark.parametrize("model", ["cnn-tiny", "convnext-tiny"])
def test_one_image_convolutions_are_bit_exact(model, compiled, library):
    """Batch 1: each conv's GEMM writes the NCHW result itself (no NHWC copy), in both executors."""
    graph, _, _, folder = compiled[model]
    program = IntCpuProgram(read_plan(folder), library)
    for batch in (graph.example_inputs(batch=1), tuple(x * 60 for x in graph.example_inputs(batch=1))):
        for got, want in zip(program(*batch), _reference(graph, batch)):   # Python executor, then static
            assert torch.equal(got, want)
    assert program.executor(*[x.shape for x in batch])["executor"] == "static C program"


def test_a_hugging_face_bert_runs_whole_on_aarch64_under_qemu(cli, tmp_path, arm_runner, library):
    """A model hwact did not write (transformers' BERT with an attention mask: gathers and integer mask
    arithmetic in the program) converted for cortex-a76: hwact_run under qemu-aarch64 is bit-exact."""
    from hwact import hf_suite

    pt2, calib, _ = hf_suite.save_files("bert", tmp_path, calibration=8)
    out = tmp_path / "arm"
    code, _, stderr = cli("convert", pt2, "--recipe", "int8-shiftgelu", "--calib", calib, "--target", "cortex-a76",
                          "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["int_cpu"]
    assert section["verified"] is True and section["executor"] == "static C program"
    assert section["runner"]["ran"] == "qemu-aarch64 -cpu max" and section["runner"]["batches"] >= 1
    static = load_static(library, np.fromfile(out / "program.bin", dtype="<i8"),
                         (out / "program_constants.bin").read_bytes(), [], [])
    kinds = {OPCODES[library.hw_program_opcode(static.handle, i)] for i in range(static.instructions)}
    assert {"gather", "elementwise", "hw_embedding", "hw_shiftmax"} <= kinds
