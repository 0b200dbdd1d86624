"""Issue 14, intake: Hugging Face models reach the pipeline without running code named by a file.

  * a .pt2 whose output is a ModelOutput dataclass loads in a process that never imported transformers;
  * a .pt2 exported with keyword inputs takes positional inputs named after them (--calib arrays too);
  * a save_pretrained folder converts (hwact.hf_folder); pickles, custom code and bad weights are refused.
Models are hwact.hf_suite's tiny configs (realistic random weights), so each convert takes seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

pytest.importorskip("transformers")

from hwact import hf_suite  # noqa: E402
from hwact.errors import InputError  # noqa: E402
from hwact.load import load  # noqa: E402
from hwact.safe_pt2 import read_treespec  # noqa: E402


def _logits(model, names, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**dict(zip(names, inputs))).logits


def _one_line_refusal(code, stdout, stderr, *needles):
    assert code == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ .pt2
@pytest.fixture(scope="module")
def vit():
    wrapped, entry = hf_suite.build("vit")
    return wrapped.model, entry


@pytest.fixture(scope="module")
def bert():
    wrapped, entry = hf_suite.build("bert")
    return wrapped.model, entry


def test_the_out_spec_of_a_model_output_is_read_as_its_fields_without_transformers():
    spec = read_treespec(json.dumps([1, {"type": "transformers.modeling_outputs.ImageClassifierOutput",
                                         "context": json.dumps(["logits", "hidden_states"]),
                                         "children_spec": [{"type": None, "context": None, "children_spec": []},
                                                           {"type": "builtins.tuple", "context": "null",
                                                            "children_spec": []}]}]))
    assert spec.type is dict and list(spec.context) == ["logits", "hidden_states"]
    unnamed = read_treespec(json.dumps([1, {"type": "some.module.Thing", "context": "7",
                                            "children_spec": [{"type": None, "context": None, "children_spec": []}]}]))
    assert unnamed.type is tuple and unnamed.num_leaves == 1


def test_model_output_pt2_converts_and_loads_without_transformers(vit, tmp_path, cli, cli_process):
    model, entry = vit
    x = entry.inputs(2, torch.Generator().manual_seed(0))
    path = tmp_path / "vit.pt2"
    torch.export.save(torch.export.export(model, x), path)   # returns an ImageClassifierOutput

    loaded = load(str(path))
    assert [s.name for s in loaded.inputs] == ["pixel_values"]
    torch.testing.assert_close(loaded.graph(*x), _logits(model, entry.input_names, x), rtol=1e-5, atol=1e-5)

    code, stdout, stderr = cli("convert", path, "--recipe", "relu", "-o", tmp_path / "out")
    assert code == 0, stdout + stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["onnx"]["ort_max_abs_err"] < 1e-4

    # the case of the issue: a process that never imported transformers (ModelOutput is no pytree node there)
    code, stdout, stderr = cli_process("inspect", path, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["input"]["input_shapes"] == {"pixel_values": "2x3x32x32"}


def test_an_enum_in_a_treespec_imports_nothing(tmp_path, monkeypatch):
    """torch's own treespec reader imports any module named under "__enum__"; hwact's reads plain JSON."""
    class Tiny(torch.nn.Module):
        def forward(self, x, scale):
            return x * scale

    marker = tmp_path / "imported"
    (tmp_path / "hwact_enum_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass E: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "enum.pt2"
    torch.export.save(torch.export.export(Tiny(), (), kwargs={"x": torch.randn(2, 3), "scale": torch.randn(2, 3)}),
                      path)
    data = _edit_model_json(path.read_bytes(), lambda program: _poison_in_spec(program))
    path.write_bytes(data)
    with pytest.raises(Exception):
        torch.export.load(str(path))   # plain torch imports the module (then fails on the enum lookup)
    assert marker.exists()
    marker.unlink()
    sys.modules.pop("hwact_enum_payload", None)
    try:
        load(str(path))
    except InputError:
        pass
    assert not marker.exists()


def _poison_in_spec(program):
    signature = program["graph_module"]["module_call_graph"][0]["signature"]
    protocol, spec = json.loads(signature["in_spec"])
    spec["children_spec"][1]["context"] = json.dumps(
        [{"__enum__": True, "fqn": "hwact_enum_payload:E", "name": "x"}, "scale"])
    signature["in_spec"] = json.dumps([protocol, spec])


def _edit_model_json(data: bytes, edit) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as source:
        members = {n: source.read(n) for n in source.namelist()}
    name = next(n for n in members if n.endswith("models/model.json"))
    program = json.loads(members[name])
    edit(program)
    members[name] = json.dumps(program).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for member, payload in members.items():
            target.writestr(member, payload)
    return out.getvalue()


def test_kwargs_pt2_takes_named_inputs_and_named_calibration(bert, tmp_path, cli):
    model, entry = bert
    ids, mask = entry.inputs(2, torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (), kwargs={"input_ids": ids, "attention_mask": mask},
                             dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}})
    path = tmp_path / "bert.pt2"
    torch.export.save(ep, path)

    loaded = load(str(path))
    assert [(s.name, s.shape, s.dtype) for s in loaded.inputs] == [
        ("input_ids", (2, hf_suite.SEQUENCE), torch.int64), ("attention_mask", (2, hf_suite.SEQUENCE), torch.int64)]
    torch.testing.assert_close(loaded.graph(ids, mask), _logits(model, entry.input_names, (ids, mask)),
                               rtol=1e-5, atol=1e-5)

    calib_ids, calib_mask = entry.inputs(8, torch.Generator().manual_seed(1))
    calib = tmp_path / "calib.npz"
    np.savez(calib, attention_mask=calib_mask.numpy(), input_ids=calib_ids.numpy())   # matched by name, not order
    code, stdout, stderr = cli("convert", path, "--recipe", "relu", "--calib", calib, "-o", tmp_path / "out")
    assert code == 0, stdout + stderr
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]


# ------------------------------------------------------------------------------------------ model folder
@pytest.fixture(scope="module")
def folders(tmp_path_factory, vit, bert):
    """save_pretrained folders: vit with ReLU activations (so --recipe relu keeps its function), bert as is."""
    import transformers as T

    root = tmp_path_factory.mktemp("hf")
    config = vit[0].config.to_dict()
    config["hidden_act"] = "relu"
    relu_vit = hf_suite.realistic_init(T.ViTForImageClassification(T.ViTConfig.from_dict(config)))
    relu_vit.save_pretrained(root / "vit")
    bert[0].save_pretrained(root / "bert")
    return {"vit": (root / "vit", relu_vit, vit[1]), "bert": (root / "bert", bert[0], bert[1])}


def test_vit_folder_converts_and_the_onnx_matches_the_hf_logits(folders, tmp_path, cli):
    folder, model, entry = folders["vit"]
    code, stdout, stderr = cli("convert", folder, "--recipe", "relu", "-o", tmp_path / "out")
    assert code == 0, stdout + stderr
    assert "onnxruntime vs torch" in stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"]["format"] == "hf-folder"
    assert report["input"]["input_shapes"] == {"pixel_values": f"1x3x{hf_suite.IMAGE}x{hf_suite.IMAGE}"}
    x = torch.randn(3, 3, hf_suite.IMAGE, hf_suite.IMAGE, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    np.testing.assert_allclose(got, _logits(model, entry.input_names, (x,)).numpy(), rtol=1e-4, atol=1e-4)


def test_bert_folder_converts_with_named_input_shape(folders, tmp_path, cli):
    folder, model, entry = folders["bert"]
    loaded = load(str(folder), input_shapes=("input_ids=1x16",))
    assert [(s.name, s.shape, s.dtype) for s in loaded.inputs] == [
        ("input_ids", (1, 16), torch.int64), ("attention_mask", (1, 16), torch.int64)]
    ids, mask = entry.inputs(2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded.graph(ids, mask), _logits(model, entry.input_names, (ids, mask)),
                               rtol=1e-5, atol=1e-5)
    code, stdout, stderr = cli("convert", folder, "--recipe", "relu", "-o", tmp_path / "out")
    assert code == 0, stdout + stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"]["input_shapes"] == {"input_ids": "1x64:int64", "attention_mask": "1x64:int64"}
    assert report["onnx"]["ort_max_abs_err"] < 1e-4


def test_bert_folder_converts_integer_only(folders, tmp_path, cli):
    """The issue's path end to end: a save_pretrained folder in, an integer-only model out (ONNX bit-exact,
    hwact's integer CPU runtime bit-exact too)."""
    folder, _, _ = folders["bert"]
    code, stdout, stderr = cli("convert", folder, "--recipe", "int8-shiftgelu", "--input-shape", "input_ids=1x16",
                               "-o", tmp_path / "int")
    assert code == 0, stdout + stderr
    report = json.loads((tmp_path / "int" / "report.json").read_text())
    assert report["integer"]["float_nodes"] == [] and report["onnx"]["bit_exact"] is True
    assert report["int_cpu"]["bit_exact"] is True


def test_sharded_safetensors_folder_loads(folders, tmp_path):
    _, model, entry = folders["vit"]
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    loaded = load(str(tmp_path / "sharded"))
    x = entry.inputs(2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(loaded.graph(*x), _logits(model, entry.input_names, x), rtol=1e-5, atol=1e-5)


def _variant(folders, tmp_path, name="vit") -> Path:
    target = tmp_path / f"{name}-variant"
    shutil.copytree(folders[name][0], target)
    return target


def test_pickle_only_folder_is_refused_without_trust(folders, tmp_path, cli):
    folder = _variant(folders, tmp_path, "bert")
    model = folders["bert"][1]
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    out = tmp_path / "out"
    code, stdout, stderr = cli("convert", folder, "--recipe", "relu", "-o", out)
    _one_line_refusal(code, stdout, stderr, "pytorch_model.bin", "--trust-checkpoint")
    assert not out.exists()
    loaded = load(str(folder), input_shapes=("input_ids=1x16",), trust=True)   # weights_only=True read
    ids, mask = folders["bert"][2].inputs(2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(loaded.graph(ids, mask), _logits(model, ("input_ids", "attention_mask"), (ids, mask)),
                               rtol=1e-5, atol=1e-5)


def test_custom_code_config_is_refused_and_never_run(folders, tmp_path, cli):
    folder = _variant(folders, tmp_path)
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    config["architectures"] = ["EvilModel"]
    (folder / "config.json").write_text(json.dumps(config))
    code, stdout, stderr = cli("inspect", folder)
    _one_line_refusal(code, stdout, stderr, "auto_map", "never runs code")
    assert not marker.exists()


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(architectures=["NoSuchModelForImageClassification"]), "NoSuchModelForImageClassification"),
    (lambda c: c.update(architectures=["AutoTokenizer"]), "is not a model class"),
    (lambda c: c.update(model_type="no-such-type"), "no-such-type"),
])
def test_unknown_architectures_are_refused(folders, tmp_path, cli, edit, needle):
    folder = _variant(folders, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    code, stdout, stderr = cli("inspect", folder)
    _one_line_refusal(code, stdout, stderr, needle)


def test_missing_and_misshapen_weights_are_named(folders, tmp_path, cli):
    from safetensors.torch import load_file, save_file

    folder = _variant(folders, tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["classifier.bias"]
    save_file(state, folder / "model.safetensors")
    code, stdout, stderr = cli("convert", folder, "--recipe", "relu", "-o", tmp_path / "out")
    _one_line_refusal(code, stdout, stderr, "missing", "classifier.bias")
    assert not (tmp_path / "out").exists()

    state["classifier.bias"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    code, stdout, stderr = cli("inspect", folder)
    _one_line_refusal(code, stdout, stderr, "extra.weight", "classifier.bias")


@pytest.mark.parametrize("damage, needle", [
    (lambda f: (f / "config.json").write_text("{not json"), "unreadable JSON"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1"), "safetensors"),
])
def test_damaged_folders_are_one_line(folders, tmp_path, cli, damage, needle):
    folder = _variant(folders, tmp_path)
    damage(folder)
    code, stdout, stderr = cli("inspect", folder)
    _one_line_refusal(code, stdout, stderr, needle)
