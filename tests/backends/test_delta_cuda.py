"""CUDA delta kernel: nvcc compiles it here (CI); it runs bit-exact against the reference on a GPU."""

import shutil

import numpy as np
import pytest

from delta_helpers import delta_model, lowered, walk
from hwact.backends import delta_c, delta_cuda
from hwact.backends.toolchain import gpu_available

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    return delta_cuda.build_cuda(tmp_path_factory.mktemp("cuda"))


@needs_nvcc
def test_nvcc_builds_the_kernel_for_every_arch(exe):
    assert exe.is_file() and exe.stat().st_size > 0
    if shutil.which("cuobjdump"):
        listing = __import__("subprocess").run(["cuobjdump", "--list-elf", str(exe)], capture_output=True, text=True)
        for arch in delta_cuda.ARCHS:
            assert f"sm_{arch}" in listing.stdout


@needs_nvcc
@pytest.mark.skipif(not gpu_available(), reason="no GPU on this machine (runs on a GPU machine)")
@pytest.mark.parametrize("threshold,key_interval,dense", [(0.0, 0, False), (0.3, 6, False), (0.3, 0, True)])
def test_cuda_matches_reference_on_gpu(exe, tmp_path, threshold, key_interval, dense):
    graph = lowered(delta_model(features=13, hidden=(300, 40), steps=(0.125, 0.0625, 0.0625)),
                    threshold=threshold, key_interval=key_interval)
    blob = delta_c.net_blob(graph)
    x = walk(5, 30, 13, seed=3)
    expected, fired = delta_c.reference_stream(graph, x, threshold=0.0 if dense else None,
                                               key_interval=0 if dense else None)
    result = delta_cuda.run_cuda(exe, blob, x.numpy(), tmp_path, dense=dense)
    assert np.array_equal(result["y"], expected.numpy())
    if not dense:
        assert result["fired"].tolist() == fired
