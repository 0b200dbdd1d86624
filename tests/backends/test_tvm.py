"""The tvm backend (Apache TVM 0.27): x86 convert verified, CUDA compile-only, integer ONNX ops and whole
integer graphs bit-exact, and `hwact bench` locally and through a TVM RPC tracker + server on loopback."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from hwact.backends import tvm_build  # noqa: E402
from hwact.errors import UnsupportedError  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HWACT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def x86_folder(tmp_path_factory, cache):
    from click.testing import CliRunner
    from hwact.cli import main

    out = tmp_path_factory.mktemp("tvm") / "vit"
    result = CliRunner().invoke(main, ["convert", "zoo:vit-tiny", "--target", "tvm-x86", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def bench_json(cli, *args):
    code, out, err = cli("bench", *args, "--iterations", "5", "--warmup", "1", "--json")
    assert code == 0, out + err
    return json.loads(out)


def test_convert_vit_tiny_x86_verified(x86_folder):
    report = json.loads((x86_folder / "report.json").read_text())
    assert report["backends"] == ["onnx", "tvm"]
    section = report["tvm"]
    assert section["verified"] is True and section["samples"] == 8
    assert section["max_abs_err"] < 1e-4
    assert section["target"]["kind"] == "llvm" and section["target"]["mcpu"] not in ("host", "")
    assert (x86_folder / "model_tvm.so").stat().st_size > 10_000
    assert json.loads((x86_folder / "tvm.json").read_text())["inputs"][0]["shape"] == [1, 3, 32, 32]


@pytest.fixture(scope="module")
def tracker_and_server():
    """A TVM RPC tracker and one RPC server (key hwact-test) on loopback, in their own process groups."""
    pytest.importorskip("tornado")
    port = free_port()
    python = sys.executable
    tracker = subprocess.Popen([python, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                                "--port-end", str(port + 1)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server_port = free_port()
    server = subprocess.Popen([python, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                               str(server_port), "--port-end", str(server_port + 1), "--tracker",
                               f"127.0.0.1:{port}", "--key", "hwact-test"], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                from tvm import rpc
                if "hwact-test" in rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the RPC server did not register within 60 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for process in (server, tracker):
            os.killpg(process.pid, signal.SIGKILL)   # the tracker's and server's worker children too
            process.wait(timeout=10)


def test_bench_rpc_same_outputs_as_local(x86_folder, tracker_and_server, cli):
    local = bench_json(cli, x86_folder)
    remote = bench_json(cli, x86_folder, "--rpc", tracker_and_server, "--key", "hwact-test")
    assert local["device"] == "local" and remote["device"].startswith("rpc 127.0.0.1:")
    assert remote["outputs_sha256"] == local["outputs_sha256"]
    assert remote["outputs_match_onnxruntime"] and remote["max_abs_err_vs_onnxruntime"] < 1e-4
    tvm_row, ort_row = remote["results"]
    assert "TVM" in tvm_row["artifact"] and "onnxruntime" in ort_row["artifact"]
    assert tvm_row["iterations"] == 5 and tvm_row["p90_ms"] >= tvm_row["p50_ms"] > 0


def test_bench_rpc_unknown_key_exits_2(x86_folder, tracker_and_server, cli):
    code, out, err = cli("bench", x86_folder, "--rpc", tracker_and_server, "--key", "no-such-board")
    assert code == 2
    assert "no device of that key" in err and "hwact-test" in err and len(err.strip().splitlines()) == 1


def test_bench_rpc_unreachable_tracker_exits_2(x86_folder, cli):
    code, out, err = cli("bench", x86_folder, "--rpc", f"127.0.0.1:{free_port()}", "--key", "rpi5")
    assert code == 2 and "no RPC tracker answers" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("bench", x86_folder, "--rpc", "127.0.0.1:1")
    assert code == 2 and "go together" in err


def test_rpc_refused_for_a_non_tvm_folder(tmp_path, cli):
    (tmp_path / "report.json").write_text(json.dumps({"backends": ["onnx"]}))
    code, _, err = cli("bench", tmp_path, "--rpc", "127.0.0.1:9190", "--key", "k")
    assert code == 2 and "tvm-* target" in err


def test_target_tvm_cannot_compile_for_exits_2(tmp_path, cli):
    target = tmp_path / "bogus.toml"
    target.write_text('name = "tvm-bogus"\nkind = "cpu"\ndescription = "x"\nnumeric_formats = ["float32"]\n'
                      '[deploy.tensor]\nrecipe = "none"\nbackends = ["onnx", "tvm"]\n'
                      '[backend.tvm]\ntarget = { kind = "quantum" }\n'
                      '[[rule]]\nops = ["aten.*"]\nnative = true\n')
    code, _, err = cli("convert", "zoo:vit-tiny", "--target", target, "-o", tmp_path / "out")
    assert code == 2 and "TVM cannot compile for target" in err and "quantum" in err
    assert not (tmp_path / "out").exists()


def test_cuda_sm80_compile_only(tmp_path, cache, cli):
    code, out, err = cli("convert", "zoo:vit-tiny", "--target", "tvm-cuda-sm80", "-o", tmp_path / "cuda")
    assert code == 0, out + err
    section = json.loads((tmp_path / "cuda" / "report.json").read_text())["tvm"]
    assert section["target"] == {"kind": "cuda", "arch": "sm_80"}
    assert section["verified"] is False and "compiled, not run" in section["reason"]
    assert (tmp_path / "cuda" / "model_tvm.so").stat().st_size > 10_000
    code, _, err = cli("bench", tmp_path / "cuda")
    assert code == 2 and "--rpc HOST:PORT --key KEY" in err


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_cortex_a76_library_runs_under_qemu(tmp_path, cache, cli):
    code, out, err = cli("convert", "zoo:vit-tiny", "--target", "tvm-cortex-a76", "-o", tmp_path / "a76")
    assert code == 0, out + err
    section = json.loads((tmp_path / "a76" / "report.json").read_text())["tvm"]
    assert section["target"]["mtriple"] == "aarch64-linux-gnu" and section["target"]["mattr"] == ["+neon", "+dotprod"]
    assert section["verified"] is True, section
    assert section["ran"].startswith("qemu-aarch64") and section["samples"] == 8 and section["max_abs_err"] < 1e-4
    with open(tmp_path / "a76" / "model_tvm.so", "rb") as library:
        assert library.read(20)[18] == 183          # ELF e_machine EM_AARCH64


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_cortex_a76_integer_cnn_bit_exact_under_qemu(tmp_path, cache, cli):
    code, out, err = cli("convert", "zoo:cnn-tiny", "--recipe", "int8-relu", "--target", "tvm-cortex-a76",
                         "-o", tmp_path / "a76")
    assert code == 0, out + err
    section = json.loads((tmp_path / "a76" / "report.json").read_text())["tvm"]
    assert section["verified"] is True and section["ran"].startswith("qemu-aarch64"), section
    assert section["bit_exact"] is True and section["max_abs_err"] == 0.0 and section["samples"] == 8


def integer_onnx(path, op: str):
    """x (int8) -> MatMulInteger (1x8 @ 8x4) or ConvInteger (1x2x5x5, 3x3 kernel, pad 1, stride 2) with int8
    weights holding -128 and 127, and zero points -> int32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op == "MatMulInteger":
        shape, weight, out_shape, attrs = [1, 8], rng.integers(-128, 128, (8, 4)).astype(np.int8), [1, 4], {}
        weight[0, 0], weight[1, 0] = -128, 127
    else:
        shape, weight = [1, 2, 5, 5], rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
        weight[0, 0, 0, 0], weight[0, 0, 0, 1] = -128, 127
        out_shape, attrs = [1, 3, 3, 3], {"pads": [1, 1, 1, 1], "strides": [2, 2]}
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(3, np.int8), "xz"),
             numpy_helper.from_array(np.array(-2, np.int8), "wz")]
    graph = helper.make_graph([helper.make_node(op, ["x", "w", "xz", "wz"], ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, path)
    return tvm_build.Signature([("x", shape, "int8")])


def run_tvm_and_onnxruntime(path, signature, feeds: list[dict]):
    """(TVM outputs, onnxruntime outputs) of the ONNX at `path` for each feed dict."""
    import onnxruntime

    executable = tvm.compile(tvm_build.import_onnx(path, signature, "test"), target="llvm")
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    session = onnxruntime.InferenceSession(str(path))
    for feed in feeds:
        got = vm["main"](*[tvm.runtime.tensor(feed[name]) for name, _, _ in signature.inputs])
        got = [got] if isinstance(got, tvm.runtime.Tensor) else list(got)
        yield [g.numpy() for g in got], session.run(None, feed)


@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger"])
def test_integer_matmul_and_conv_bit_exact_with_onnxruntime(tmp_path, op):
    signature = integer_onnx(tmp_path / "m.onnx", op)
    shape = signature.inputs[0][1]
    feeds = [{"x": np.full(shape, -128, np.int8)}, {"x": np.full(shape, 127, np.int8)},
             {"x": np.random.default_rng(1).integers(-128, 128, shape).astype(np.int8)}]
    for got, want in run_tvm_and_onnxruntime(tmp_path / "m.onnx", signature, feeds):
        assert got[0].dtype == want[0].dtype == np.int32 and np.array_equal(got[0], want[0])
        assert np.abs(want[0]).max() > 0


# (op, attributes, constants) of the elementwise ops hwact's integer ONNX uses, each with a rank-0 constant
# operand: the type's extremes (where wrap-around shows) and small values of both signs
SCALAR_OPS = [("Add", {}), ("Sub", {}), ("Mul", {}), ("Div", {}), ("Mod", {}), ("Mod", {"fmod": 1}),
              ("Max", {}), ("Min", {})]


def edge_values(dtype):
    info = np.iinfo(dtype)
    if info.min == 0:
        return [0, 1, 3, 7, 2**63 - 1, 2**63, 2**63 + 1, info.max - 1, info.max]
    return [info.min, info.min + 1, -7, -3, -1, 0, 1, 3, 7, info.max - 1, info.max]


def scalar_constant_onnx(path, dtype: str):
    """One graph: x (the edge values of `dtype`) through every (op, constant) pair of SCALAR_OPS and, for
    uint64, BitShift left and right, each pair an output of its own."""
    import onnx
    from onnx import helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    values = edge_values(dtype)
    pairs = [(op, attrs, c) for op, attrs in SCALAR_OPS for c in values
             if not (op in ("Div", "Mod") and (c == 0 or (c == -1 and dtype != "uint64")))]  # x/0, MIN/-1: UB
    if dtype == "uint64":
        pairs += [("BitShift", {"direction": direction}, c) for direction in ("LEFT", "RIGHT") for c in (0, 1, 7, 63)]
    nodes, inits, outputs = [], [], []
    for index, (op, attrs, c) in enumerate(pairs):
        inits.append(numpy_helper.from_array(np.array(c, dtype), f"c{index}"))
        nodes.append(helper.make_node(op, ["x", f"c{index}"], [f"y{index}"], **attrs))
        outputs.append(helper.make_tensor_value_info(f"y{index}", elem, [len(values)]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [len(values)])], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    return tvm_build.Signature([("x", [len(values)], dtype)]), np.array(values, dtype), pairs


@pytest.mark.parametrize("dtype", ["uint64", "int64", "int32"])
def test_integer_elementwise_ops_with_scalar_constants_bit_exact(tmp_path, dtype):
    """Wrap-around included: uint64 x + 2^63 (hwact's rounding shift) and int64 x + INT64_MIN, which TVM got
    wrong with the constant inlined (hwact/backends/tvm_onnx.py)."""
    signature, x, pairs = scalar_constant_onnx(tmp_path / "e.onnx", dtype)
    [(got, want)] = run_tvm_and_onnxruntime(tmp_path / "e.onnx", signature, [{"x": x}])
    for (op, attrs, c), g, w in zip(pairs, got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w), (op, attrs, c, x, w, g)


def test_rounding_shift_of_negative_int64_bit_exact(tmp_path):
    """The pattern hwact's integer ONNX uses for a rounding right shift of a signed value, on negatives."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s = 22
    consts = {"bias": np.array(2**63 + 2**(s - 1), np.uint64), "s": np.array(s, np.uint64),
              "back": np.array(2**(63 - s), np.uint64)}
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT64),
             helper.make_node("Add", ["u", "bias"], ["b"]),
             helper.make_node("BitShift", ["b", "s"], ["r"], direction="RIGHT"),
             helper.make_node("Sub", ["r", "back"], ["d"]),
             helper.make_node("Cast", ["d"], ["y"], to=TensorProto.INT64)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [6])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [6])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "r.onnx")
    x = np.array([-(2**40), -(2**21) - 1, -(2**21), -1, 2**21, 2**40 + 2**21], np.int64)
    signature = tvm_build.Signature([("x", [6], "int64")])
    [(got, want)] = run_tvm_and_onnxruntime(tmp_path / "r.onnx", signature, [{"x": x}])
    assert np.array_equal(want[0], (x + 2**(s - 1)) >> s) and np.array_equal(got[0], want[0])


def test_integer_vit_and_cnn_convert_bit_exact(tmp_path, cache, cli):
    """Whole integer graphs: ViT (ShiftGELU, Shiftmax, integer LayerNorm: Gather, Mod, Div, uint64 shifts) and
    a CNN (ConvInteger) converted for tvm-x86, bit-exact with hwact's integer reference on 8 samples."""
    for model, recipe in (("vit-tiny", "int8-shiftgelu"), ("cnn-tiny", "int8-relu")):
        out = tmp_path / model
        code, stdout, err = cli("convert", f"zoo:{model}", "--recipe", recipe, "--target", "tvm-x86", "-o", out)
        assert code == 0, stdout + err
        section = json.loads((out / "report.json").read_text())["tvm"]
        assert section["verified"] is True and section["bit_exact"] is True and section["samples"] == 8
        assert section["max_abs_err"] == 0.0
        assert json.loads((out / "tvm.json").read_text())["integer"] is True
    result = bench_json(cli, tmp_path / "vit-tiny")          # TVM vs the integer ONNX in onnxruntime
    assert result["outputs_match_onnxruntime"] and result["max_abs_err_vs_onnxruntime"] == 0.0


def test_op_without_converter_refused_with_its_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("BlackmanWindow", ["n"], ["y"])], "g",
                              [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "w.onnx")
    with pytest.raises(UnsupportedError, match="no converter for BlackmanWindow"):
        tvm_build.import_onnx(tmp_path / "w.onnx", tvm_build.Signature([("n", [], "int64")]), "w")


@pytest.mark.slow
def test_tuning_writes_a_database_that_a_second_tune_reuses(tmp_path, cache):
    """MetaSchedule (TVM 0.27 with apache-tvm-ffi 0.1.14; 0.1.15 segfaulted) on a one-MatMul model: a database
    with records, reused without a search by a second tune of the same model, and the tuned build correct."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 64])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "mm.onnx")
    signature = tvm_build.Signature([("x", [16, 64], "float32")])
    spec = tvm_build.resolve_target({"kind": "llvm", "mcpu": "host"}, "test")
    key = tvm_build.tuning_key(tmp_path / "mm.onnx", signature, spec)
    said = []
    first = tvm_build.tune(tmp_path / "mm.onnx", signature, spec, key, 4, said.append)
    assert first["reused"] is False and first["tasks"] == 1 and first["trials_per_task"] == 4 and first["wall_s"] > 0
    assert 1 <= first["measured"] <= 4
    records = (tvm_build.cache_dir() / "tune" / key / "database_tuning_record.json").read_text().splitlines()
    measured = [json.loads(line)[1][1] for line in records]          # [workload, [trace, run seconds, ...]]
    assert measured and any(seconds and all(s < 1e9 for s in seconds) for seconds in measured), measured
    second = tvm_build.tune(tmp_path / "mm.onnx", signature, spec, key, 4, said.append)
    assert second["reused"] is True and second["wall_s"] == first["wall_s"] and "reusing" in said[-1]
    mod = tvm_build.import_onnx(tmp_path / "mm.onnx", signature, "mm")
    vm = tvm.relax.VirtualMachine(tvm_build.compile_module(mod, tvm_build.make_target(spec, "t"), key), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    assert np.allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), x @ weight, atol=1e-4)


def test_tune_trials_belongs_to_the_tvm_targets(cli, tmp_path):
    code, _, err = cli("convert", "zoo:cnn-tiny", "--tune-trials", "4", "-o", tmp_path / "out")
    assert code == 2 and "--tune-trials does not apply" in err and "tvm" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
