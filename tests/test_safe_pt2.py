"""Issue 12, class 1: no byte of a .pt2 runs code without --trust-checkpoint.

Each test builds a hostile archive from a real torch.export.save archive, with a payload that would
create a marker file inside tmp_path. `test_payload_runs_in_plain_torch` proves each payload is live
(plain torch.export.load / ep.module() runs it); the other tests prove hwact never runs it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import pytest
import torch

from hwact.errors import InputError
from hwact.load import load
from hwact.safe_pt2 import sympy_expression_problem


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x).relu() * 2


class _Payload:
    """Unpickling this runs `touch MARKER` (os.system), the classic __reduce__ payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def clean_archive(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(_Tiny().eval(), (torch.randn(2, 6),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path.read_bytes()


def _rewrite(data: bytes, change) -> bytes:
    """A copy of the zip `data` with change(members: dict[inner name -> bytes], root) applied."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        names = source.namelist()
        root = names[0].split("/")[0]
        members = {n.split("/", 1)[1]: source.read(n) for n in names}
    change(members, root)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name, payload in members.items():
            target.writestr(f"{root}/{name}", payload)
    return out.getvalue()


def _edit_json(members, name, edit):
    value = json.loads(members[name])
    edit(value)
    members[name] = json.dumps(value).encode()


def _first_expr(program):
    """The first dict in the serialized program that holds an expr_str."""
    stack = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("expr_str"), str):
                return node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise AssertionError("no symbolic expression in the program")


def _hostile(route: str, data: bytes, marker) -> bytes:
    payload = pickle.dumps(_Payload(marker))

    def change(members, root):
        if route == "sample-inputs":
            members["data/sample_inputs/model.pt"] = payload
        elif route == "legacy-weights":
            members["data/weights/model.pt"] = payload
        elif route == "use-pickle-weight":
            members["data/weights/weight_0"] = payload
            _edit_json(members, "data/weights/model_weights_config.json",
                       lambda c: next(iter(c["config"].values())).update(use_pickle=True))
        elif route in ("opaque-constant", "torchbind-constant"):
            prefix = "opaque_obj_0" if route == "opaque-constant" else "custom_obj_0"
            members[f"data/constants/{prefix}"] = payload
            _edit_json(members, "data/constants/model_constants_config.json", lambda c: c["config"].update(
                {"evil": {"path_name": prefix, "is_param": False, "use_pickle": True, "tensor_meta": None}}))
        elif route == "aotinductor":
            members["data/aotinductor/model/model.so"] = b"\x7fELF" + bytes(64)
        elif route == "sympy-eval":
            _edit_json(members, "models/model.json", lambda p: _first_expr(p).update(
                expr_str=f"__import__('os').system('touch {marker}')"))
        elif route == "guards-code":
            _edit_json(members, "models/model.json", lambda p: p.update(
                guards_code=[f"__import__('os').system('touch {marker}') == 0"]))
        elif route == "target-attribute-chain":
            def edit(program):
                node = program["graph_module"]["graph"]["nodes"][0]
                node["target"] = "torch.os.system"
            _edit_json(members, "models/model.json", edit)
        else:
            raise AssertionError(route)

    return _rewrite(data, change)


REFUSED = ["sample-inputs", "legacy-weights", "use-pickle-weight", "opaque-constant", "torchbind-constant",
           "aotinductor", "sympy-eval", "target-attribute-chain"]
# routes whose payload plain torch 2.13 runs; the others are refused as defence in depth (a torchbind
# payload needs torch's own object format, an AOTInductor package a complete compiled model, and the
# deserializer happens not to call a resolved non-op target)
LIVE_IN_TORCH = ["sample-inputs", "legacy-weights", "use-pickle-weight", "opaque-constant", "sympy-eval",
                 "guards-code"]


@pytest.mark.parametrize("route", LIVE_IN_TORCH)
def test_payload_runs_in_plain_torch(route, clean_archive, tmp_path):
    """The hostile archives are real: torch's own loader runs their payload."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_hostile(route, clean_archive, marker))
    try:
        ep = torch.export.load(str(path))
        ep.module()(torch.randn(2, 6))
    except Exception:
        pass
    assert marker.exists(), f"{route}: the payload did not run in plain torch; the test archive is stale"


@pytest.mark.parametrize("route", REFUSED)
def test_hostile_archive_refused(route, clean_archive, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_hostile(route, clean_archive, marker))
    with pytest.raises(InputError) as info:
        load(str(path))
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "refused" in message and "--trust-checkpoint" in message


def test_guards_code_is_never_run(clean_archive, tmp_path):
    """guards_code is dropped, not refused: the graph loads and runs, and the payload does not."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt2"
    path.write_bytes(_hostile("guards-code", clean_archive, marker))
    loaded = load(str(path))
    loaded.graph.module(torch.randn(3, 6))
    assert not marker.exists()


def test_clean_archive_loads(clean_archive, tmp_path):
    path = tmp_path / "tiny.pt2"
    path.write_bytes(clean_archive)
    loaded = load(str(path))
    assert [s.shape for s in loaded.inputs] == [(2, 6)]
    assert loaded.graph.module(torch.randn(5, 6)).shape == (5, 3)


def test_trust_checkpoint_loads_a_pickled_sample_input(clean_archive, tmp_path):
    """With --trust-checkpoint torch's own loader runs as before (the user vouched for the file)."""
    marker = tmp_path / "ran"
    path = tmp_path / "trusted.pt2"
    path.write_bytes(_hostile("sample-inputs", clean_archive, marker))
    with pytest.raises(InputError):  # the payload's return value (an int) is no sample input
        load(str(path), trust=True)
    assert marker.exists()


def test_member_outside_the_root_folder_refused(clean_archive, tmp_path):
    """Python's zipfile and torch's reader could disagree on which member is which: refused."""
    out = io.BytesIO(clean_archive)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr("other/data/weights/weight_0", b"x")
    path = tmp_path / "two_roots.pt2"
    path.write_bytes(out.getvalue())
    with pytest.raises(InputError, match="2 root folders"):
        load(str(path))


def test_empty_payload_claiming_elements_refused(clean_archive, tmp_path):
    """torch allocates zeros of the declared size for an empty record: a 0-byte file could ask for TBs."""
    def change(members, root):
        members["data/weights/weight_0"] = b""
        _edit_json(members, "data/weights/model_weights_config.json", lambda c: next(iter(c["config"].values()))[
            "tensor_meta"].update(sizes=[{"as_int": 10**6}, {"as_int": 10**6}]))

    path = tmp_path / "huge.pt2"
    path.write_bytes(_rewrite(clean_archive, change))
    with pytest.raises(InputError, match="1000000000000 elements with an empty payload"):
        load(str(path))


def test_a_flipped_weight_byte_is_caught_by_the_crc(clean_archive, tmp_path):
    """torch's own zip reader checks no CRC: without this check the altered weight would load silently."""
    with zipfile.ZipFile(io.BytesIO(clean_archive)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/weights/weight_0"))
    data = bytearray(clean_archive)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    data[info.header_offset + 30 + name_length + extra_length + 5] ^= 0xFF   # a byte of its payload
    path = tmp_path / "flipped.pt2"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="weight_0 is corrupt"):
        load(str(path))


def test_zip_bomb_refused_before_inflating(clean_archive, tmp_path):
    def change(members, root):
        members["extra/padding"] = bytes(200 * 2**20)

    data = _rewrite(clean_archive, change)
    out = io.BytesIO()  # the same archive, deflated: 200 MiB of zeros in ~200 KiB
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    path = tmp_path / "bomb.pt2"
    path.write_bytes(out.getvalue())
    with pytest.raises(InputError, match="zip bomb"):
        load(str(path))


@pytest.mark.parametrize("text, ok", [
    ("Symbol('s77', positive=True, integer=True)", True),
    ("Mul(Integer(2), Symbol('s0', integer=True))", True),
    ("FloorDiv(Symbol('s0', positive=True, integer=True), Integer(7))", True),
    ("2*s0 + Mod(s1, 4)", True),
    ("Pow(Integer(2), Integer(8))", True),
    ("Pow(Integer(2), Integer(10000000000))", False),
    ("__import__('os').system('id')", False),
    ("Symbol('s0').__class__", False),
    ("Symbol('s0', positive=True)[0]", False),
    ("Symbol('a b')", False),
    ("lambda: 0", False),
    ("(Symbol('s0'), 1) if True else 0", False),
    ("Integer(10**100)", False),
])
def test_sympy_expression_check(text, ok):
    assert (sympy_expression_problem(text) is None) == ok


COMMANDS = [
    ("inspect", "{model}"),
    ("convert", "{model} --recipe relu -o {out}"),
    ("export-onnx", "{model} -o {out}.onnx"),
    ("finetune", "{model} --data digits -o {out}"),
    ("finetune", "{student} --teacher {model} --data digits -o {out}"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command, args", COMMANDS)
def test_every_command_refuses_a_stealthy_payload(command, args, clean_archive, tmp_path, cli_process):
    """Every command that reads a model, finetune's --teacher included, refuses the archive before
    anything is unpickled (what the payload would return does not matter) and writes nothing."""
    marker = tmp_path / "ran"
    model = tmp_path / "evil.pt2"
    model.write_bytes(_hostile("sample-inputs", clean_archive, marker))
    student = tmp_path / "student.pt2"
    student.write_bytes(clean_archive)
    out = tmp_path / "out"
    code, stdout, stderr = cli_process(command, *args.format(model=model, student=student, out=out).split())
    assert code == 2, (stdout, stderr)
    assert not marker.exists()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hwact: error: {model}: member ") and "pickle" in lines[0]
    assert not out.exists() and not (tmp_path / "out.onnx").exists()
