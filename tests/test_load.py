"""Checkpoint intake: every supported format loads; every bad input is one line, exit 2, no output."""

import json
import os
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from hwact import models
from hwact.errors import InputError
from hwact.load import detect_format, load, parse_input_shape


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    module, specs = models.build("vit-tiny")
    x = torch.randn(2, 3, 32, 32)
    paths = {}
    paths["pt2"] = root / "vit.pt2"
    torch.export.save(torch.export.export(module, (x,)), paths["pt2"])
    paths["ts"] = root / "vit.ts"
    torch.jit.trace(module, x).save(str(paths["ts"]))
    paths["sd"] = root / "vit.pth"
    torch.save(module.state_dict(), paths["sd"])
    paths["wrapped"] = root / "wrapped.pt"
    torch.save({"state_dict": module.state_dict(), "epoch": torch.tensor(3)}, paths["wrapped"])
    paths["st"] = root / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, paths["st"])
    paths["pickle"] = root / "vit_module.pt"
    torch.save(module, paths["pickle"])
    paths["empty"] = root / "empty.pt"
    paths["empty"].write_bytes(b"")
    data = paths["pt2"].read_bytes()
    paths["truncated"] = root / "truncated.pt2"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["garbage"] = root / "garbage.pt"
    paths["garbage"].write_bytes(bytes(range(256)) * 4)
    paths["text"] = root / "notes.txt"
    paths["text"].write_text("these are not weights\n")
    paths["wrong_keys"] = root / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, paths["wrong_keys"])
    paths["wrong_shape"] = root / "wrong_shape.pth"
    sd = dict(module.state_dict())
    sd["head.weight"] = torch.zeros(7, 64)
    torch.save(sd, paths["wrong_shape"])
    paths["int_weights"] = root / "int_weights.pth"
    sd = dict(module.state_dict())
    sd["head.weight"] = torch.ones(10, 64, dtype=torch.int64)
    torch.save(sd, paths["int_weights"])
    paths["corrupt_pt2"] = root / "corrupt.pt2"  # zip directory intact, member bytes scrambled
    scrambled = bytearray(data)
    for i in range(2000, min(60000, len(scrambled) - 1000)):
        scrambled[i] ^= 0x5A
    paths["corrupt_pt2"].write_bytes(bytes(scrambled))
    paths["pickle_garbage"] = root / "garbage_pickle.pt"
    paths["pickle_garbage"].write_bytes(b"\x80\x02" + bytes((i * 97 + 13) % 256 for i in range(2000)))
    paths["truncated_st"] = root / "truncated.safetensors"
    paths["truncated_st"].write_bytes(paths["st"].read_bytes()[:300])
    paths["zip"] = root / "other.zip"
    with zipfile.ZipFile(paths["zip"], "w") as z:
        z.writestr("readme.txt", "hello")
    return paths


def reference_output(x):
    module, _ = models.build("vit-tiny")
    return module(x)


@pytest.mark.parametrize("kind,kwargs,fmt", [
    ("pt2", {}, "pt2"),
    ("ts", {"input_shapes": ("2x3x32x32",), "trust": True}, "torchscript"),
    ("sd", {"arch": "vit-tiny"}, "state_dict"),
    ("wrapped", {"arch": "vit-tiny"}, "state_dict"),
    ("st", {"arch": "vit-tiny"}, "safetensors"),
    ("pickle", {"trust": True, "input_shapes": ("1x3x32x32",)}, "pickled-module"),
])
def test_each_format_loads_to_the_same_function(files, kind, kwargs, fmt):
    loaded = load(str(files[kind]), **kwargs)
    assert loaded.format == fmt
    assert len(loaded.sha256) == 64
    x = torch.randn(2, 3, 32, 32)  # the .pt2 was exported at a static batch of 2
    torch.testing.assert_close(loaded.graph(x), reference_output(x), rtol=1e-4, atol=1e-5)


def test_static_batch_archive_converts_at_its_batch(files, tmp_path, cli):
    assert load(str(files["pt2"])).graph.fixed_batch == 2
    code, _, stderr = cli("convert", files["pt2"], "--recipe", "relu", "-o", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passes"][0]["changed"] == 2 and report["onnx"]["ort_max_abs_err"] < 1e-4


def test_pt2_input_shapes_come_from_the_archive(files):
    loaded = load(str(files["pt2"]))
    assert [(s.name, s.shape, s.dtype) for s in loaded.inputs] == [("x", (2, 3, 32, 32), torch.float32)]


def test_int_inputs_parse_and_bert_traces():
    spec = parse_input_shape("input_ids=1x16:int64")
    assert (spec.name, spec.shape, spec.dtype) == ("input_ids", (1, 16), torch.int64)
    loaded = load("zoo:bert-tiny")
    assert loaded.inputs[0].dtype == torch.int64


def test_format_is_detected_from_bytes_not_extension(files, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(files["pt2"].read_bytes())
    assert detect_format(renamed) == "pt2"


@pytest.mark.parametrize("kind,args,message", [
    ("missing", [], "no such file"),
    ("empty", [], "empty file"),
    ("truncated", [], "truncated or corrupt"),
    ("garbage", [], "unrecognized checkpoint format"),
    ("text", [], "unrecognized checkpoint format"),
    ("zip", [], "neither a torch.export"),
    ("sd", [], "--arch"),
    ("sd", ["--arch", "no-such-net"], "unknown architecture 'no-such-net'"),
    ("wrong_keys", ["--arch", "vit-tiny"], "state_dict keys do not match --arch vit-tiny"),
    ("wrong_shape", ["--arch", "vit-tiny"], "head.weight: (7, 64) vs (10, 64)"),
    ("int_weights", ["--arch", "vit-tiny"], "wrong kind of number (e.g. head.weight: torch.int64 vs torch.float32)"),
    ("pickle", ["--input-shape", "1x3x32x32"], "unpickling runs code"),
    ("ts", [], "a TorchScript archive is a program"),
    ("ts", ["--trust-checkpoint"], "--input-shape"),
    ("sd", ["--arch", "vit-tiny", "--input-shape", "1x3x48x48"], "could not trace"),
    ("sd", ["--arch", "vit-tiny", "--input-shape", "1x3xbad"], "bad --input-shape"),
    ("corrupt_pt2", [], "is corrupt (its CRC does not match)"),
    ("pickle_garbage", [], "corrupt or truncated torch.save file"),
    ("truncated_st", ["--arch", "vit-tiny"], "corrupt or truncated safetensors file"),
    ("pt2", ["--input-shape", "2x3x32x32", "--input-shape", "2x3x32x32"], "2 --input-shape values for a model with 1"),
    ("pt2", ["--input-shape", "1x3x32x32"], "exported with a fixed batch of 2"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tmp_path, cli, kind, args, message):
    path = files.get(kind, tmp_path / "does-not-exist.pt2")
    out = tmp_path / "out"
    code, stdout, stderr = cli("convert", path, *args, "--recipe", "relu", "-o", out)
    assert code == 2, stderr
    assert message in stderr
    assert stderr.startswith("hwact: error: ") and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr + stdout
    if message != "bad --input-shape":  # every file problem names the file
        assert str(path) in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == ([] if kind == "missing" else list(tmp_path.iterdir()))
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_fifo_model_is_refused_at_once(tmp_path, cli_process):
    fifo = tmp_path / "model.pt2"
    os.mkfifo(fifo)
    code, _, stderr = cli_process("inspect", fifo)  # would block forever if the FIFO were opened
    assert code == 2 and stderr == f"hwact: error: {fifo}: not a regular file\n"


def test_a_shape_that_does_not_fit_prints_one_line(cli_process):
    """torch.export logs pages of context before it raises (228 lines for this shape)."""
    code, stdout, stderr = cli_process("inspect", "zoo:vit-tiny", "--input-shape", "1x3x40x40")
    assert code == 2 and stderr.count("\n") == 1 and "could not trace the model with inputs 1x3x40x40" in stderr


def test_pickled_module_is_refused_then_accepted_with_the_flag(files, tmp_path, cli):
    code, _, stderr = cli("inspect", files["pickle"], "--input-shape", "1x3x32x32")
    assert code == 2 and "--trust-checkpoint" in stderr
    code, stdout, _ = cli("inspect", files["pickle"], "--input-shape", "1x3x32x32", "--trust-checkpoint", "--json")
    assert code == 0 and json.loads(stdout)["input"]["format"] == "pickled-module"


def test_real_process_prints_no_traceback_and_debug_shows_it(files, cli_process):
    code, stdout, stderr = cli_process("inspect", files["truncated"])
    assert code == 2 and "Traceback" not in stderr and stderr.count("\n") == 1
    code, _, stderr = cli_process("--debug", "inspect", files["truncated"])
    assert code != 0 and "Traceback" in stderr
    code, _, stderr = cli_process("inspect", files["corrupt_pt2"])  # torch.export.load logs a traceback itself
    assert code == 2 and "Traceback" not in stderr and stderr.count("\n") == 1, stderr


def test_unusable_output_path_is_exit_2(files, tmp_path, cli):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "-o", blocker / "out")
    assert code == 2 and f"{blocker} is not a folder" in stderr
    code, _, stderr = cli("export-onnx", "zoo:cnn-tiny", "-o", blocker / "m.onnx")
    assert code == 2 and f"{blocker} is not a folder" in stderr


def test_onnx_only_for_inspect_and_bench(tmp_path, cli):
    from hwact.backends.onnx import export_onnx

    path = export_onnx(load("zoo:vit-tiny").graph, tmp_path / "m.onnx")
    code, _, stderr = cli("convert", path, "--recipe", "relu", "-o", tmp_path / "o")
    assert code == 2 and "can only be inspected or benchmarked" in stderr
    with pytest.raises(InputError):
        load(str(path))
