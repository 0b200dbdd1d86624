"""A convert folder is untrusted input (issue 12, class 2).

`hwact bench DIR` never loads a library or compiles a C file found in DIR: it rebuilds the kernel from
hwact's own sources and DIR's data into a private temp folder. The libraries planted here are working
kernels plus a constructor that writes a marker file, so loading one would succeed and leave the marker.
The data files (netlist.npz, delta_net.bin, report.json) are parsed as hostile: corrupt, truncated or
absurdly large ones end with one line on stderr and exit 2, before anything large is allocated.
"""

import io
import json
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


def _one_error_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("hwact: error:"), err


@pytest.fixture(scope="module")
def logic_folder(tmp_path_factory):
    """`hwact convert --target cpu` of a small thermometer-coded logic model (no training)."""
    work = tmp_path_factory.mktemp("logic")
    netlist = random_netlist(3, num_inputs=24, num_gates=300, num_outputs=40, num_classes=4, window=60)
    thresholds = torch.linspace(-1, 1, 24).reshape(12, 2)
    program = torch.export.export(LogicNetlistModule(netlist, thresholds).eval(), (torch.randn(2, 12),))
    torch.export.save(program, str(work / "logic_model.pt2"))
    exe = shutil.which("hwact", path=str(sys.executable.rsplit("/", 1)[0]))
    done = subprocess.run([exe, "convert", work / "logic_model.pt2", "--target", "cpu", "-o", work / "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return work / "cpu"


@pytest.fixture(scope="module")
def delta_folder(tmp_path_factory):
    """`hwact convert --target cpu` of a small delta MLP (no training) and a stream file for it."""
    work = tmp_path_factory.mktemp("delta")
    torch.manual_seed(0)
    model = __import__("hwact.nn.delta", fromlist=["FrameMLP"]).FrameMLP(12, (16,), 4).to_delta((0.1, 0.05)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 8, 12),)), str(work / "delta_model.pt2"))
    exe = shutil.which("hwact", path=str(sys.executable.rsplit("/", 1)[0]))
    done = subprocess.run([exe, "convert", work / "delta_model.pt2", "--target", "cpu", "-o", work / "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
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
    assert result["flow"] == "logic" and result["gates"] == netlist.num_gates and result["c_samples_per_s"] > 0
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
