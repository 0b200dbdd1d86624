"""Bit-sliced C kernel for a logic-gate netlist (hwact.ir.netlist.Netlist), built with gcc, loaded with ctypes.

Bit slicing: sample s sits in bit s % 64 of word s // 64 of every node's bit plane, so one bitwise
instruction evaluates a gate for 64 samples (uint64), 128 (NEON, aarch64) or 256 (AVX2, x86-64 hosts
whose CPU has it; chosen when the library is built).

The netlist is compiled into two straight programs over a scratch array of value slots
(`compile_program`):
  * bits   - the gates the raw outputs depend on (dead gates dropped); results = output planes;
  * counts - the same gates plus GroupSum as a carry-save adder tree per class: a full adder turns three
    planes of weight 2^w into a sum plane (x ^ y ^ z, weight 2^w) and a carry plane (maj(x, y, z),
    weight 2^(w+1)) - two 3-input kernel instructions, XOR3 and MAJ - and a half adder two planes into
    x ^ y and x & y; per class this leaves one plane per count bit, i.e. popcount(group) =
    sum_d plane_d * 2^d, about 2 instructions (5 bitwise ops) per output bit (the ripple
    counter of difflogic costs 2 * ceil(log2(k+1)) per output bit). The planes are unpacked to int32
    per sample in C.
Gates are ordered by (logic level, gate id) and a slot is reused as soon as its value is dead.

Two renderings of a program (`style`):
  * "table"    - uint8 op / uint32 len run tables plus uint32 dst/a/b arrays walked by one loop with a
                 16-way switch per run (runs of one gate id, so no branch per gate);
  * "straight" - one statement per gate (difflogic's form, on vectors), split in functions of 2000.
"table" is the default: it compiles in well under a second for any net size (its size is data, not code)
and runs as fast or faster (measured in benchmarks/bench_logic.py, see docs/logic-kernels.md).

The reference is Netlist.evaluate / Netlist.class_counts; every entry point matches it bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hwact.backends import toolchain
from hwact.backends.toolchain import (aarch64_emulator, compile_to, host_arch_flags, read_arrays, require_tool,
                                      write_atomic)
from hwact.errors import InputError, UnsupportedError
from hwact.ir.netlist import Netlist

STYLES = ("table", "straight")
DEFAULT_STYLE = "table"
C_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wno-unused-function"]
STRAIGHT_CHUNK = 2000
AND, XOR, ZERO = 1, 6, 0
XOR3, MAJ = 16, 17      # kernel-only 3-input instructions (full adder sum / carry); never in a Netlist


RUNNER_IO = '#include "logic_runner_io.h"\n'


def source_dir() -> Path:
    return Path(str(resources.files("hwact.backends").joinpath("logic_c_src")))


def kernel_template(name: str) -> str:
    """The net-independent source `name` (logic_kernel.c or logic_kernel.cu) with the runners' file I/O
    (logic_runner_io.h) pasted in place of its #include line: an emitted source needs no other file."""
    return (source_dir() / name).read_text().replace(RUNNER_IO, (source_dir() / "logic_runner_io.h").read_text())


# ------------------------------------------------------------------------------------------ compiling
@dataclass
class Program:
    """A gate list over value slots: slots 0..num_inputs-1 hold the inputs; gate g writes slot dst[g]."""
    num_inputs: int
    num_slots: int
    ops: np.ndarray        # (G,) uint8 gate ids, grouped in runs
    dst: np.ndarray        # (G,) uint32
    a: np.ndarray          # (G,) uint32
    b: np.ndarray          # (G,) uint32
    c: np.ndarray          # (G,) uint32 third operand of XOR3/MAJ (= a for the two-input gates)
    run_ops: np.ndarray    # (R,) uint8
    run_lens: np.ndarray   # (R,) uint32
    results: np.ndarray    # (K,) uint32 slots holding the result planes at the end


def group_sum_gates(netlist: Netlist) -> tuple[list[int], list[int], list[int], list[int], np.ndarray, int]:
    """Carry-save adder tree per class over the output nodes, as extra gates numbered after the net's.
    A full adder is two kernel instructions, XOR3(x, y, z) (sum) and MAJ(x, y, z) (carry); a half adder
    is XOR(x, y) and AND(x, y).

    Returns (ops, a, b, c) of the new gates (c: third operand, = a for two-input gates), planes
    (num_classes, count_bits) node ids with popcount(group c) = sum_d value(planes[c, d]) << d, and
    count_bits = bit length of the group size.
    A count bit that is always 0 points at a constant-0 gate."""
    k = netlist.outputs.size // netlist.num_classes
    count_bits = max(1, int(k).bit_length())
    ops: list[int] = []
    ga: list[int] = []
    gb: list[int] = []
    gc: list[int] = []
    next_node = [netlist.num_nodes]

    def gate(op: int, x: int, y: int, z: int | None = None) -> int:
        ops.append(op)
        ga.append(x)
        gb.append(y)
        gc.append(x if z is None else z)
        next_node[0] += 1
        return next_node[0] - 1

    zero = None
    planes = np.zeros((netlist.num_classes, count_bits), dtype=np.int64)
    for c in range(netlist.num_classes):
        column = [int(n) for n in netlist.outputs[c * k:(c + 1) * k]]    # planes of weight 2^w, FIFO
        carries: list[int] = []
        for w in range(count_bits):
            queue = column
            head = 0
            while len(queue) - head >= 3:                                 # full adder
                x, y, z = queue[head], queue[head + 1], queue[head + 2]
                head += 3
                queue.append(gate(XOR3, x, y, z))
                carries.append(gate(MAJ, x, y, z))
            if len(queue) - head == 2:                                    # half adder
                x, y = queue[head], queue[head + 1]
                head += 2
                queue.append(gate(XOR, x, y))
                carries.append(gate(AND, x, y))
            if len(queue) - head == 1:
                planes[c, w] = queue[head]
            else:
                if zero is None:
                    zero = gate(ZERO, 0, 0)
                planes[c, w] = zero
            column, carries = carries, []
        if column:
            raise AssertionError("GroupSum adder tree left carries beyond the count width")
    return ops, ga, gb, gc, planes, count_bits


def compile_program(num_inputs: int, ops: np.ndarray, a: np.ndarray, b: np.ndarray, results: np.ndarray,
                    c: np.ndarray | None = None) -> Program:
    """Drop gates no result needs, order the rest by (level, gate id), assign slots with reuse.
    `c` is the third operand of XOR3/MAJ instructions (default: a, i.e. two-input gates only)."""
    ops = np.asarray(ops, dtype=np.uint8)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    c = a if c is None else np.asarray(c, dtype=np.int64)
    results = np.asarray(results, dtype=np.int64)
    num_gates = ops.size
    needed = np.zeros(num_inputs + num_gates, dtype=bool)
    needed[results] = True
    a_list, b_list, c_list = a.tolist(), b.tolist(), c.tolist()
    for g in range(num_gates - 1, -1, -1):
        if needed[num_inputs + g]:
            needed[a_list[g]] = True
            needed[b_list[g]] = True
            needed[c_list[g]] = True
    kept = np.flatnonzero(needed[num_inputs:])
    level = np.zeros(num_inputs + num_gates, dtype=np.int64)
    level_list = level.tolist()
    for g in kept.tolist():
        level_list[num_inputs + g] = 1 + max(level_list[a_list[g]], level_list[b_list[g]], level_list[c_list[g]])
    level = np.asarray(level_list, dtype=np.int64)
    order = kept[np.lexsort((ops[kept], level[num_inputs + kept]))]   # by level, then gate id

    last_use = np.full(num_inputs + num_gates, -1, dtype=np.int64)
    np.maximum.at(last_use, a[order], np.arange(order.size))
    np.maximum.at(last_use, b[order], np.arange(order.size))
    np.maximum.at(last_use, c[order], np.arange(order.size))
    last_use[results] = np.iinfo(np.int64).max                        # results stay live to the end

    slot = np.full(num_inputs + num_gates, -1, dtype=np.int64)
    slot[:num_inputs] = np.arange(num_inputs)
    slot_list = slot.tolist()
    last_list = last_use.tolist()
    free: list[int] = []
    num_slots = num_inputs
    dst = []
    for i, g in enumerate(order.tolist()):
        node = num_inputs + g
        if free:
            s = free.pop()
        else:
            s = num_slots
            num_slots += 1
        slot_list[node] = s
        dst.append(s)
        for operand in {a_list[g], b_list[g], c_list[g]}:
            if operand >= num_inputs and last_list[operand] == i:
                free.append(slot_list[operand])
    slot = np.asarray(slot_list, dtype=np.int64)
    sorted_ops = ops[order]
    if sorted_ops.size:
        starts = np.flatnonzero(np.r_[True, sorted_ops[1:] != sorted_ops[:-1]])
        run_lens = np.diff(np.r_[starts, sorted_ops.size])
    else:
        starts = run_lens = np.zeros(0, dtype=np.int64)
    operand_slots = [slot[x[order]].astype(np.uint32) for x in (a, b, c)]
    return Program(num_inputs, num_slots, sorted_ops, np.asarray(dst, dtype=np.uint32), *operand_slots,
                   sorted_ops[starts].astype(np.uint8), run_lens.astype(np.uint32), slot[results].astype(np.uint32))


def compile_netlist(netlist: Netlist) -> dict:
    """Both programs of a net: {"bits": Program, "counts": Program, "count_bits": int}."""
    if netlist.num_inputs < 1:
        raise UnsupportedError("logic C kernel: the netlist has no inputs")
    extra_ops, extra_a, extra_b, extra_c, planes, count_bits = group_sum_gates(netlist)
    bits = compile_program(netlist.num_inputs, netlist.ops, netlist.a, netlist.b, netlist.outputs)
    counts = compile_program(netlist.num_inputs, np.r_[netlist.ops, np.asarray(extra_ops, dtype=np.uint8)],
                             np.r_[netlist.a, np.asarray(extra_a, dtype=np.int64)],
                             np.r_[netlist.b, np.asarray(extra_b, dtype=np.int64)], planes.reshape(-1),
                             np.r_[netlist.a, np.asarray(extra_c, dtype=np.int64)])
    return {"bits": bits, "counts": counts, "count_bits": count_bits}


def fingerprint(netlist: Netlist) -> str:
    return hashlib.sha256(netlist.to_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ emitting
def _c_array(ctype: str, name: str, values: np.ndarray) -> str:
    values = np.asarray(values).reshape(-1).tolist() or [0]          # C has no empty arrays
    rows = [", ".join(str(v) for v in values[i:i + 24]) for i in range(0, len(values), 24)]
    return f"static const {ctype} {name}[{len(values)}] = {{\n  " + ",\n  ".join(rows) + "\n};\n"


def _program_tables(tag: str, program: Program) -> str:
    return "".join([f"#define LN_{tag}_SLOTS {program.num_slots}\n#define LN_{tag}_RUNS {program.run_ops.size}\n",
                    f"#define LN_{tag}_GATES {program.ops.size}\n",
                    _c_array("uint8_t", f"ln_{tag}_op", program.run_ops),
                    _c_array("uint32_t", f"ln_{tag}_len", program.run_lens),
                    _c_array("uint32_t", f"ln_{tag}_dst", program.dst),
                    _c_array("uint32_t", f"ln_{tag}_a", program.a),
                    _c_array("uint32_t", f"ln_{tag}_b", program.b),
                    _c_array("uint32_t", f"ln_{tag}_c", program.c),
                    _c_array("uint32_t", f"ln_{tag}_results", program.results)])


def _program_straight(tag: str, program: Program) -> str:
    lines = [f"#define LN_{tag}_SLOTS {program.num_slots}\n#define LN_{tag}_GATES {program.ops.size}\n",
             _c_array("uint32_t", f"ln_{tag}_results", program.results)]
    parts = []
    ops, dst, a, b, c = (program.ops.tolist(), program.dst.tolist(), program.a.tolist(), program.b.tolist(),
                         program.c.tolist())
    for start in range(0, len(ops), STRAIGHT_CHUNK):
        name = f"ln_{tag}_part{len(parts)}"
        parts.append(name)
        body = "\n".join(f"    LN_GATE3(LN_G{ops[g]}, V, {dst[g]}, {a[g]}, {b[g]}, {c[g]});" if ops[g] >= XOR3 else
                         f"    LN_GATE(LN_G{ops[g]}, V, {dst[g]}, {a[g]}, {b[g]});"
                         for g in range(start, min(start + STRAIGHT_CHUNK, len(ops))))
        lines.append(f"__attribute__((noinline)) static void {name}(ln_vec *V) {{\n{body}\n}}\n")
    calls = "".join(f"    {p}(V);\n    ln_prefetch_some(pf, {STRAIGHT_CHUNK});\n" for p in parts)
    lines.append(f"static void ln_{tag}_gates(ln_vec *V, ln_prefetch *pf) {{\n{calls}    (void)V; (void)pf;\n}}\n")
    return "".join(lines)


def render_c(netlist: Netlist, style: str = DEFAULT_STYLE) -> str:
    """The complete, self-contained C source of the kernel for `netlist`."""
    if style not in STYLES:
        raise InputError(f"logic C kernel style must be one of {', '.join(STYLES)}, got {style!r}")
    programs = compile_netlist(netlist)
    template = kernel_template("logic_kernel.c")
    marker = "#include <stdint.h>"
    head, body = template.split(marker, 1)
    header = [f"/* generated by hwact from a netlist of {netlist.num_inputs} inputs, {netlist.num_gates} gates, "
              f"{netlist.outputs.size} outputs, {netlist.num_classes} classes; style {style} */\n",
              f"#define LN_NUM_INPUTS {netlist.num_inputs}\n#define LN_NUM_OUTPUTS {netlist.outputs.size}\n",
              f"#define LN_NUM_CLASSES {netlist.num_classes}\n#define LN_COUNT_BITS {programs['count_bits']}\n",
              f'#define LN_FINGERPRINT "{fingerprint(netlist)}"\n']
    if style == "table":
        header.append("#define LN_STYLE_TABLE 1\n")
    generated = []
    for tag in ("BITS", "COUNTS"):
        program = programs[tag.lower()]
        generated.append(_program_tables(tag, program) if style == "table" else _program_straight(tag, program))
    # the kernel code needs ln_vec/LN_GATE before the straight functions, the tables before the walker
    declarations, rest = body.split("#ifdef LN_STYLE_TABLE", 1)
    return "".join([*header, head, marker, declarations, *generated, "#ifdef LN_STYLE_TABLE", rest])


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InputError(f"logic C kernel name {name!r} is not a C identifier")


def emit_c(netlist: Netlist, outdir: Path, name: str = "logic_net", style: str = DEFAULT_STYLE) -> dict:
    """Write outdir/{name}.c (self-contained: tables + kernel + the stand-alone runner behind LN_MAIN)."""
    _check_name(name)
    outdir = Path(outdir)
    write_atomic(outdir / f"{name}.c", render_c(netlist, style))
    return {"files": [f"{name}.c"], "style": style}


# ------------------------------------------------------------------------------------------ building
def build_c(netlist: Netlist, outdir: Path, name: str = "logic_net", arch: str = "native",
            style: str = DEFAULT_STYLE) -> dict:
    """emit_c + compile. arch "native": outdir/{name}.so for this host (AVX2 when the CPU has it);
    arch "aarch64": outdir/{name}_aarch64, a static runner (`RUNNER IN OUT`, see logic_kernel.c) built
    with aarch64-linux-gnu-gcc (NEON). The binary is compiled in a temp file and renamed when complete."""
    if arch not in ("native", "aarch64"):
        raise InputError(f"logic C kernel arch must be 'native' or 'aarch64', got {arch!r}")
    compiler = require_tool("gcc" if arch == "native" else "aarch64-linux-gnu-gcc")
    outdir = Path(outdir)
    emitted = emit_c(netlist, outdir, name, style)
    target = outdir / (f"{name}.so" if arch == "native" else f"{name}_aarch64")
    flags = [*host_arch_flags(), "-shared", "-fPIC"] if arch == "native" else ["-DLN_MAIN", "-static"]
    seconds = compile_to(target, [compiler, *C_FLAGS, *flags, str(outdir / f"{name}.c")],
                         f"{Path(compiler).name} on the logic kernel")
    return {"files": [*emitted["files"], target.name], "library": target.name, "compile_s": seconds,
            "style": style, "arch": arch}


# ------------------------------------------------------------------------------------------ running
def check_bit_shape(bits: np.ndarray, num_inputs: int) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] != num_inputs:
        raise InputError(f"logic kernel expects (N, {num_inputs}) input bits, got {tuple(bits.shape)}")
    return bits


def not_binary_error(bits: np.ndarray, index: int) -> InputError:
    """The error for flat element `index` of (N, inputs) `bits`, which is not 0 or 1."""
    sample, column = divmod(int(index), bits.shape[1])
    return InputError(f"logic kernel inputs must be binary (0/1): sample {sample}, input {column} is "
                      f"{bits[sample, column].item()}", hint="threshold real inputs first (e.g. a thermometer encoder)")


def input_bytes(bits: np.ndarray, num_inputs: int) -> np.ndarray:
    """(N, num_inputs) bits as a C-contiguous uint8 array for the kernel's byte entry points, without a
    copy for C-contiguous uint8 / bool / int8 input (the C code checks those values: an int8 -1 is byte
    255). Other dtypes are checked here, then converted."""
    bits = check_bit_shape(bits, num_inputs)
    if bits.dtype in (np.uint8, np.bool_, np.int8):
        return np.ascontiguousarray(bits).view(np.uint8)
    if bits.size:
        bad = np.flatnonzero((bits != 0) & (bits != 1))
        if bad.size:
            raise not_binary_error(bits, bad[0])
    return np.ascontiguousarray(bits, dtype=np.uint8)


def pack_bits(bits: np.ndarray, num_inputs: int) -> tuple[np.ndarray, int]:
    """(N, num_inputs) 0/1 -> bit planes (num_inputs, ceil(N/64)) uint64, sample s at bit s%64 of word s//64.
    The numpy reference of the C packing (LogicCKernel.pack_bits, and inside LogicCKernel.class_counts)."""
    bits = check_bit_shape(bits, num_inputs)
    if bits.size and not np.isin(bits, (0, 1)).all():
        raise not_binary_error(bits, np.flatnonzero(~np.isin(bits, (0, 1)))[0])
    n = bits.shape[0]
    nwords = (n + 63) // 64
    padded = np.zeros((num_inputs, nwords * 64), dtype=np.uint8)
    padded[:, :n] = bits.T
    packed = np.packbits(padded, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").reshape(num_inputs, nwords), n


def unpack_planes(planes: np.ndarray, n: int) -> np.ndarray:
    """(K, nwords) uint64 planes -> (n, K) uint8 bits."""
    raw = np.ascontiguousarray(planes.astype("<u8")).view(np.uint8)
    return np.unpackbits(raw, axis=1, bitorder="little")[:, :n].T.copy()


class LogicCKernel:
    """ctypes handle on a host library built by build_c for `netlist` (checked by fingerprint). Loading a
    library runs its code: pass only one hwact has just built, never one found in a folder."""

    def __init__(self, library: Path, netlist: Netlist):
        library = Path(library)
        if not library.is_file():
            raise InputError(f"{library}: no such logic kernel library", hint="build it with build_c")
        self.netlist = netlist
        self.lib = ctypes.CDLL(str(library.resolve()))
        lib = self.lib
        lib.ln_kernel_name.restype = ctypes.c_char_p
        lib.ln_fingerprint.restype = ctypes.c_char_p
        lib.ln_shape.restype = ctypes.c_int64
        lib.ln_shape.argtypes = [ctypes.c_int]
        lib.ln_output_bits_packed.restype = ctypes.c_int
        lib.ln_output_bits_packed.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        lib.ln_class_counts_packed.restype = ctypes.c_int
        lib.ln_class_counts_packed.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        for name in ("ln_class_counts", "ln_output_bits", "ln_pack_bits"):    # from (N, inputs) bytes
            getattr(lib, name).restype = ctypes.c_int64
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        built_for = lib.ln_fingerprint().decode()
        if built_for != fingerprint(netlist):
            raise InputError(f"{library}: built for another netlist (fingerprint {built_for}, "
                             f"this one is {fingerprint(netlist)})", hint="rebuild it with build_c")
        self.kernel = lib.ln_kernel_name().decode()
        self.num_inputs = int(lib.ln_shape(0))
        self.num_outputs = int(lib.ln_shape(1))
        self.num_classes = int(lib.ln_shape(2))

    def class_counts_packed(self, packed: np.ndarray, n: int) -> np.ndarray:
        """GroupSum counts from bit planes (num_inputs, nwords) uint64 for the first n samples."""
        packed = np.ascontiguousarray(packed, dtype=np.uint64)
        counts = np.empty((n, self.num_classes), dtype=np.int32)
        if self.lib.ln_class_counts_packed(packed.ctypes.data, packed.shape[1], n, counts.ctypes.data):
            raise MemoryError("logic kernel: out of memory")
        return counts

    def _from_bytes(self, function, bits: np.ndarray, out: np.ndarray) -> np.ndarray:
        """One C call on (N, num_inputs) bytes: it packs them block by block (checking each is 0 or 1)
        and writes `out`; returns `out`."""
        data = input_bytes(bits, self.num_inputs)
        status = function(data.ctypes.data, data.shape[0], out.ctypes.data)
        if status == -1:
            raise MemoryError("logic kernel: out of memory")
        if status > 0:
            raise not_binary_error(np.asarray(bits), status - 1)
        return out

    def class_counts(self, bits: np.ndarray) -> np.ndarray:
        """(N, num_inputs) 0/1 (uint8 or bool without a copy) -> (N, num_classes) int32, equal to
        Netlist.class_counts; packing, gates and GroupSum in one C call."""
        n = check_bit_shape(bits, self.num_inputs).shape[0]
        return self._from_bytes(self.lib.ln_class_counts, bits, np.empty((n, self.num_classes), dtype=np.int32))

    def output_bits(self, bits: np.ndarray) -> np.ndarray:
        """(N, num_inputs) 0/1 -> (N, num_outputs) uint8, equal to Netlist.evaluate; one C call."""
        n = check_bit_shape(bits, self.num_inputs).shape[0]
        return self._from_bytes(self.lib.ln_output_bits, bits, np.empty((n, self.num_outputs), dtype=np.uint8))

    def pack_bits(self, bits: np.ndarray) -> tuple[np.ndarray, int]:
        """The C packing on its own: as the module's pack_bits (planes (num_inputs, ceil(N/64)) uint64, N)."""
        n = check_bit_shape(bits, self.num_inputs).shape[0]
        planes = np.empty((self.num_inputs, (n + 63) // 64), dtype=np.uint64)
        return self._from_bytes(self.lib.ln_pack_bits, bits, planes), n


def throughput(kernel: LogicCKernel, samples: int = 1 << 20, repeat: int = 5, seed: int = 0,
               packed: bool = True) -> float:
    """Samples per second of the class-count kernel (gates + GroupSum + unpacking the counts to int32),
    best of `repeat` runs, one thread, on random input. packed=True: pre-packed bit-sliced input
    (class_counts_packed; packing excluded); packed=False: end to end from (N, num_inputs) uint8 bytes
    (class_counts: packing and validation included)."""
    if samples < 1 or repeat < 1:
        raise InputError("throughput needs samples >= 1 and repeat >= 1")
    rng = np.random.default_rng(seed)
    if packed:
        nwords = (samples + 63) // 64
        data = rng.integers(0, 1 << 63, size=(kernel.num_inputs, nwords), dtype=np.uint64, endpoint=True)
        def run(): return kernel.class_counts_packed(data, samples)
    else:
        data = rng.integers(0, 2, size=(samples, kernel.num_inputs), dtype=np.uint8)
        def run(): return kernel.class_counts(data)
    run()                                                   # warm-up (page faults, caches)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return samples / best


# ------------------------------------------------------------------------------------------ aarch64 runner
def run_runner(runner: Path, bits: np.ndarray, netlist: Netlist, workdir: Path,
               emulator: list[str] | None = None, extra_args: tuple[str, ...] = ()) -> dict:
    """Run a runner built by build_c(arch="aarch64") (under qemu-aarch64 on other hosts; `emulator` []
    runs it directly, e.g. the CUDA runner) on bits; returns {"counts": (N, C) int32, "bits": (N, O)
    uint8, "kernel": what the runner printed}.
    Runner files: IN int64 n, int64 num_inputs, uint8 bits (n, num_inputs); OUT int32 counts (n, C), uint8
    output bits (n, O)."""
    data = input_bytes(bits, netlist.num_inputs)
    bad = np.flatnonzero(data.reshape(-1) > 1)                # the CUDA runner reads bit 0 of each byte only
    if bad.size:
        raise not_binary_error(np.asarray(bits), bad[0])
    bits = data
    n = bits.shape[0]
    header = np.array([n, netlist.num_inputs], dtype="<i8").tobytes()
    raw, printed = toolchain.run_runner(runner, {"in.bin": header + np.ascontiguousarray(bits, np.uint8).tobytes()},
                                        workdir, "logic runner", aarch64_emulator() if emulator is None else emulator,
                                        extra_args)
    counts, out_bits = read_arrays(raw, [("<i4", (n, netlist.num_classes)), ("u1", (n, netlist.outputs.size))],
                                   "logic runner")
    return {"counts": counts, "bits": out_bits, "kernel": printed}
