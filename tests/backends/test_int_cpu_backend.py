"""The int-cpu backend end to end: a plan of an integer graph run by hwact's kernels equals the integer
reference bit for bit (every ISA this CPU has, plus scalar), convert writes and verifies it, bench times
it, and a folder's plan is hostile input (the folder's library is never loaded)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from hwact.backends import int_cpu_lib
from hwact.backends.int_cpu_plan import make_plan, read_plan, write_plan
from hwact.backends.int_cpu_runtime import IntCpuProgram, broadcast_pattern
from hwact.errors import InputError
from hwact.load import load
from hwact.passes.base import make_pass
from hwact.passes.recipes import RECIPES

ISAS = (0, 1, 2, 3, 4)


def integer_graph(model: str, recipe: str = "int8-shiftgelu"):
    graph = load(f"zoo:{model}").graph
    batches = [graph.example_inputs(batch=2) for _ in range(2)]
    for name in RECIPES[recipe].passes:
        graph, _ = make_pass(name, {"calibration_batches": batches})(graph)
    return graph


@pytest.fixture(scope="module")
def library():
    library = int_cpu_lib.load(int_cpu_lib.build())
    yield library
    library.hw_force_isa(-2)


@pytest.mark.parametrize("model,recipe", [("vit-tiny", "int8-shiftgelu"), ("swin-tiny", "int8-shiftgelu"),
                                          ("convnext-tiny", "int8-relu"), ("cnn-tiny", "int8-relu"),
                                          ("bert-tiny", "int8-shiftgelu")])
def test_runtime_equals_the_integer_reference_on_every_isa(model, recipe, library, tmp_path):
    graph = integer_graph(model, recipe)
    write_plan(make_plan(graph), tmp_path)
    program = IntCpuProgram(read_plan(tmp_path), library, threads=2)
    generator = torch.Generator().manual_seed(1)
    inputs = [graph.example_inputs(batch=3)]
    if inputs[0][0].is_floating_point():   # inputs far outside the calibrated range: every code saturates
        inputs.append(tuple(x * 50 for x in graph.example_inputs(batch=2)))
        inputs.append((torch.randn(inputs[0][0].shape, generator=generator),))
    tried = 0
    for isa in ISAS:
        if not library.hw_isa_available(isa):
            continue
        assert library.hw_force_isa(isa) == 0
        program.packed.clear()                 # weights are packed for the ISA in use
        for batch in inputs:
            expected = graph(*batch)
            expected = expected[0] if isinstance(expected, (tuple, list)) else expected
            assert torch.equal(program(*batch)[0], expected), library.hw_isa_name(isa)
        tried += 1
    library.hw_force_isa(-2)
    assert tried >= 2      # scalar plus at least the host's vector path


def test_broadcast_patterns():
    assert broadcast_pattern((4, 16, 64), (1, 16, 64)) == (1, 1024)      # a position table over the batch
    assert broadcast_pattern((2, 8, 5, 5), (2, 8, 1, 1)) == (25, 16)     # a squeeze-excite gate
    assert broadcast_pattern((2, 3), (2, 3)) == (1, 6)
    assert broadcast_pattern((2, 3, 4), (1,)) == (24, 1)
    assert broadcast_pattern((2, 3, 4), (2, 1, 4)) is None               # not one block: expanded instead


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from click.testing import CliRunner

    from hwact.cli import main

    out = tmp_path_factory.mktemp("int_cpu") / "vit"
    result = CliRunner().invoke(main, ["convert", "zoo:vit-tiny", "--recipe", "int8-shiftgelu", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


def test_convert_writes_and_verifies_the_runtime(converted):
    report = json.loads((converted / "report.json").read_text())
    assert report["backends"] == ["onnx", "int-cpu"]
    section = report["int_cpu"]
    assert section["verified"] is True and section["bit_exact"] is True and section["isa"] in ("avx2", "avx512-vnni",
                                                                                              "scalar", "neon",
                                                                                              "neon-dotprod")
    assert section["kernels"]["hwact.int_linear.default"] > 0 and section["kernels"]["hwact.shiftmax.default"] > 0
    for name in ("plan.json", "constants.npz", "libhwact_int.so"):
        assert (converted / name).is_file() and name in report["artifacts"]


def test_a_float_convert_leaves_the_runtime_out(cli, tmp_path):
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--recipe", "relu", "-o", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["backends"] == ["onnx"] and report["backends_not_applicable"] == ["int-cpu"]
    assert not (tmp_path / "out" / "plan.json").exists()


def test_bench_runs_the_runtime_against_onnxruntime(converted, cli):
    code, stdout, stderr = cli("bench", converted, "--iterations", "3", "--batch", "2", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["backend"] == "int-cpu" and result["outputs_equal_integer_onnx"] is True
    assert [r["artifact"] for r in result["results"]][0] == "hwact int-cpu runtime"
    assert len(result["results"]) == 2 and all(r["iterations"] == 3 for r in result["results"])


def _copy(converted, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(converted, folder)
    return folder


@pytest.mark.parametrize("edit,message", [
    (lambda plan: plan["steps"][3].update(op="builtins.eval"), "does not run"),
    (lambda plan: plan["steps"][3].update(args=[{"ref": "not_a_step"}]), "cannot read"),
    (lambda plan: plan.update(format="pickle"), "not an hwact integer CPU plan"),
    (lambda plan: plan["steps"][3].update(out_type="float64"), "out_type"),
])
def test_a_tampered_plan_is_refused(converted, tmp_path, edit, message):
    folder = _copy(converted, tmp_path)
    plan = json.loads((folder / "plan.json").read_text())
    edit(plan)
    (folder / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(InputError, match=message):
        read_plan(folder)


def test_bench_never_loads_the_folders_library(converted, tmp_path, cli_process):
    folder = _copy(converted, tmp_path)
    marker = tmp_path / "marker"
    source = tmp_path / "payload.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void p(void) '
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", str(folder / "libhwact_int.so")], check=True)
    code, _, stderr = cli_process("bench", folder, "--iterations", "2", "--json")
    assert code == 0, stderr
    assert not marker.exists()


def test_an_arm_target_cross_compiles_and_runs_the_runtime_under_qemu(cli, tmp_path):
    """--target cortex-a76 builds the library and hwact_run for aarch64 with the cross compiler; the convert
    runs the whole static program under qemu-aarch64 on the calibration batches, bit-exact."""
    out = tmp_path / "arm"
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--recipe", "int8-relu", "--target", "cortex-a76", "-o", out)
    assert code == 0, stderr
    for name in ("libhwact_int.so", "hwact_run"):
        header = (out / name).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183   # EM_AARCH64
    section = json.loads((out / "report.json").read_text())["int_cpu"]
    assert section["arch"] == "aarch64" and section["verified"] is True and section["executor"] == "static C program"
    assert section["runner"] == {"arch": "aarch64", "ran": "qemu-aarch64 -cpu max", "isa": "neon-dotprod",
                                 "batches": section["batches"]}


def test_a_plan_whose_shapes_do_not_fit_is_refused_before_a_kernel_runs(converted, tmp_path):
    """constants.npz is hostile too: a weight one column short would make the GEMM read past the input."""
    import numpy as np

    from hwact.backends.int_cpu import open_program

    folder = _copy(converted, tmp_path)
    plan = json.loads((folder / "plan.json").read_text())
    linear = next(step for step in plan["steps"] if step["op"] == "hwact.int_linear.default")
    key = linear["args"][1]["const"]
    arrays = dict(np.load(folder / "constants.npz"))
    arrays[key] = arrays[key][:, :-1].copy()
    np.savez(folder / "constants.npz", **arrays)
    program = open_program(folder)
    with pytest.raises(InputError, match=f"plan step {linear['name']} .*does not match weight"):
        program(torch.randn(2, 3, 32, 32))          # zoo:vit-tiny's input
