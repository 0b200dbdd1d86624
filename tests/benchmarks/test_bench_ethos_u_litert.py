"""benchmarks/bench_ethos_u_litert.py on zoo cnn-tiny: litert-torch's PT2E int8 .tflite, compiled by Vela.

Runs only where `make litert-env` built .venv-litert (CI does not: it is a benchmark's environment) and
`make tosa-env` built Vela; skipped otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_ethos_u_litert as bench  # noqa: E402

pytestmark = pytest.mark.skipif(not bench.LITERT_PYTHON.exists(), reason="no .venv-litert (run `make litert-env`)")


def test_cnn_tiny_tflite_placement_cycles_and_agreement(tmp_path):
    from bench_ethos_u_executorch import float_program

    _, calib, pt2, evaluation = float_program("cnn-tiny", tmp_path)
    rows = bench.litert_rows(pt2, calib, evaluation, tmp_path / "litert")
    u55, u85 = rows["ethos-u55-128"], rows["ethos-u85-256"]
    assert u55["status"] == "ok", u55.get("error")
    assert u55["io"] == "int8 in, int8 out"          # full-integer I/O: the converter quantizes the boundary
    assert u55["tflite_ops"] == {"TRANSPOSE": 2, "CONV_2D": 3, "PAD": 2, "MEAN": 1, "FULLY_CONNECTED": 1}
    # the global average pool is a MEAN over 8x8 of 64 channels: Vela leaves that depth reduction to the CPU
    assert (u55["vela_npu_ops"], u55["vela_cpu_ops"]) == (8, 1)
    assert u55["cpu_by_operator"] == {"Mean": 1}
    assert u55["npu_cycles"] > 0 and u85["npu_cycles"] > 0
    cosine, top1 = u55["agreement"]
    assert cosine > 0.999 and top1 == 1.0
