"""CUDA logic kernel: nvcc compile (no GPU needed) and, on a GPU host, bit-exact runs against the reference."""

import shutil

import numpy as np
import pytest

from hwact.backends import logic_c, logic_cuda
from hwact.backends.toolchain import NVCC_FALLBACK, gpu_available
from hwact.errors import InputError, ToolMissingError
from logic_helpers import all_gates_netlist, random_bits, random_netlist

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None and not NVCC_FALLBACK.is_file(),
                                reason="nvcc missing")
needs_gpu = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")


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


HOST_EMULATION = r"""
// Runs the emitted CUDA kernels on the CPU: every (block, thread) in turn. Exact for these kernels, whose
// threads touch disjoint scratch columns and outputs and never synchronize.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#define __global__
#define __device__
#define __forceinline__ inline
struct ln_index { unsigned x; };
static ln_index blockIdx, blockDim, threadIdx;
#include "logic_net.cu"
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb");
    int64_t head[2];
    if (fread(head, 8, 2, f) != 2) return 2;
    int64_t n = head[0], nin = head[1], nwords = (n + 63) / 64, stride = atoi(argv[3]);
    uint8_t *bits = (uint8_t *)malloc(n * nin);
    if ((int64_t)fread(bits, 1, n * nin, f) != n * nin) return 2;
    uint64_t *x = (uint64_t *)calloc(nin * nwords, 8);
    for (int64_t s = 0; s < n; s++)
        for (int64_t i = 0; i < nin; i++) x[i * nwords + s / 64] |= (uint64_t)(bits[s * nin + i] & 1) << (s % 64);
    int64_t slots = LN_COUNTS_SLOTS > LN_BITS_SLOTS ? LN_COUNTS_SLOTS : LN_BITS_SLOTS;
    uint64_t *V = (uint64_t *)calloc(slots * stride, 8), *y = (uint64_t *)calloc((LN_NUM_OUTPUTS + 1) * nwords, 8);
    int32_t *counts = (int32_t *)calloc(n * LN_NUM_CLASSES, 4);
    blockDim.x = 32;
    for (blockIdx.x = 0; blockIdx.x * 32 < stride + 32; blockIdx.x++)
        for (threadIdx.x = 0; threadIdx.x < 32; threadIdx.x++) {
            ln_class_counts_kernel(x, nwords, n, V, stride, counts);
            ln_output_bits_kernel(x, nwords, V, stride, y);
        }
    f = fopen(argv[2], "wb");
    fwrite(counts, 4, n * LN_NUM_CLASSES, f);
    for (int64_t s = 0; s < n; s++)
        for (int64_t o = 0; o < LN_NUM_OUTPUTS; o++) fputc((int)((y[o * nwords + s / 64] >> (s % 64)) & 1), f);
    fclose(f);
    printf("host-emulated\n");
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ missing")
@pytest.mark.parametrize("stride", [1, 3, 64])       # fewer threads than words: the grid-stride loop
def test_cuda_kernel_source_is_bit_exact_under_host_emulation(tmp_path, stride):
    """No GPU here: compile the emitted kernels as C++ with CUDA's qualifiers defined away and run every
    thread on the CPU, so the kernel code (indexing, tables, GroupSum unpacking) is checked on every CI run."""
    import subprocess
    netlist = random_netlist(12, 16, 700, 90, 9, 120)
    logic_cuda.emit_cuda(netlist, tmp_path)
    (tmp_path / "emulate.cpp").write_text(HOST_EMULATION)
    subprocess.run(["g++", "-O1", "-I", str(tmp_path), str(tmp_path / "emulate.cpp"), "-o", str(tmp_path / "emulate")],
                   check=True)
    bits = random_bits(stride, 1000, netlist.num_inputs)
    result = logic_c.run_runner(tmp_path / "emulate", bits, netlist, tmp_path / "run", emulator=[],
                                extra_args=(str(stride),))
    assert result["kernel"] == "host-emulated"
    assert np.array_equal(result["counts"], netlist.class_counts(bits))
    assert np.array_equal(result["bits"], netlist.evaluate(bits).astype(np.uint8))
