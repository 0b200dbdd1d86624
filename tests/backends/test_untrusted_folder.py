"""A convert folder is untrusted input (issue 12, class 2).

`hwact bench DIR` never loads a library or compiles a C file found in DIR: it rebuilds the kernel from
hwact's own sources and DIR's data into a private temp folder. The libraries planted here are working
kernels plus a constructor that writes a marker file, so loading one would succeed and leave the marker.
The data files (netlist.npz, delta_net.bin, report.json) are parsed as hostile: corrupt, truncated or
absurdly large ones end with one line on stderr and exit 2, before anything large is allocated.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from hwact.backends import delta_c
from hwact.errors import InputError
from hwact.ir.logic_ops import LogicNetlistModule
from hwact.ir.netlist import Netlist
from hwact.nn.delta import FrameMLP
from tests.backends.logic_helpers import random_netlist

PAYLOAD = """#include <stdio.h>
__attribute__((constructor)) static void planted_payload(void) {
    FILE *f = fopen(%s, "w");
    if (f) { fputs("the folder's code ran", f); fclose(f); }
}
"""


def _plant(library, sources, marker, tmp_path, include=None):
    """Replace `library` with a build of `sources` (a working kernel) plus a constructor writing `marker`,
    and check that loading it does write the marker (so its absence later means it was never loaded)."""
    payload = tmp_path / "payload.c"
    payload.write_text(PAYLOAD % json.dumps(str(marker)))
    command = ["gcc", "-O1", "-shared", "-fPIC", *(["-I", str(include)] if include else []),
               *map(str, sources), str(payload), "-o", str(library), "-lm"]
    subprocess.run(command, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(library)!r})"], check=True)
    assert marker.read_text() == "the folder's code ran"
    marker.unlink()


def _hwact(*args, timeout=600):
    """The installed `hwact` console script in a subprocess: (exit code, stdout, stderr)."""
    exe = shutil.which("hwact", path=os.path.dirname(sys.executable))
    done = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def _one_error_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("hwact: error:"), err


def _convert(model, outdir):
    """`hwact convert MODEL --target cpu -o OUTDIR`, in-process (the folders are made by hwact itself)."""
    from click.testing import CliRunner

    from hwact.cli import main

    result = CliRunner().invoke(main, ["convert", str(model), "--target", "cpu", "-o", str(outdir)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def logic_folder(tmp_path_factory):
    """`hwact convert --target cpu` of a small thermometer-coded logic model (no training)."""
    work = tmp_path_factory.mktemp("logic")
    netlist = random_netlist(3, num_inputs=24, num_gates=300, num_outputs=40, num_classes=4, window=60)
    thresholds = torch.linspace(-1, 1, 24).reshape(12, 2)
    program = torch.export.export(LogicNetlistModule(netlist, thresholds).eval(), (torch.randn(2, 12),))
    torch.export.save(program, str(work / "logic_model.pt2"))
    _convert(work / "logic_model.pt2", work / "cpu")
    return work / "cpu"


@pytest.fixture(scope="module")
def delta_folder(tmp_path_factory):
    """`hwact convert --target cpu` of a small delta MLP (no training) and a stream file for it."""
    work = tmp_path_factory.mktemp("delta")
    torch.manual_seed(0)
    model = FrameMLP(12, (16,), 4).to_delta((0.1, 0.05)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 8, 12),)), str(work / "delta_model.pt2"))
    _convert(work / "delta_model.pt2", work / "cpu")
    x = (np.random.default_rng(0).standard_normal((3, 10, 12)) * 0.3).cumsum(axis=1).astype(np.float32)
    np.savez(work / "stream.npz", x=x)
    return work / "cpu", work / "stream.npz", work / "delta_model.pt2"


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


# ----- (a), (b): no library or C file of the folder is ever loaded or compiled --------------------------------
def test_logic_bench_never_loads_the_folders_library(logic_folder, tmp_path, cli_process):
    folder, marker = _copy(logic_folder, tmp_path), tmp_path / "marker"
    original_c = tmp_path / "logic_net.c"
    shutil.copyfile(folder / "logic_net.c", original_c)
    _plant(folder / "logic_net.so", [original_c], marker, tmp_path)
    # the folder's C source carries the payload too: bench must not compile it either
    (folder / "logic_net.c").write_text(original_c.read_text() + PAYLOAD % json.dumps(str(marker)))
    code, out, err = cli_process("bench", folder, "--iterations", "1")
    assert code == 0, err
    assert not marker.exists()
    netlist = Netlist.from_bytes((folder / "netlist.npz").read_bytes())
    result = json.loads(out)
    assert result["backend"] == "logic-c" and result["gates"] == netlist.num_gates and result["c_samples_per_s"] > 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in logic_folder.iterdir())


def test_delta_bench_never_loads_the_folders_library(delta_folder, tmp_path, cli_process):
    from hwact.load import load
    from hwact.passes.lower_delta import LowerDelta

    source, stream, model = delta_folder
    folder, marker = _copy(source, tmp_path), tmp_path / "marker"
    _plant(folder / "libhwact_delta.so", [delta_c.source_dir() / "delta.c"], marker, tmp_path,
           include=delta_c.source_dir())
    (folder / "delta.c").write_text((folder / "delta.c").read_text() + PAYLOAD % json.dumps(str(marker)))
    code, out, err = cli_process("bench", folder, "--stream", stream, "--iterations", "1")
    assert code == 0, err
    assert not marker.exists()
    result = json.loads(out)
    # the numbers are the reference's: columns used per layer over the whole stream
    lowered, _ = LowerDelta()(load(str(model)).graph)
    _, fired = delta_c.reference_stream(lowered, torch.from_numpy(np.load(stream)["x"]))
    assert [layer["columns_used"] for layer in result["layers"]] == fired
    assert [(layer["n_in"], layer["n_out"]) for layer in result["layers"]] == [(12, 16), (16, 4)]


# ----- (c): corrupt, truncated or absurd data files: exit 2, one line, nothing large allocated ----------------
def _npy(shape, dtype, data: bytes) -> bytes:
    """A .npy member whose header declares `shape` whatever `data` holds (a header that may lie)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue() + data


def _netlist_npz(path, **changes):
    """A valid netlist file with members replaced (an array, or raw .npy bytes) or removed (None)."""
    arrays = dict(np.load(io.BytesIO(random_netlist(1, 8, 20, 4, 2).to_bytes())))
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in {**arrays, **changes}.items():
            if value is None:
                continue
            if isinstance(value, bytes):
                archive.writestr(f"{name}.npy", value)
            else:
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=True)


NETLIST_CASES = {
    "empty file": (lambda path: path.write_bytes(b""), "not a readable .npz"),
    "not a zip": (lambda path: path.write_bytes(b"PK\x03\x04 garbage"), "not a readable .npz"),
    "truncated": (lambda path: (_netlist_npz(path), path.write_bytes(path.read_bytes()[:300])), "netlist.npz"),
    "header claims 10^12 gates": (lambda path: _netlist_npz(path, ops=_npy((10**12,), np.uint8, bytes(20))),
                                  "declares"),
    "more gates than the cap": (lambda path: _netlist_npz(path, ops=np.zeros((1 << 24) + 1, np.uint8)),
                                "at most 16777216"),
    "10^12 inputs": (lambda path: _netlist_npz(path, num_inputs=np.int64(10**12)), "at most 1048576 are read"),
    "10^12 classes": (lambda path: _netlist_npz(path, num_classes=np.int64(10**12)), "classes for 4 outputs"),
    "pickled ops": (lambda path: _netlist_npz(path, ops=np.array([object()] * 20)), "never loaded"),
    "float ops": (lambda path: _netlist_npz(path, ops=np.ones(20)), "expected integers"),
    "gate id 300": (lambda path: _netlist_npz(path, ops=np.full(20, 300, np.int16)), "outside 0..15"),
    "num_inputs of shape (2,)": (lambda path: _netlist_npz(path, num_inputs=np.array([8, 8])), "a single value"),
    "a gate reads a later node": (lambda path: _netlist_npz(path, a=np.full(20, 27)), "topologically ordered"),
    "no tau": (lambda path: _netlist_npz(path, tau=None), "no array named 'tau'"),
    "a member that is not .npy": (lambda path: (_netlist_npz(path), _add_member(path)), "is not a .npy array"),
}


def _add_member(path):
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("run.sh", "echo hi")


@pytest.mark.parametrize("case", list(NETLIST_CASES))
def test_corrupt_netlist_exits_2(case, cli, tmp_path):
    write, message = NETLIST_CASES[case]
    folder = tmp_path / "lg"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"backends": ["logic-c"]}))
    write(folder / "netlist.npz")
    code, _, err = cli("bench", folder, "--iterations", "1")
    _one_error_line(code, err)
    assert "netlist.npz" in err and message in err, err


def _layer(n_in, n_out, levels=127, relu=1, threshold=0.0, step=0.1, tail=b""):
    header = struct.pack("<iiiif", n_in, n_out, levels, relu, threshold)
    body = (np.full(n_in, step, "<f4").tobytes() + np.full(n_out, 0.01, "<f4").tobytes()
            + np.zeros(n_out, "<i4").tobytes() + np.ones(n_in * n_out, np.int8).tobytes())
    return header + body + bytes((4 - len(body) % 4) % 4) + tail


def _net(*layers, version=1, count=None, key_interval=0):
    return b"HWDL" + struct.pack("<iii", version, len(layers) if count is None else count, key_interval) + b"".join(layers)


def _oversized(path):
    with open(path, "wb") as handle:      # sparse: no disk blocks
        handle.truncate(delta_c.MAX_NET_BYTES + 1)


DELTA_CASES = {
    "empty file": (b"", "no HWDL header"),
    "another magic": (b"HWDX" + _net(_layer(12, 4))[4:], "no HWDL header"),
    "version 2": (_net(_layer(12, 4), version=2), "version 2"),
    "2^31-1 layers": (_net(_layer(12, 4), count=2**31 - 1), "2147483647 layers"),
    "a 10^9 x 10^9 layer": (_net(struct.pack("<iiiif", 10**9, 10**9, 127, 1, 0.0)), "are left"),
    "truncated weights": (_net(_layer(12, 4))[:-10], "are left"),
    "NaN step": (_net(_layer(12, 4, step=float("nan"))), "step"),
    "negative threshold": (_net(_layer(12, 4, threshold=-1.0)), "threshold -1.0"),
    "levels 0": (_net(_layer(12, 4, levels=0)), "levels 0"),
    "layers that do not chain": (_net(_layer(12, 4), _layer(5, 3)), "reads 5 values"),
    "trailing bytes": (_net(_layer(12, 4, tail=b"\0" * 8)), "8 bytes after the last layer"),
    "over 1 GiB": (_oversized, "more than a delta net file may have"),
}


@pytest.mark.parametrize("case", list(DELTA_CASES))
def test_corrupt_delta_net_exits_2(case, cli, tmp_path):
    content, message = DELTA_CASES[case]
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"backends": ["delta-c"], "delta": {"threshold": 0.0}}))
    if callable(content):
        content(folder / "delta_net.bin")
    else:
        (folder / "delta_net.bin").write_bytes(content)
    np.savez(tmp_path / "s.npz", x=np.zeros((1, 4, 12), np.float32))
    code, _, err = cli("bench", folder, "--stream", tmp_path / "s.npz", "--iterations", "1")
    _one_error_line(code, err)
    assert "delta_net.bin" in err and message in err, err


def test_parse_net_reads_what_net_blob_writes():
    from tests.backends.delta_helpers import lowered

    graph = lowered()
    blob = delta_c.net_blob(graph)
    layers = delta_c.parse_net(blob)
    for parsed, layer in zip(layers, delta_c.chain(graph), strict=True):
        assert torch.equal(parsed["weight"].to(torch.int64), layer["weight"].to(torch.int64))
        for key in ("step", "scale", "bias_acc", "threshold"):
            assert torch.equal(parsed[key], layer[key].to(parsed[key].dtype)), key
        assert (parsed["levels"], parsed["relu"], parsed["key_interval"]) == \
            (layer["levels"], layer["relu"], layer["key_interval"])
    x = torch.randn(2, 6, 24).cumsum(dim=1)
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in
               zip(delta_c.reference_layers(layers, x), delta_c.reference_stream(graph, x)))
    with pytest.raises(InputError, match="net.bin: not a valid delta net file"):
        delta_c.parse_net(blob[:-1], "net.bin")


def test_huge_claim_exits_2_in_a_real_process(tmp_path, cli_process):
    """A header claiming 10^12 gates (931 GiB) as the installed CLI sees it: exit 2, no MemoryError."""
    folder = tmp_path / "lg"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"backends": ["logic-c"]}))
    _netlist_npz(folder / "netlist.npz", ops=_npy((10**12,), np.uint8, bytes(20)))
    code, _, err = cli_process("bench", folder, "--iterations", "1")
    _one_error_line(code, err)
    assert "declares (1000000000000,) uint8" in err, err


def test_corrupt_dense_onnx_exits_2(delta_folder, tmp_path, cli):
    source, stream, _ = delta_folder
    folder = _copy(source, tmp_path)
    for content, message in [(b"\x08garbage", "onnxruntime cannot run it"),
                             ((folder / "delta_step.onnx").read_bytes(), "onnxruntime cannot run it")]:
        (folder / "dense.onnx").write_bytes(content)
        code, _, err = cli("bench", folder, "--stream", stream, "--iterations", "1")
        _one_error_line(code, err)
        assert "dense.onnx" in err and message in err, err


def test_hostile_report_json_exits_2(tmp_path, cli):
    folder = tmp_path / "dir"
    folder.mkdir()
    report = folder / "report.json"
    os.mkfifo(report)               # reading it would block forever: refused from its type
    code, _, err = _hwact("bench", folder, timeout=120)
    _one_error_line(code, err)
    assert "report.json: not a report hwact wrote" in err
    report.unlink()
    with open(report, "wb") as handle:  # sparse, 17 MB of zeros
        handle.truncate(17 * 10**6)
    code, _, err = cli("bench", folder)
    _one_error_line(code, err)
    assert "at most 16 MB" in err
    for content in ('{"backends": ["delta-c"], "delta": {"thre', "[1, 2]"):
        report.write_text(content)
        code, _, err = cli("bench", folder)
        _one_error_line(code, err)
        assert "report.json" in err, err
