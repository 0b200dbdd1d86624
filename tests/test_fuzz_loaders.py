"""Fuzzing the loaders with hostile files (issue 12): whatever the bytes, a loader either succeeds or raises a
HwactError (exit 2 in the CLI), never another exception, and it creates no file anywhere but where it was
asked to write (here: nowhere).

In-process, through the public entry points: hwact.load.load for model files (.pt2 archives mutated from a
real export, random zip archives, safetensors with random headers, ONNX bytes with allow_onnx) and
hwact.passes.manager.load_calibration for .npz calibration files. Examples are derandomized (the same ones
every run) so the suite stays deterministic; set HWACT_FUZZ_RANDOM=1 to draw new ones.
"""

import io
import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwact.errors import HwactError
from hwact.ir.graph import InputSpec
from hwact.load import load
from hwact.passes.manager import load_calibration

FUZZ = settings(max_examples=40, deadline=None, database=None,
                derandomize=os.environ.get("HWACT_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder for the hostile files and an empty folder made the current directory while they are read."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "files").mkdir()
    (root / "cwd").mkdir()
    old = os.getcwd()
    os.chdir(root / "cwd")
    yield root
    os.chdir(old)


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "two_layers.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(TwoLayers().eval(), (torch.randn(2, 8),), dynamic_shapes=({0: batch},)),
                      path)
    return path.read_bytes()


def onnx_bytes() -> bytes:
    """A valid one-node ONNX model (y = x·W + b) built with onnx.helper."""
    h = onnx.helper
    weight = h.make_tensor("w", onnx.TensorProto.FLOAT, (8, 4), np.ones(32, np.float32))
    bias = h.make_tensor("b", onnx.TensorProto.FLOAT, (4,), np.zeros(4, np.float32))
    graph = h.make_graph([h.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ("N", 8))],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ("N", 4))], [weight, bias])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 20)]).SerializeToString()


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(32, dtype=np.float32).reshape(4, 8), y=np.arange(4))
    return buffer.getvalue()


def listing(sandbox: Path) -> set[str]:
    """Every path in the sandbox (its cwd included) and beside it (the session's temp root)."""
    return {str(p) for p in sandbox.rglob("*")} | {str(p) for p in sandbox.parent.iterdir()}


def attempt(sandbox: Path, name: str, payload: bytes, read) -> None:
    """Write `payload` as files/NAME, call read(path): success or a HwactError, and no new file anywhere."""
    path = sandbox / "files" / name
    path.write_bytes(payload)
    before = listing(sandbox)
    try:
        read(str(path))
    except HwactError as exc:
        assert "\n" not in str(exc)
    assert listing(sandbox) == before
    path.unlink()


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # duplicate names are part of the fuzz
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


# ----------------------------------------------------------------------------------------- strategies
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


def flips(size: int):
    """Up to 8 (offset, byte) replacements in a file of `size` bytes."""
    return st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8)


def flipped(data: bytes, changes) -> bytes:
    out = bytearray(data)
    for offset, value in changes:
        out[offset] = value
    return bytes(out)


def npy_member(descr, shape, fortran, version, body, fit=False) -> bytes:
    """A .npy file whose header says descr/shape/fortran_order followed by `body`; with `fit`, a body of
    random bytes of the size the header declares (when that size is small) instead of `body`."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode() + b"\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    if fit and all(isinstance(d, int) and d >= 0 for d in shape):
        try:
            count = int(np.prod(shape, dtype=np.int64)) * np.dtype(descr).itemsize
        except (TypeError, ValueError):
            count = -1
        if 0 <= count <= 4096:
            body = np.random.default_rng(len(body)).bytes(count)
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + body


npy_members = st.builds(
    npy_member,
    st.sampled_from(["<f4", "<f8", ">f4", "<f2", "|b1", "<i8", "|u1", "<c8", "<c16", "|O", "<U3", "|V8", "<M8[s]",
                     "x", "[('a', '<f4')]"]),
    st.lists(st.integers(-3, 2**40) | st.integers(0, 10), max_size=4).map(tuple) | st.sampled_from([(4, 8), (0, 8), (3, 8, 1), (2, 7), ()]),
    st.booleans(), st.sampled_from([1, 2, 3]), st.binary(max_size=300), st.booleans())


# ------------------------------------------------------------------------------------------- .pt2 files
@FUZZ
@given(data=st.data())
def test_pt2_with_flipped_bytes(sandbox, pt2_bytes, data):
    changes = data.draw(flips(len(pt2_bytes)))
    attempt(sandbox, "model.pt2", flipped(pt2_bytes, changes), load)


@FUZZ
@given(data=st.data())
def test_pt2_truncated(sandbox, pt2_bytes, data):
    attempt(sandbox, "model.pt2", pt2_bytes[:data.draw(st.integers(1, len(pt2_bytes) - 1))], load)


@FUZZ
@given(data=st.data())
def test_pt2_with_a_member_replaced(sandbox, pt2_bytes, data):
    members = members_of(pt2_bytes)
    index = data.draw(st.integers(0, len(members) - 1))
    name, original = members[index]
    if name.endswith(".json") and data.draw(st.booleans()):
        replacement = json.dumps(data.draw(json_values)).encode()
    elif data.draw(st.booleans()):
        replacement = flipped(original, data.draw(flips(len(original)))) if original else b"x"
    else:
        replacement = data.draw(st.binary(max_size=400))
    members[index] = (name, replacement)
    attempt(sandbox, "model.pt2", zip_of(members), load)


@FUZZ
@given(members=st.lists(st.tuples(
    st.sampled_from(["m/archive_format", "m/models/model.json", "m/data/weights/model_weights_config.json",
                     "m/data/sample_inputs/model.pt", "m/data/weights/weight_0", "m/code/x.py", "m/data.pkl",
                     "m/constants.pkl", "../escape", "/abs", "m/data/aotinductor/model.so"]) | st.text(min_size=1, max_size=20),
    st.binary(max_size=200)), max_size=6))
def test_random_zip_archives(sandbox, members):
    attempt(sandbox, "model.pt2", zip_of(members), load)


def corrupt_member(data: bytes, how: str, suffix: str) -> bytes:
    """`data` (a zip) with the member ending in `suffix` damaged: "crc" flips a byte of its data, "name" puts
    an invalid UTF-8 byte in its name in the central directory, "version" makes it need zip version 21.6,
    "extra" gives its local header a 64 kB extra field (its data then runs past the member)."""
    info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if i.filename.endswith(suffix))
    local = info.header_offset
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(info.filename.encode()))
    out = bytearray(data)
    if how == "crc":
        name_length, extra_length = struct.unpack("<HH", data[local + 26:local + 30])
        out[local + 30 + name_length + extra_length + info.file_size // 2] ^= 0xFF
    elif how == "name":
        out[central + 46 + 1] = 0xD8
    elif how == "version":
        out[central + 6:central + 8] = struct.pack("<H", 216)
    elif how == "extra":
        out[local + 28:local + 30] = struct.pack("<H", 0xFFFF)
    return bytes(out)


@pytest.mark.parametrize("how, member", [
    ("crc", "sample_inputs/model.pt"),
    ("crc", "models/model.json"),
    ("name", "models/model.json"),
    ("version", "models/model.json"),
    ("extra", "sample_inputs/model.pt"),
    ("extra", "models/model.json"),
])
def test_pt2_with_a_damaged_zip_member(sandbox, pt2_bytes, how, member):
    attempt(sandbox, "model.pt2", corrupt_member(pt2_bytes, how, member), load)


@pytest.mark.parametrize("how", ["crc", "name", "version", "extra"])
def test_npz_with_a_damaged_zip_member(sandbox, how):
    attempt(sandbox, "calib.npz", corrupt_member(npz_bytes(), how, "x.npy"), read_calibration)


# ------------------------------------------------------------------------------------------ safetensors
@FUZZ
@given(header=st.dictionaries(
    st.text(max_size=10),
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F64", "X"]),
                           "shape": st.lists(st.integers(-2, 2**33), max_size=3),
                           "data_offsets": st.lists(st.integers(-2, 2**40), min_size=0, max_size=3)}) | json_values,
    max_size=3),
    lie=st.none() | st.integers(0, 2**64 - 1), body=st.binary(max_size=200), arch=st.sampled_from([None, "vit-tiny"]))
def test_safetensors_with_random_headers(sandbox, header, lie, body, arch):
    text = json.dumps(header).encode()
    length = len(text) if lie is None else lie
    attempt(sandbox, "weights.safetensors", struct.pack("<Q", length) + text + body,
            lambda path: load(path, arch=arch))


@pytest.fixture(scope="module")
def safetensors_parts() -> tuple[dict, bytes]:
    """The header (as a dict) and the data of a real safetensors file: the zoo cnn-tiny's weights."""
    from safetensors.torch import save

    from hwact import models

    data = save(models.build("cnn-tiny")[0].state_dict())
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


@FUZZ
@given(data=st.data())
def test_safetensors_with_a_mutated_real_header(sandbox, safetensors_parts, data):
    header, body = json.loads(json.dumps(safetensors_parts[0])), safetensors_parts[1]
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    if field == "dtype":
        header[name]["dtype"] = data.draw(st.sampled_from(["F16", "BF16", "I64", "BOOL", "U8", "F64", "I8", "Q"]))
    elif field is not None:
        header[name][field] = data.draw(st.lists(st.integers(-1, 2**40) | st.integers(0, 64), max_size=4))
    cut = data.draw(st.none() | st.integers(0, len(body)))
    attempt(sandbox, "weights.safetensors", struct.pack("<Q", len(json.dumps(header))) + json.dumps(header).encode()
            + body[:cut], lambda path: load(path, arch="cnn-tiny"))


# ------------------------------------------------------------------------------------------------- ONNX
@FUZZ
@given(data=st.data())
def test_onnx_bytes(sandbox, data):
    valid = onnx_bytes()
    payload = (flipped(valid, data.draw(flips(len(valid)))) if data.draw(st.booleans())
               else data.draw(st.binary(min_size=1, max_size=300)))
    attempt(sandbox, "model.onnx", payload, lambda path: load(path, allow_onnx=True))


# -------------------------------------------------------------------------------------- .npz calibration
def read_calibration(path: str):
    return load_calibration(path, [InputSpec("x", (1, 8))], batch=4, limit=64)


@FUZZ
@given(data=st.data())
def test_npz_flipped_or_truncated(sandbox, data):
    valid = npz_bytes()
    payload = (flipped(valid, data.draw(flips(len(valid)))) if data.draw(st.booleans())
               else valid[:data.draw(st.integers(1, len(valid) - 1))])
    attempt(sandbox, "calib.npz", payload, read_calibration)


@FUZZ
@given(first=npy_members, others=st.lists(st.tuples(st.sampled_from(["x.npy", "y.npy", "x", "z.npy", "x.npy/", "../x.npy"]),
                                                    npy_members | st.binary(max_size=100)), max_size=2))
def test_npz_with_random_headers(sandbox, first, others):
    attempt(sandbox, "calib.npz", zip_of([("x.npy", first)] + others), read_calibration)


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_on_a_corrupt_pt2_is_one_line_exit_2(tmp_path, pt2_bytes, cli_process):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(pt2_bytes[:len(pt2_bytes) // 2])
    calib = tmp_path / "calib.npz"
    calib.write_bytes(zip_of([("x.npy", npy_member("<f4", (2**40, 8), False, 1, b""))]))
    for args in (["convert", bad, "-o", tmp_path / "out"],
                 ["export-onnx", "zoo:vit-tiny", "--calib", calib, "-o", tmp_path / "m.onnx"]):
        code, _, stderr = cli_process(*args)
        assert code == 2, stderr
        assert len(stderr.splitlines()) == 1 and stderr.startswith("hwact: error: ") and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt2", "calib.npz"]
