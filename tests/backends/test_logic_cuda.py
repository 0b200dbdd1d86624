"""CUDA logic kernel: nvcc compile (no GPU needed) and, on a GPU host, bit-exact runs against the reference."""

import shutil

import numpy as np
import pytest

from hwact.backends import logic_cuda
from hwact.errors import InputError, ToolMissingError
from logic_helpers import all_gates_netlist, random_bits, random_netlist

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None and not logic_cuda.NVCC_FALLBACK.is_file(),
                                reason="nvcc missing")
needs_gpu = pytest.mark.skipif(not logic_cuda.gpu_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    netlist = random_netlist(11, 24, 1500, 120, 10, 200)
    folder = tmp_path_factory.mktemp("cuda")
    emitted = logic_cuda.emit_cuda(netlist, folder)
    compiled = logic_cuda.compile_cuda(folder, arch="sm_80")
    return netlist, folder, emitted, compiled


@needs_nvcc
def test_nvcc_compiles_cubin_and_runner(built):
    netlist, folder, emitted, compiled = built
    assert emitted["files"] == ["logic_net.cu"]
    assert compiled["files"] == ["logic_net.cubin", "logic_net_cuda"]
    cubin = (folder / "logic_net.cubin").read_bytes()
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 1000
    for kernel in (b"ln_class_counts_kernel", b"ln_output_bits_kernel"):
        assert kernel in cubin
    assert (folder / "logic_net_cuda").stat().st_mode & 0o111
    assert not list(folder.glob(".*partial"))


@needs_nvcc
def test_nvcc_compiles_for_other_archs(tmp_path):
    logic_cuda.emit_cuda(all_gates_netlist(), tmp_path, name="gates")
    result = logic_cuda.compile_cuda(tmp_path, name="gates", arch="sm_90", runner=False)
    assert result["files"] == ["gates.cubin"] and result["runner"] is None


@needs_nvcc
@needs_gpu
@pytest.mark.parametrize("n", [1, 63, 64, 65, 257, 1000, 5000])
def test_gpu_run_is_bit_exact(built, tmp_path, n):
    netlist, folder, _, compiled = built
    bits = random_bits(n, n, netlist.num_inputs)
    result = logic_cuda.run_cuda(folder / compiled["runner"], bits, netlist, tmp_path)
    assert result["kernel"] == "cuda"
    assert np.array_equal(result["counts"], netlist.class_counts(bits))
    assert np.array_equal(result["bits"], netlist.evaluate(bits).astype(np.uint8))


@needs_nvcc
@needs_gpu
def test_gpu_each_of_the_16_gates(tmp_path):
    netlist = all_gates_netlist()
    logic_cuda.emit_cuda(netlist, tmp_path)
    compiled = logic_cuda.compile_cuda(tmp_path)
    bits = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 75, dtype=np.uint8)
    result = logic_cuda.run_cuda(tmp_path / compiled["runner"], bits, netlist, tmp_path / "run", repeat=3)
    assert np.array_equal(result["bits"], netlist.evaluate(bits).astype(np.uint8))
    assert np.array_equal(result["counts"], netlist.class_counts(bits))
    assert result["samples_per_s"] > 0


def test_missing_nvcc_and_bad_arch_are_clear_errors(tmp_path, monkeypatch):
    logic_cuda.emit_cuda(all_gates_netlist(), tmp_path)
    with pytest.raises(InputError, match="sm_80"):
        logic_cuda.compile_cuda(tmp_path, arch="ampere")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolMissingError, match="nvcc is not installed") as error:
        logic_cuda.compile_cuda(tmp_path)
    assert "apt-get install" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logic_net.cu"]
