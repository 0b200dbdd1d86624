"""hwact::npu_softmax and hwact::npu_layernorm (hwact/ir/int_npu_ops.py) lowered to TOSA: the TOSA reference
model equals the torch reference bit for bit (tolerance 0) on random and edge inputs, and Vela 5.2 places every
op of both on the Ethos-U55 and U85 NPUs.

Needs the TOSA environment (`make tosa-env`); skipped without it."""

import numpy as np
import pytest
import torch

from hwact.backends import tosa_lower, tosa_tools
from hwact.errors import ToolMissingError
from hwact.ir import int_npu_ops  # noqa: F401  (registers the ops)
from hwact.ir.graph import InputSpec, trace
from hwact.ir.int_nonlinear_ops import layernorm_parameters

try:
    tosa_tools.tosa_env()
except ToolMissingError:
    pytest.skip("the TOSA environment is not installed (make tosa-env)", allow_module_level=True)

hw = torch.ops.hwact


class Softmax(torch.nn.Module):
    def __init__(self, in_scale, in_bounds, out_scale, out_bounds):
        super().__init__()
        self.args = in_scale, in_bounds, out_scale, out_bounds

    def forward(self, x):
        in_scale, (lo, hi), out_scale, (qmin, qmax) = self.args
        q = hw.quantize(x, in_scale, lo, hi)
        wide = hi - lo > 255
        return hw.dequantize(hw.npu_softmax(q, in_scale, out_scale, -1, qmin, qmax, wide), out_scale)


class LayerNorm(torch.nn.Module):
    def __init__(self, channels, in_scale, in_bounds, out_scale, seed):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        gamma = torch.randn(channels, generator=generator) * 0.5 + 1
        beta = torch.randn(channels, generator=generator) * 0.2
        gamma_int, beta_int, self.gamma_scale = layernorm_parameters(gamma, beta, channels)
        self.register_buffer("gamma_int", gamma_int)
        self.register_buffer("beta_int", beta_int)
        self.in_scale, self.in_bounds, self.out_scale = in_scale, in_bounds, out_scale
        constants = int_npu_ops.layernorm_npu_constants(channels, in_scale, out_scale, self.gamma_scale, 1e-6,
                                                        *in_bounds)
        self.out_shift = int_npu_ops.layernorm_out_shift(constants, int(gamma_int.abs().max()),
                                                         int(beta_int.abs().max()))

    def forward(self, x):
        lo, hi = self.in_bounds
        q = hw.quantize(x, self.in_scale, lo, hi)
        y = hw.npu_layernorm(q, self.gamma_int, self.beta_int, self.in_scale, self.out_scale, self.gamma_scale, 1e-6,
                             lo, hi, -128, 127, self.out_shift)
        return hw.dequantize(y, self.out_scale)


def _reference_and_tosa(module, codes: torch.Tensor, scale: float, work):
    """(reference output codes, TOSA reference model output codes) for the integer input `codes` [1, ...]."""
    graph = trace(module, [InputSpec("x", tuple(codes.shape))])
    sample = (codes.to(torch.float32) * scale,)
    network, scales = tosa_lower.lower(graph, sample)
    description, constants = tosa_lower.write_description(network, work)
    names = tosa_tools.serialize(description, constants, work / "op.tosa")
    spec_in = scales["inputs"][network.inputs[0]]
    spec_out = scales["outputs"][network.outputs[0]]
    feed = (codes.numpy() + spec_in["zero_point"]).astype({"int8": np.int8, "int16": np.int16}[spec_in["dtype"]])
    got, = tosa_tools.reference_run(work / "op.tosa", names, [feed], work / "run")
    want = torch.round(graph(*sample) / spec_out["scale"]).to(torch.int64)
    return want.numpy(), got.astype(np.int64) - spec_out["zero_point"], network


def _softmax_rows(rows: int, channels: int, lo: int, hi: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(lo, hi + 1, (1, rows, channels), generator=generator)
    codes[0, 0] = 5                                    # all equal
    if rows > 1:
        codes[0, 1] = lo
        codes[0, 1, 0] = hi                            # one huge value, the rest at the bottom
    if rows > 2:
        codes[0, 2, ::2] = hi                          # saturating codes
        codes[0, 2, 1::2] = lo
    return codes


@pytest.mark.parametrize("rows, channels, bounds, scale, out", [
    (6, 65, (-128, 127), 0.0093, (0.0006231, (0, 255))),       # vit-tiny's attention
    (5, 49, (-128, 127), 0.05, (1 / 256, (0, 255))),           # swin window, coarse scale
    (4, 1, (-128, 127), 0.01, (1 / 128, (-128, 127))),         # C = 1
    (7, 300, (-32768, 32767), 0.0004, (1 / 256, (0, 255))),    # int16 scores (wide exponential)
    (6, 49, (-32768, 32767), 0.003, (1 / 256, (0, 255))),      # swin's masked window scores
])
def test_npu_softmax_tosa_is_bit_exact(tmp_path, rows, channels, bounds, scale, out):
    out_scale, out_bounds = out
    codes = _softmax_rows(rows, channels, *bounds, seed=channels)
    if bounds[0] < -128:
        codes[0, 3:] = codes[0, 3:] // 50                  # a realistic spread, below a masked (lowest) code
    want, got, network = _reference_and_tosa(Softmax(scale, bounds, out_scale, out_bounds), codes, scale, tmp_path)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    kinds = {op["op"] for op in network.ops}
    assert {"TABLE", "CLZ", "LOGICAL_LEFT_SHIFT", "MUL", "REDUCE_MAX", "REDUCE_SUM"} <= kinds
    assert not kinds & {"INTDIV", "RECIPROCAL", "EXP"}


@pytest.mark.parametrize("rows, channels, bounds, scale", [
    (8, 64, (-32768, 32767), 6.1e-5),          # vit-tiny: the int16 residual stream
    (8, 192, (-128, 127), 0.05),
    (4, 1, (-128, 127), 0.05),                 # C = 1: the output is β
    (6, 2, (-32768, 32767), 0.001),
    (8, 65, (-128, 127), 0.02),                # odd C
    (8, 768, (-32768, 32767), 1e-4),           # wide int16 rows: Σ max(d, 0) pre-shifted (k = 4), L < 0
    (8, 384, (-32768, 32767), 1e-3),           # k = 2
])
def test_npu_layernorm_tosa_is_bit_exact(tmp_path, rows, channels, bounds, scale):
    lo, hi = bounds
    generator = torch.Generator().manual_seed(channels)
    codes = torch.randint(lo, hi + 1, (1, rows, channels), generator=generator)
    codes[0, 0] = 7                                                       # constant row: variance 0
    if channels > 1:
        codes[0, 1] = torch.randint(-2, 3, (channels,), generator=generator)   # a spread of a few codes
        codes[0, 2, ::2], codes[0, 2, 1::2] = hi, lo                          # the extremes, balanced: P is largest
        codes[0, 3] = codes[0, 3] // 97                                       # a narrower row
        codes[0, 4] = lo
        codes[0, 4, channels // 2] = hi                                       # one huge outlier
        codes[0, 5] = 3
        codes[0, 5, 0] = 4                                                    # one code off a constant row
    want, got, network = _reference_and_tosa(LayerNorm(channels, scale, bounds, 0.03, seed=channels), codes, scale,
                                             tmp_path)
    np.testing.assert_array_equal(got, want)
    kinds = {op["op"] for op in network.ops}
    assert {"CLZ", "LOGICAL_LEFT_SHIFT", "ARITHMETIC_RIGHT_SHIFT", "MUL", "MAXIMUM", "REDUCE_SUM"} <= kinds
    assert not kinds & {"REDUCE_MAX", "REDUCE_MIN"}            # the row shift comes from Σ max(d, 0)


@pytest.mark.parametrize("target", [("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
                                    ("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB")])
def test_vela_places_both_ops_on_the_npu(tmp_path, target):
    """Vela 5.2 compiles npu_softmax (narrow and wide) and npu_layernorm with 0 CPU operators on U55 and U85."""
    accelerator, system, memory = target
    codes = torch.randint(-32768, 32768, (1, 6, 64), generator=torch.Generator().manual_seed(2))
    modules = {"softmax": (Softmax(0.0093, (-128, 127), 1 / 256, (0, 255)), codes.clamp(-128, 127), 0.0093),
               "softmax_wide": (Softmax(0.003, (-32768, 32767), 1 / 256, (0, 255)), codes, 0.003),
               "layernorm": (LayerNorm(64, 6e-5, (-32768, 32767), 0.03, seed=1), codes, 6e-5)}
    for name, (module, values, scale) in modules.items():
        (tmp_path / name).mkdir()
        _reference_and_tosa(module, values, scale, tmp_path / name)
        summary = tosa_tools.vela(tmp_path / name / "op.tosa", tmp_path / name / "vela", accelerator, system, memory)
        log = (tmp_path / name / "vela" / "vela.log").read_text()
        assert "CPU operators = 0 (0.0%)" in log, name
        assert int(float(summary["cycles_npu"])) > 0
