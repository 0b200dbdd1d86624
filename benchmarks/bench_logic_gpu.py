"""Logic-gate netlists on a GPU: hwact's CUDA kernel vs a PyTorch bit-packed evaluator on the same netlist,
and the fraction of the memory roofline (hwact issue 17). Writes benchmarks/results/logic_gpu.md.

Netlists: random layered nets as difflogic wires them (bench_logic.random_layered: each gate reads two
random nodes of the previous layer, uniform gate ids), 256 input bits, GroupSum(10):
16k gates (4 x 4000), 64k (4 x 16000), 384k (6 x 64000); batches of 256 k and 1 M random samples.

Engines, all with the input already on the GPU and int32 class counts out, checked equal to
`Netlist.class_counts` on the first --check samples before timing:
  * hwact CUDA: the logic-cuda target's kernel (logic_kernel.cu, compiled by nvcc for this GPU's
    compute capability), timed by its host runner (CUDA events, best of --repeat launches of the count
    kernel on the packed input in GPU memory);
  * PyTorch packed: 64 samples per int64 word, one level at a time, every gate as a truth-table select
    `M00 & ~a & ~b | M01 & ~a & b | M10 & a & ~b | M11 & a & b` (the masks M from the gate ids), then the
    GroupSum counts by unpacking the output bits per class; and the same without the counts ("gates
    only"). Timed with CUDA synchronisation, best of --repeat.
Memory roofline: a gate reads two 8-byte words and writes one per 64 samples, so a netlist of G gates
needs at least 24 G bytes per 64 samples if every value goes through GPU memory; at the copy bandwidth B
measured here (a device-to-device copy of 2 GiB: read + write bytes / time) that bounds the rate at
B * 64 / (24 G) samples/s. `of roofline` = measured / that bound.

Without a GPU (or nvcc) the script says so and exits 0, writing nothing. `--cpu-check` runs the PyTorch
evaluator on the CPU on a small net and checks it against Netlist.class_counts (what can be tested
without a GPU). Sized to finish in under 5 minutes on an H200.

    python benchmarks/bench_logic_gpu.py [--nets 4x4000 4x16000 6x64000] [--samples 262144 1048576]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_logic import random_layered  # noqa: E402

from hwact.errors import ToolMissingError  # noqa: E402
from hwact.ir.netlist import Netlist  # noqa: E402

INPUTS, CLASSES = 256, 10
SHIFTS = torch.arange(64, dtype=torch.int64)


def layers_of(netlist: Netlist) -> list[np.ndarray]:
    """Gate indices per level; a strictly layered net (each level reads only the one before) is required,
    so the evaluator keeps one level of values at a time."""
    levels = netlist.levels()
    gate_levels = levels[netlist.num_inputs:]
    layers = [np.flatnonzero(gate_levels == level) for level in range(1, int(gate_levels.max()) + 1)]
    for index, gates in enumerate(layers):
        assert (levels[netlist.a[gates]] == index).all() and (levels[netlist.b[gates]] == index).all(), \
            "not a strictly layered net"
    assert np.array_equal(netlist.outputs, netlist.num_inputs + layers[-1]), "outputs must be the last layer"
    return layers


class TorchPacked:
    """The netlist as int64 bit-packed PyTorch ops on `device`, one level at a time."""

    def __init__(self, netlist: Netlist, device: torch.device):
        self.netlist, self.device = netlist, device
        self.layers = []
        first = 0                                         # node id of the previous level's first value
        for gates in layers_of(netlist):
            ops = torch.as_tensor(netlist.ops[gates].astype(np.int64), device=device)
            masks = [(-((ops >> (3 - k)) & 1))[:, None] for k in range(4)]     # M00 M01 M10 M11 (all-ones/0)
            a = torch.as_tensor(netlist.a[gates] - first, device=device)
            b = torch.as_tensor(netlist.b[gates] - first, device=device)
            self.layers.append((a, b, masks))
            first = netlist.num_inputs + int(gates[0])

    def pack(self, bits: torch.Tensor) -> torch.Tensor:
        """(N, inputs) 0/1 uint8 -> (inputs, N / 64) int64 words, sample s at bit s % 64 (N multiple of 64)."""
        n = bits.shape[0]
        words = bits.to(torch.int64).reshape(n // 64, 64, -1) << SHIFTS.to(bits.device)[None, :, None]
        return words.sum(dim=1).t().contiguous()      # distinct bits: the sum is the OR

    def gates(self, words: torch.Tensor, chunk_bytes: int = 1 << 30) -> torch.Tensor:
        """(inputs, W) words -> (outputs, W) words; a level's gates go in slices of about chunk_bytes of
        values, so the temporaries stay a few GiB on the widest nets."""
        values = words
        for a, b, masks in self.layers:
            out = torch.empty(a.shape[0], values.shape[1], dtype=torch.int64, device=values.device)
            step = max(1, chunk_bytes // (values.shape[1] * 8))
            for g in range(0, a.shape[0], step):
                va, vb = values[a[g:g + step]], values[b[g:g + step]]
                na, nb = ~va, ~vb
                m00, m01, m10, m11 = (m[g:g + step] for m in masks)
                out[g:g + step] = (m00 & na & nb) | (m01 & na & vb) | (m10 & va & nb) | (m11 & va & vb)
            values = out
        return values

    def class_counts(self, words: torch.Tensor, chunk_bytes: int = 1 << 30) -> torch.Tensor:
        """(inputs, W) words -> (64 W, classes) int32 counts: gates, then per class the sum of its output bits."""
        out = self.gates(words)                                          # (outputs, W)
        k = out.shape[0] // CLASSES
        step = max(1, chunk_bytes // (out.shape[0] * 64 * 8))            # words per chunk of unpacked bits
        parts = []
        for w in range(0, out.shape[1], step):
            bits = (out[:, w:w + step, None] >> SHIFTS.to(out.device)) & 1          # (outputs, w, 64)
            parts.append(bits.reshape(CLASSES, k, -1).sum(dim=1, dtype=torch.int32).t())
        return torch.cat(parts)


def timed(function, repeat: int, device: torch.device) -> float:
    """Best seconds of `repeat` calls (after one warm-up), synchronising the GPU around each."""
    function()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a device-to-device copy of 2 GiB (read + write)."""
    source = torch.empty(1 << 28, dtype=torch.int64, device=device)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), 5, device)
    return 2 * source.numel() * 8 / seconds


def build_cuda(netlist: Netlist, arch: str, folder: Path) -> tuple[Path, float]:
    """hwact's CUDA kernel and host runner for `netlist` (nvcc for `arch`): (runner, nvcc seconds)."""
    from hwact.backends import logic_cuda

    logic_cuda.emit_cuda(netlist, folder)
    compiled = logic_cuda.compile_cuda(folder, arch=arch)
    return folder / compiled["runner"], compiled["compile_s"]


def cuda_rate(runner: Path, netlist: Netlist, bits: np.ndarray, folder: Path, repeat: int, check: int) -> float:
    """samples/s of hwact's CUDA count kernel on `bits` (its runner, counts only); the counts of the first
    `check` samples must equal Netlist.class_counts."""
    header = np.array([len(bits), netlist.num_inputs], dtype="<i8").tobytes()
    (folder / "in.bin").write_bytes(header + np.ascontiguousarray(bits).tobytes())
    done = subprocess.run([str(runner), str(folder / "in.bin"), str(folder / "out.bin"), str(repeat), "counts"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"CUDA runner failed: {done.stderr.strip()[:300]}")
    counts = np.fromfile(folder / "out.bin", dtype="<i4").reshape(len(bits), netlist.num_classes)
    assert np.array_equal(counts[:check], netlist.class_counts(bits[:check])), "hwact CUDA not bit-exact"
    return next(float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("samples_per_s"))


def cpu_check() -> None:
    """The PyTorch evaluator on the CPU against the reference (no GPU needed)."""
    netlist = random_layered(0, 40, (300, 200, 100), CLASSES)
    evaluator = TorchPacked(netlist, torch.device("cpu"))
    bits = np.random.default_rng(0).integers(0, 2, (640, 40), dtype=np.uint8)
    words = evaluator.pack(torch.as_tensor(bits))
    expected = netlist.class_counts(bits)
    assert np.array_equal(evaluator.class_counts(words).numpy(), expected)
    small_slices = evaluator.gates(words, chunk_bytes=8 * 10 * words.shape[1])       # 10 gates per slice
    assert torch.equal(small_slices, evaluator.gates(words))
    assert np.array_equal(evaluator.class_counts(words, chunk_bytes=1 << 14).numpy(), expected)
    print("PyTorch packed evaluator on the CPU: equal to Netlist.class_counts on 640 samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["4x4000", "4x16000", "6x64000"], help="LAYERSxWIDTH")
    parser.add_argument("--samples", type=int, nargs="+", default=[1 << 18, 1 << 20])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--check", type=int, default=512, help="samples checked against Netlist.class_counts")
    parser.add_argument("--cpu-check", action="store_true", help="check the PyTorch evaluator on the CPU and exit")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "logic_gpu.md")
    args = parser.parse_args()
    if args.cpu_check:
        cpu_check()
        return
    if not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device here; nothing measured, nothing written")
        return
    try:
        from hwact.backends.toolchain import nvcc
        nvcc()
    except ToolMissingError as error:
        print(f"no nvcc: {error}; nothing measured, nothing written")
        return
    if any(n % 64 for n in args.samples):
        parser.error("--samples must be multiples of 64")
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    arch = f"sm_{props.major}{props.minor}"
    bandwidth = copy_bandwidth(device)
    print(f"{props.name}, {arch}, copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    rows = []
    started = time.perf_counter()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="hwact_logic_gpu_") as tmp:
        for spec in args.nets:
            layers, width = (int(x) for x in spec.split("x"))
            netlist = random_layered(0, INPUTS, (width,) * layers, CLASSES)
            evaluator = TorchPacked(netlist, device)
            folder = Path(tmp) / spec
            folder.mkdir()
            runner, compile_s = build_cuda(netlist, arch, folder)
            for n in args.samples:
                bits = rng.integers(0, 2, (n, INPUTS), dtype=np.uint8)
                hwact = cuda_rate(runner, netlist, bits, folder, args.repeat, args.check)
                words = evaluator.pack(torch.as_tensor(bits, device=device))
                got = evaluator.class_counts(words[:, :args.check // 64]).cpu().numpy()
                assert np.array_equal(got, netlist.class_counts(bits[:args.check])), "PyTorch packed not bit-exact"
                with_counts = n / timed(lambda w=words: evaluator.class_counts(w), args.repeat, device)
                gates_only = n / timed(lambda w=words: evaluator.gates(w), args.repeat, device)
                roofline = bandwidth * 64 / (24 * netlist.num_gates)
                rows.append((spec, netlist.num_gates, n, hwact, with_counts, gates_only, roofline, compile_s))
                print(f"{spec} {n}: hwact {hwact:.4g}, torch {with_counts:.4g} (gates only {gates_only:.4g}), "
                      f"roofline {roofline:.4g} samples/s", flush=True)
    command = "python benchmarks/bench_logic_gpu.py " + " ".join(sys.argv[1:])
    lines = ["# Logic-gate netlists on a GPU: hwact CUDA kernel vs PyTorch packed (hwact issue 17)", "",
             f"GPU: {props.name} ({arch}, {props.multi_processor_count} SMs), measured copy bandwidth "
             f"{bandwidth / 1e12:.2f} TB/s; torch {torch.__version__}. Command: `{command.strip()}`; "
             f"{time.perf_counter() - started:.0f} s. Random layered nets, {INPUTS} input bits, GroupSum({CLASSES}); "
             f"input on the GPU; every engine checked equal to `Netlist.class_counts` on {args.check} samples.", "",
             "| net | gates | samples | hwact CUDA samples/s | PyTorch packed (with counts) | PyTorch packed, gates only "
             "| hwact vs PyTorch (with counts) | memory roofline samples/s | hwact of roofline | nvcc s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for spec, gates, n, hwact, with_counts, gates_only, roofline, compile_s in rows:
        lines.append(f"| {spec} | {gates} | {n} | {hwact:.4g} | {with_counts:.4g} | {gates_only:.4g} | "
                     f"{hwact / with_counts:.2f}x | {roofline:.4g} | {hwact / roofline:.1%} | {compile_s:.1f} |")
    lines += ["", "Goals (issue 17): hwact >= 10x the PyTorch packed evaluator and >= 50 % of the memory roofline "
              "at >= 256 k samples."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
