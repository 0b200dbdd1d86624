"""Issue 12, class 6: causes a user controls end with exit 2 and one line that names them (never an
"internal error", a traceback, a temporary path or a split line). Hostile files are built in tmp_path."""

import struct
import zlib

import numpy as np
import pytest
import torch

from hwact.errors import InputError, VerificationError


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def save_pt2(module: torch.nn.Module, path) -> None:
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(module.eval(), (torch.randn(2, 8),), dynamic_shapes=({0: batch},)), path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """good.pt2 (finite) and nan.pt2 (NaN in fc1.weight and fc2.bias, +Inf in fc1.weight: two tensors)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    module = Mlp()
    save_pt2(module, root / "good.pt2")
    with torch.no_grad():
        module.fc1.weight[0, 0], module.fc1.weight[1, 1], module.fc2.bias[0] = float("nan"), float("inf"), float("nan")
    save_pt2(module, root / "nan.pt2")
    return root


def one_error_line(stderr: str) -> str:
    """The single stderr line of a user error (asserts there is exactly one and no traceback)."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwact: error: "), stderr
    assert "Traceback" not in stderr and ".tmp" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------------- non-finite numbers
def test_nan_weights_are_named_up_front(models, tmp_path, cli_process, cli):
    code, _, stderr = cli_process("convert", models / "nan.pt2", "--recipe", "relu", "-o", tmp_path / "out")
    assert code == 2
    line = one_error_line(stderr)
    assert "nan.pt2: 2 weights hold NaN/Inf (e.g. fc1.weight)" in line and "onnxruntime" not in line
    code, _, stderr = cli("export-onnx", models / "nan.pt2", "-o", tmp_path / "model.onnx")
    assert code == 2 and "2 weights hold NaN/Inf" in one_error_line(stderr)
    assert not any(tmp_path.iterdir())


def test_calibration_values_that_overflow_are_blamed_on_the_inputs(models, tmp_path, cli):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.full((8, 8), 3e38, dtype=np.float32))
    for command in (["convert", models / "good.pt2", "--recipe", "relu", "-o", tmp_path / "out"],
                    ["export-onnx", models / "good.pt2", "-o", tmp_path / "model.onnx"]):
        code, _, stderr = cli(*command, "--calib", calib)
        line = one_error_line(stderr)
        assert code == 2 and "the model's outputs are NaN/Inf on calibration batch 1 of 2" in line
        assert "inputs up to 3e+38 overflow float32 inside the model" in line and "onnxruntime" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz"]


def test_check_finite_counts_every_tensor_and_ignores_integers():
    from hwact.ir.graph import InputSpec, check_finite, trace

    graph = trace(Mlp(), [InputSpec("x", (1, 8))])
    check_finite(graph, "m.pt2")   # finite: nothing to say
    graph.module.fc2.bias.data[1] = float("-inf")
    with pytest.raises(InputError) as caught:
        check_finite(graph, "m.pt2")
    assert caught.value.message == "m.pt2: 1 weight holds NaN/Inf (e.g. fc2.bias)"


def test_a_pass_that_makes_outputs_nan_fails_verification(models):
    from hwact.load import load
    from hwact.passes import base
    from hwact.passes.manager import random_batches, run_passes

    @base.register
    class PoisonForTest(base.Pass):
        """Test-only pass: sets one weight to NaN."""
        name = "poison-for-test"

        def __call__(self, graph):
            graph.module.fc2.bias.data[0] = float("nan")
            return graph, 1

    try:
        graph = load(str(models / "good.pt2")).graph
        with pytest.raises(VerificationError, match="pass poison-for-test .* made the outputs NaN/Inf on calibration "
                                                    "batch 1 of 2 .they were finite before it."):
            run_passes(graph, ["poison-for-test"], {}, random_batches(graph.inputs, 8, 4))
    finally:
        base._REGISTRY.classes.pop("poison-for-test")


def test_verify_names_the_artifact_by_its_final_name(models, tmp_path):
    from hwact.backends.onnx import export_onnx, verify
    from hwact.load import load
    from hwact.passes.manager import random_batches

    graph = load(str(models / "good.pt2")).graph
    staged = export_onnx(graph, tmp_path / ".out.tmp-123" / "model.onnx")
    batches = random_batches(graph.inputs, 8, 4)
    graph.module.fc2.bias.data += 1.0   # the torch graph now differs from the file
    with pytest.raises(VerificationError, match=r"^model\.onnx: onnxruntime differs from the torch graph by 1 "):
        verify(graph, staged, batches)
    with pytest.raises(VerificationError, match=r"^out/model\.onnx: onnxruntime differs"):
        verify(graph, staged, batches, name="out/model.onnx")


@pytest.mark.parametrize("elem_type, name", [(8, "string"), (16, "bfloat16"), (17, "float8e4m3fn")])
def test_onnx_input_of_a_type_torch_cannot_take(tmp_path, elem_type, name):
    import onnx

    from hwact.load import load

    h = onnx.helper
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", elem_type, ("N", 4))],
                         [h.make_tensor_value_info("y", elem_type, ("N", 4))])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 20)]), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=f"m.onnx: input 'x' has unsupported type {name}$"):
        load(str(tmp_path / "m.onnx"), allow_onnx=True)


# ------------------------------------------------------------------------------------------ bench folder
@pytest.mark.parametrize("text, kind", [("[]", "array"), ("1", "number"), ('"x"', "string"), ("null", "null")])
def test_bench_report_json_that_is_not_an_object(tmp_path, cli, text, kind):
    (tmp_path / "report.json").write_text(text)
    code, _, stderr = cli("bench", tmp_path)
    assert code == 2
    assert one_error_line(stderr).endswith(f"report.json: holds a JSON {kind} where a JSON object is expected "
                                           "(hint: the file was not written by hwact, or was edited)")


# -------------------------------------------------------------------------------------- training inputs
def test_train_delta_with_an_empty_train_split(tmp_path, cli):
    from hwact.train.delta import train_delta

    code, _, stderr = cli("train-delta", "--per-word", "1", "-o", tmp_path / "kw")
    assert code == 2 and "--per-word must be >= 2, got 1" in one_error_line(stderr)
    empty = {"x": np.zeros((0, 5, 3), np.float32), "y": np.zeros(0, np.int64)}
    one = {"x": np.zeros((1, 5, 3), np.float32), "y": np.zeros(1, np.int64)}
    with pytest.raises(InputError, match="the train split is empty"):
        train_delta(empty, one, epochs=1, delta_epochs=1)
    assert not any(tmp_path.iterdir())


def write_png_header(path, width: int, height: int) -> None:
    """A PNG that declares width x height grey pixels and holds almost none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 20_000])   # over Pillow's warning cap (else: "truncated"), its error cap
def test_image_folder_decompression_bomb(tmp_path, side):
    from hwact.train.data import load_dataset

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    write_png_header(tmp_path / "a" / "bomb.png", side, side)
    write_png_header(tmp_path / "b" / "small.png", 8, 8)
    with pytest.raises(InputError, match=r"a/bomb\.png: too many pixels to decode safely"):
        load_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("args, message", [
    (["--recipe", "relu", "--only", "blocks.9*"], "--only 'blocks.9*' matches no GELU site (hint: GELU sites: act)"),
    (["--recipe", "relu", "--skip", "fc*"], "--skip 'fc*' matches no GELU site (hint: GELU sites: act)"),
    (["--recipe", "fold-bn", "--only", "act"], "--only/--skip choose the sites of gelu-to-helu, gelu-to-relu; "
                                               "none of them runs here (passes: fold-bn, cleanup)"),
])
def test_only_and_skip_that_select_nothing(models, tmp_path, cli, args, message):
    code, _, stderr = cli("convert", models / "good.pt2", *args, "-o", tmp_path / "out")
    assert code == 2 and message in one_error_line(stderr)
    assert not (tmp_path / "out").exists()


def test_options_the_conversion_would_ignore(models, tmp_path, cli):
    for option, value in (("--key-interval", "3"), ("--pipeline-every", "2")):
        code, _, stderr = cli("convert", models / "good.pt2", option, value, "-o", tmp_path / "out")
        assert code == 2
        assert one_error_line(stderr).startswith(f"hwact: error: {option} does not apply to {models / 'good.pt2'}, "
                                                 "a tensor model")
    assert not (tmp_path / "out").exists()


def test_bench_stream_off_a_delta_folder(tmp_path, cli):
    code, _, stderr = cli("bench", tmp_path / "model.onnx", "--threshold", "0.1")
    assert code == 2 and "--stream and --threshold apply to a delta model's convert folder" in one_error_line(stderr)


def test_only_lists_at_most_five_sites():
    from hwact import models
    from hwact.ir.activations import gelu_sites, require_matches
    from hwact.ir.graph import trace

    sites = gelu_sites(trace(*models.build("vit-tiny", depth=7)))
    with pytest.raises(InputError) as caught:
        require_matches(sites, only=("head*",))
    assert caught.value.hint == ("GELU sites: blocks.0.mlp.act, blocks.1.mlp.act, blocks.2.mlp.act, blocks.3.mlp.act, "
                                 "blocks.4.mlp.act (7 in all)")


def test_arch_help_lists_the_zoo(cli):
    from hwact.models import ZOO

    code, stdout, _ = cli("convert", "--help")
    assert code == 0 and "--zoo" not in stdout
    text = " ".join(stdout.split())
    listed = text.split("Zoo architecture of a state_dict checkpoint:", 1)[1].split(".", 1)[0]
    assert [name.strip() for name in listed.replace("- ", "-").split(",")] == list(ZOO)


# ------------------------------------------------------------------------------------------ the one line
def test_control_characters_in_a_path_stay_on_one_line(tmp_path, cli_process):
    name = "bad\nname\x1b[31m.pt2"
    code, _, stderr = cli_process("inspect", tmp_path / name)
    assert code == 2
    line = one_error_line(stderr)
    assert "bad\\nname\\x1b[31m.pt2: no such file" in line and "\x1b" not in line
