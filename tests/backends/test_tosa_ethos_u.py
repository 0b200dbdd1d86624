"""tosa-vela backend (Arm Ethos-U): TOSA reference model == hwact's integer reference with tolerance 0,
Vela compiles with 0 CPU operators, and what cannot lower stops the convert with the node list.

Needs the TOSA environment (`make tosa-env`, which `make test` runs); skipped without it."""

import json

import numpy as np
import pytest
import torch

from hwact.backends import tosa_lower, tosa_tools
from hwact.errors import ToolMissingError
from hwact.ir.int_ops import rounding_shift

try:
    tosa_tools.tosa_env()
except ToolMissingError:
    pytest.skip("the TOSA environment is not installed (make tosa-env)", allow_module_level=True)


@pytest.fixture(scope="module")
def cnn_calib(tmp_path_factory):
    """4 samples: the convert verifies every one of them in the reference model."""
    from hwact.load import load

    inputs = load("zoo:cnn-tiny").graph.example_inputs(batch=4, seed=3)
    path = tmp_path_factory.mktemp("calib") / "cnn4.npz"
    np.savez(path, x=inputs[0].numpy())
    return path


class Mixed(torch.nn.Module):
    """Every other op the lowering takes: zero pads (one folded into a conv, one a PAD), depthwise conv, max
    pool, squeeze-excite gating (sigmoid TABLE,
    a broadcast int_mul), SiLU (a TABLE), linear on tokens, two activation x activation matmuls, a residual
    add, select, mean and cat."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.excite = torch.nn.Linear(16, 16)
        self.q, self.k = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        pad = torch.nn.functional.pad
        y = torch.relu(self.depthwise(torch.relu(self.conv(pad(x, (0, 1, 0, 1))))))    # a zero pad folded into conv
        y = self.pool(pad(y, (1, 0, 1, 0)))                                          # a PAD before a max pool
        y = y * torch.sigmoid(self.excite(y.mean((2, 3))))[:, :, None, None]
        tokens = torch.nn.functional.silu(y).flatten(2).transpose(1, 2)          # [N, 64, 16]
        scores = self.q(tokens) @ self.k(tokens).transpose(1, 2)                  # [N, 64, 64]
        mixed = scores @ tokens + tokens
        return self.head(torch.cat([mixed[:, 0], mixed.mean(1)], dim=-1))


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    torch.manual_seed(0)
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 3, 16, 16),))
    torch.export.save(program, folder / "mixed.pt2")
    np.savez(folder / "calib.npz", x=torch.randn(4, 3, 16, 16).numpy())
    return folder / "mixed.pt2", folder / "calib.npz"


def _rescale_network(values: np.ndarray, m0: int, shift: int) -> tosa_lower.Network:
    net = tosa_lower.Network()
    x = net.tensor("x", values.shape, "INT32")
    net.inputs.append(x)
    net.outputs.append(net.rescale(x, "INT32", 0, m0, shift, "INT32", 0, values.shape, "y"))
    return net


@pytest.mark.parametrize("m0, shift", [(1 << 30, 31), (1 << 30, 32), (1518500250, 37), (2147483647, 62), (1 << 30, 2)])
def test_rescale_is_hwact_rounding_shift(tmp_path, m0, shift):
    """RESCALE (scale32, SINGLE_ROUND) = floor((x·m0 + 2^(shift−1)) / 2^shift): ties both signs, extremes."""
    limit = min(1 << (shift - 1), 1 << 31) - 1          # TOSA: |value| < 2^(shift−1)
    generator = np.random.default_rng(shift)
    ties = np.arange(-9, 10, dtype=np.int64)             # m0 = 2^30: x/2 and x/4 land on halves
    ties = ties[(ties >= -limit - 1) & (ties <= limit)]
    values = np.concatenate([ties, [limit, -limit - 1, limit - 1, -limit, 0],
                             generator.integers(-limit - 1, limit + 1, 200)]).astype(np.int32)
    net = _rescale_network(values, m0, shift)
    description, constants = tosa_lower.write_description(net, tmp_path)
    names = tosa_tools.serialize(description, constants, tmp_path / "r.tosa")
    got, = tosa_tools.reference_run(tmp_path / "r.tosa", names, [values], tmp_path / "run")
    want = torch.clamp(rounding_shift(torch.from_numpy(values.astype(np.int64)), m0, shift), -(1 << 31), (1 << 31) - 1)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.astype(np.int64), want.numpy())


def test_rescale_shift_below_two_is_refused():
    with pytest.raises(Exception, match="outside TOSA RESCALE's 2..62"):
        _rescale_network(np.zeros(3, np.int32), 1 << 30, 1)


@pytest.mark.parametrize("recipe", ["int8-shiftgelu", "int8-relu"])
@pytest.mark.parametrize("target, system_config", [("ethos-u55-128", "Ethos_U55_High_End_Embedded"),
                                                   ("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid")])
def test_cnn_tiny_bit_exact_and_compiled(tmp_path, cli, cnn_calib, recipe, target, system_config):
    out = tmp_path / "out"
    code, stdout, stderr = cli("convert", "zoo:cnn-tiny", "--target", target, "--recipe", recipe, "--calib", cnn_calib,
                               "-o", out)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    section = report["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 4
    assert section["accelerator"] == target and section["system_config"] == system_config
    assert section["cpu_ops"] == 0 and section["npu_ops"] > 0
    assert section["npu_cycles"] > 0 and section["macs"] > 0 and section["estimated_inference_s"] > 0
    assert "CONV2D" in section["tosa_op_kinds"] and "RESCALE" in section["tosa_op_kinds"]
    layers = section["layers"]
    assert all(layer["target"] == "NPU" for layer in layers)
    assert [layer["operator"] for layer in layers].count("Conv2D") == 4
    convs = [layer["hwact_tensor"] for layer in layers if layer["operator"] == "Conv2D"]
    assert convs[:3] == ["int_conv2d_default", "int_conv2d_default_1", "int_conv2d_default_2"]   # fused with RESCALE
    assert sum(layer["macs"] for layer in layers) == section["macs"]
    assert abs(sum(layer["cycles_pct"] for layer in layers) - 100) < 1
    assert (out / "model.tosa").stat().st_size > 1000
    assert (out / f"vela/model_summary_{system_config}.csv").exists() and (out / "vela/model_vela.tflite").exists()
    assert "Warning" not in (out / "vela/vela.log").read_text()        # explicit config, memory mode
    assert "Vela's static performance estimate" in (out / "report.md").read_text()


@pytest.mark.parametrize("target, recipe", [("ethos-u55-128", "int8-shiftgelu"), ("ethos-u85-256", "int8-relu")])
def test_mixed_ops_bit_exact_and_compiled(tmp_path, cli, mixed_model, target, recipe):
    model, calib = mixed_model
    out = tmp_path / "out"
    code, _, stderr = cli("convert", model, "--target", target, "--recipe", recipe, "--calib", calib, "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 4
    assert section["cpu_ops"] == 0 and section["npu_cycles"] > 0
    kinds = dict(item.split() for item in section["tosa_op_kinds"].split(", "))
    for kind in ("DEPTHWISE_CONV2D", "MAX_POOL2D", "MATMUL", "ADD", "MUL", "CONCAT", "REDUCE_SUM"):
        assert kind in kinds
    assert kinds["TABLE"] == "2" and kinds["MATMUL"] == "2" and kinds["PAD"] == "1"


def test_resnet18_bit_exact_on_u85(tmp_path, cli):
    """20 convs, residual adds in int16, max pool, the stride-2 1x1 downsample (cropped input); 64x64 input
    keeps the reference model's run short."""
    np.savez(tmp_path / "calib.npz", x=torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).numpy())
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:resnet18", "--input-shape", "2x3x64x64", "--target", "ethos-u85-256",
                          "--recipe", "int8-relu", "--calib", tmp_path / "calib.npz", "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 2
    assert section["cpu_ops"] == 0 and section["npu_cycles"] > 100_000
    assert "SLICE" in section["tosa_op_kinds"]


def test_a_wrong_rescale_fails_the_convert_and_writes_nothing(tmp_path, cli, cnn_calib, monkeypatch):
    """The reference-model check can fail: multipliers 0.4 % below hwact's m0 are caught."""
    original = tosa_lower.Network.rescale

    def off_by_one(self, name, in_dtype, in_zp, m0, shift, *rest):
        return original(self, name, in_dtype, in_zp, np.asarray(m0) - (np.asarray(m0) >> 8), shift, *rest)

    monkeypatch.setattr(tosa_lower.Network, "rescale", off_by_one)
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--target", "ethos-u55-128", "--calib", cnn_calib, "-o", out)
    assert code == 2
    assert "differs from the integer reference" in stderr
    assert not out.exists()


def test_float_model_is_refused_with_its_nodes(tmp_path, cli, cnn_calib):
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--target", "ethos-u55-128", "--recipe", "none", "--calib",
                          cnn_calib, "-o", out)
    assert code == 2
    assert "cannot take this graph" in stderr and "computes in float" in stderr
    assert "conv2d" in stderr and "--recipe int8-npu" in stderr
    assert "Traceback" not in stderr and not out.exists()


def test_unlowered_ops_are_named_with_the_reason(tmp_path, cli):
    """vit-tiny with int8-shiftgelu: Shiftmax / I-LayerNorm (int64) and ShiftGELU (no TABLE) have no bit-exact TOSA
    lowering: exit 2, each listed with the recipe that avoids it."""
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--target", "ethos-u55-128", "--recipe", "int8-shiftgelu",
                          "-o", out)
    assert code == 2
    assert "i_layernorm_default (hwact.i_layernorm.default): I-LayerNorm's variance" in stderr
    assert "shiftmax_default (hwact.shiftmax.default)" in stderr and "use --recipe int8-npu" in stderr
    assert "Traceback" not in stderr and not out.exists()


def _zoo_calib(folder, name: str, samples: int = 4):
    from hwact.load import load

    path = folder / f"{name}.npz"
    np.savez(path, x=load(f"zoo:{name}").graph.example_inputs(batch=samples, seed=3)[0].numpy())
    return path


@pytest.mark.parametrize("model, target", [("vit-tiny", "ethos-u55-128"), ("vit-tiny", "ethos-u85-256"),
                                           ("swin-tiny", "ethos-u55-128"), ("convnext-tiny", "ethos-u85-256")])
def test_zoo_transformers_run_whole_on_the_npu_bit_exact(tmp_path, cli, model, target):
    """The targets' default recipe int8-npu: LayerNorm, softmax and GELU become npu_layernorm, npu_softmax and
    TABLEs; every op of the network is on the NPU in Vela's plan and the TOSA reference model equals the integer
    reference bit for bit (Swin: its int16 scores, biased and masked, take npu_softmax's wide form; its patch
    merging is strided slices)."""
    out = tmp_path / "out"
    code, _, stderr = cli("convert", f"zoo:{model}", "--target", target, "--calib", _zoo_calib(tmp_path, model), "-o",
                          out)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    section = report["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 4
    assert section["cpu_ops"] == 0 and section["npu_ops"] > 100 and section["npu_cycles"] > 0
    assert all(layer["target"] == "NPU" for layer in section["layers"])
    kinds = dict(item.split() for item in section["tosa_op_kinds"].split(", "))
    assert {"TABLE", "CLZ", "LOGICAL_LEFT_SHIFT", "MAXIMUM"} <= set(kinds) and "INTDIV" not in kinds
    assert "REDUCE_MIN" not in kinds                # npu_layernorm's row shift comes from Σ max(d, 0)
    passes = {record["name"]: record for record in report["passes"]}
    assert passes["npu-layernorm"]["changed"] > 0 and passes["lut-gelu"]["changed"] > 0
    if model != "convnext-tiny":
        assert passes["npu-softmax"]["changed"] > 0 and "MATMUL" in kinds
    if model == "swin-tiny":
        wide = [layer.get("wide") for layer in report["integer"]["nonlinear"] if layer["pass"] == "npu-softmax"]
        assert wide == [True] * 4                  # scores + relative-position bias (and masks) are int16 codes


def test_hugging_face_vit_runs_whole_on_the_npu(tmp_path, cli):
    """transformers' ViT (not written here): SDPA decomposed, its all-true attention mask a constant that lowers to
    nothing, LayerNorm / softmax / GELU through int8-npu; bit-exact, 0 CPU operators on U55-128."""
    pytest.importorskip("transformers")
    from hwact import hf_suite

    model, calib, _ = hf_suite.save_files("vit", tmp_path, calibration=2)
    out = tmp_path / "out"
    code, _, stderr = cli("convert", model, "--target", "ethos-u55-128", "--calib", calib, "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 2
    assert section["cpu_ops"] == 0 and section["npu_cycles"] > 0


def test_hugging_face_bert_is_refused_with_its_blockers(tmp_path, cli):
    """transformers' BERT: its embeddings are GATHERs and its attention mask comes from an input (SELECT), neither
    on U55: exit 2, the nodes listed, nothing written."""
    pytest.importorskip("transformers")
    from hwact import hf_suite

    model, calib, _ = hf_suite.save_files("bert", tmp_path, calibration=2)
    out = tmp_path / "out"
    code, _, stderr = cli("convert", model, "--target", "ethos-u55-128", "--calib", calib, "-o", out)
    assert code == 2
    assert "int_embedding_default (hwact.int_embedding.default): embedding lookups (GATHER)" in stderr
    assert "Traceback" not in stderr and not out.exists()


def test_missing_tosa_environment_is_one_line(tmp_path, cli, cnn_calib, monkeypatch):
    monkeypatch.setenv("HWACT_TOSA_ENV", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--target", "ethos-u55-128", "--calib", cnn_calib, "-o", out)
    assert code == 2
    assert "make tosa-env" in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_qkv_split_slices_before_it_transposes(tmp_path):
    """Attention's q, k, v: a [1, N, 3, H, D] tensor seen through the permute to [3, 1, H, N, D], each part
    selected, then laid out for the MATMULs ([1, H, N, D], k as [1, H, D, N]). The SLICEs read the tensor in its
    own layout and every TRANSPOSE is of rank <= 3 with no size-1 axis (Vela splits a rank-5 transpose into 13);
    the TOSA reference model gives numpy's transpose and slices."""
    n, heads, depth = 5, 2, 4
    lowering = tosa_lower.Lowering(None, {})
    net = lowering.net
    stored = net.tensor("qkv", [1, n, 3, heads, depth], "INT8")
    net.inputs.append(stored)
    qkv = tosa_lower.Value(stored, (3, 1, heads, n, depth), "INT8", 0, (1, 3, 0, 2, 4))
    assert qkv.tosa_shape == [1, n, 3, heads, depth]
    parts = [tosa_lower._select_value(lowering, qkv, 0, index, f"part{index}") for index in range(3)]
    net.outputs += [net.logical(parts[0]), net.layout(parts[1], (0, 1, 3, 2)), net.logical(parts[2])]
    transposes = [op for op in net.ops if op["op"] == "TRANSPOSE"]
    assert len(transposes) == 3
    assert all(1 not in net.shape_of(op["inputs"][0]) and len(net.shape_of(op["inputs"][0])) == 3 for op in transposes)
    description, constants = tosa_lower.write_description(net, tmp_path)
    names = tosa_tools.serialize(description, constants, tmp_path / "qkv.tosa")
    values = np.random.default_rng(0).integers(-128, 128, (1, n, 3, heads, depth)).astype(np.int8)
    got = tosa_tools.reference_run(tmp_path / "qkv.tosa", names, [values], tmp_path / "run")
    logical = values.transpose(np.argsort((1, 3, 0, 2, 4)))                     # [3, 1, H, N, D]
    for mine, want in zip(got, [logical[0], logical[1].transpose(0, 1, 3, 2), logical[2]]):
        np.testing.assert_array_equal(mine, want)


class Qkv(torch.nn.Module):
    """The zoo's attention (q, k, v selected from one linear after a reshape and a permute), then a head."""

    def __init__(self):
        super().__init__()
        from hwact.models.common import Attention

        self.attention, self.head = Attention(16, 2), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.attention(x))


def test_a_linear_read_only_in_parts_is_split_into_them(tmp_path, cli):
    """q, k, v are each their own CONV2D (the linear's channel ranges, no SLICE: a strided channel copy per row on
    Ethos-U55), the whole linear pruned; bit-exact in the reference model."""
    torch.manual_seed(0)
    program = torch.export.export(Qkv().eval(), (torch.randn(1, 6, 16),))
    torch.export.save(program, tmp_path / "qkv.pt2")
    np.savez(tmp_path / "calib.npz", x=torch.randn(4, 6, 16).numpy())
    out = tmp_path / "out"
    code, _, stderr = cli("convert", tmp_path / "qkv.pt2", "--target", "ethos-u55-128", "--calib",
                          tmp_path / "calib.npz", "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    assert section["bit_exact"] is True and section["cpu_ops"] == 0
    kinds = dict(item.split() for item in section["tosa_op_kinds"].split(", "))
    assert kinds["CONV2D"] == "5" and "SLICE" not in kinds            # q, k, v, the projection and the head


def test_unread_ops_are_pruned_from_the_description(tmp_path):
    """An op nothing reads (the RESHAPE a TABLE was moved before) leaves the description with its tensor and the
    constants only it read; what the outputs depend on stays."""
    net = tosa_lower.Network()
    x = net.tensor("x", [1, 4, 1, 8], "INT8")
    net.inputs.append(x)
    dead = net.reshape(x, [4, 8], "INT8", "dead")
    table = net.const("table", np.arange(-128, 128), "INT8")
    net.outputs.append(net.reshape(net.op("TABLE", [x, table], [1, 4, 1, 8], "INT8", ["TableAttribute", []], "lut"),
                                   [1, 4, 8], "INT8", "y"))
    body, constants = net.description()
    assert [op["op"] for op in body["ops"]] == ["TABLE", "RESHAPE"]
    assert dead not in {t["name"] for t in body["tensors"]} and "table" in constants
    assert len(constants) == 2                     # the table and the live RESHAPE's shape; the dead one's is gone


def test_storage_types():
    assert tosa_lower.storage(-128, 127) == ("INT8", 0)
    assert tosa_lower.storage(0, 255) == ("INT8", -128)
    assert tosa_lower.storage(-128, 255) == ("INT16", 0)
    assert tosa_lower.storage(-40000, 0) == ("INT32", 0)


def test_bench_prints_vela_estimates_per_configuration(tmp_path, cli, cnn_calib):
    out = tmp_path / "out"
    assert cli("convert", "zoo:cnn-tiny", "--target", "ethos-u55-128", "--calib", cnn_calib, "-o", out)[0] == 0
    code, stdout, stderr = cli("bench", out)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["kind"] == "estimate" and "not measurements" in result["note"]
    rows = {row["target"]: row for row in result["configurations"]}
    assert set(rows) == {"ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256"}
    assert all(row["npu_cycles"] > 0 and row["cpu_ops"] == 0 for row in rows.values())
    report = json.loads((out / "report.json").read_text())["ethos_u"]
    assert rows["ethos-u55-128"]["npu_cycles"] == report["npu_cycles"]       # same compile, same estimate
    assert rows["ethos-u55-256"]["npu_cycles"] < rows["ethos-u55-128"]["npu_cycles"]
    (out / "model.tosa").unlink()
    code, _, stderr = cli("bench", out)
    assert code == 2 and "no model.tosa" in stderr


def test_hugging_face_efficientnet_bit_exact(tmp_path, cli):
    """transformers' EfficientNet: explicit zero pads (folded into the convs), depthwise convs, SiLU and sigmoid
    TABLEs, squeeze-excite MUL with its [N, C, 1, 1] scale meeting NHWC activations without a TRANSPOSE."""
    pytest.importorskip("transformers")
    from hwact import hf_suite

    model, calib, _ = hf_suite.save_files("efficientnet", tmp_path, calibration=2)
    out = tmp_path / "out"
    code, _, stderr = cli("convert", model, "--target", "ethos-u85-256", "--recipe", "int8-relu", "--calib", calib,
                          "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 2 and section["cpu_ops"] == 0
    kinds = dict(item.split() for item in section["tosa_op_kinds"].split(", "))
    assert {"DEPTHWISE_CONV2D", "TABLE", "MUL"} <= set(kinds) and "PAD" not in kinds
    assert int(kinds["TRANSPOSE"]) == 1                   # the input's NCHW -> NHWC only


def test_grouped_convolution_is_named(tmp_path, cli):
    """A grouped (not depthwise) convolution lowers to hwact's int_conv2d but has no TOSA form: exit 2, named."""
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, groups=2), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 4, 8, 8),)), tmp_path / "grouped.pt2")
    np.savez(tmp_path / "calib.npz", x=torch.randn(2, 4, 8, 8).numpy())
    out = tmp_path / "out"
    code, _, stderr = cli("convert", tmp_path / "grouped.pt2", "--target", "ethos-u55-128", "--calib",
                          tmp_path / "calib.npz", "-o", out)
    assert code == 2
    assert "(hwact.int_conv2d.default): grouped convolution (2 groups) has no TOSA lowering" in stderr
    assert not out.exists()


def test_saturated_inputs_bit_exact(tmp_path, cli, mixed_model):
    """Inputs of ±1 only: every input code is at the end of its range (±127), so the convolutions, the
    uint8 (zero point −128) activations after ReLU and the matmuls see their extreme codes."""
    model, _ = mixed_model
    signs = torch.sign(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5)))
    np.savez(tmp_path / "calib.npz", x=signs.numpy())
    out = tmp_path / "out"
    code, _, stderr = cli("convert", model, "--target", "ethos-u55-128", "--calib", tmp_path / "calib.npz", "-o", out)
    assert code == 0, stderr
    section = json.loads((out / "report.json").read_text())["ethos_u"]
    assert section["bit_exact"] is True and section["samples"] == 4
    assert "int8 zero point 0" in section["input_scales"]


class CausalAttention(torch.nn.Module):
    """Scores under a constant causal mask (where(keep, s, -inf)): int_mask with a constant keep, int16 codes."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(16, 16)
        self.register_buffer("keep", torch.tril(torch.ones(12, 12, dtype=torch.bool)))

    def forward(self, x):
        scores = torch.where(self.keep, self.q(x) @ x.transpose(1, 2), float("-inf"))
        return torch.softmax(scores, -1) @ x


def test_constant_causal_mask_bit_exact(tmp_path, cli):
    """The mask becomes MUL / ADD with constants (SELECT is not on U55), the masked scores int16's lowest code,
    which npu_softmax's wide form gives weight 0; bit-exact, 0 CPU operators."""
    torch.manual_seed(0)
    torch.export.save(torch.export.export(CausalAttention().eval(), (torch.randn(2, 12, 16),)), tmp_path / "c.pt2")
    np.savez(tmp_path / "calib.npz", x=torch.randn(4, 12, 16).numpy())
    out = tmp_path / "out"
    code, _, stderr = cli("convert", tmp_path / "c.pt2", "--target", "ethos-u55-128", "--calib", tmp_path / "calib.npz",
                          "-o", out)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    section = report["ethos_u"]
    assert section["bit_exact"] is True and section["cpu_ops"] == 0
    assert "SELECT" not in section["tosa_op_kinds"]
    assert [layer["wide"] for layer in report["integer"]["nonlinear"]] == [True]
