"""The discretized logic-gate netlist: the one data structure every logic backend reads.

Nodes are numbered in topological order:
    0 .. num_inputs-1                 primary input bits
    num_inputs + g   (g = 0..G-1)     gate g, whose operands a[g], b[g] are node ids < num_inputs + g

Each gate is a two-input Boolean function named by its difflogic id `op` (0..15). The id *is* the truth
table read with input (a, b) = (0,0) as the most significant bit:

    out(a, b) = (op >> (3 - (2·a + b))) & 1

    id  gate     id  gate        id  gate       id  gate
     0  0         4  ¬A∧B         8  NOR        12  ¬A
     1  AND       5  B            9  XNOR       13  A⇒B (¬A∨B)
     2  A∧¬B      6  XOR         10  ¬B         14  NAND
     3  A         7  OR          11  B⇒A (A∨¬B) 15  1

`outputs` are node ids (any node, inputs included). GroupSum splits them, in order, into `num_classes`
equal groups; the class score is the popcount of its group (the training temperature tau divides the
score and never changes the argmax, so it is kept only for reporting soft logits).

`evaluate` is the reference implementation: every backend (PyTorch op, C, CUDA, Verilog) must match it
bit for bit.

A netlist file (`to_bytes`: an .npz of num_inputs, ops, a, b, outputs, num_classes, tau) from a convert
folder is untrusted: `Netlist.read` checks every header, dtype, shape and range before using a value.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwact.errors import InputError

MAX_INPUTS = 1 << 20     # input bits of a netlist file (a 32x32x3 image at 31 thermometer levels has 95,232)
MAX_GATES = 1 << 24      # gates, and outputs, of a netlist file (the C kernel numbers nodes with uint32)
SCALARS = ("num_inputs", "num_classes", "tau")
ARRAYS = ("ops", "a", "b", "outputs")
GATE_NAMES = ("0", "AND", "A_AND_NOT_B", "A", "NOT_A_AND_B", "B", "XOR", "OR",
              "NOR", "XNOR", "NOT_B", "A_OR_NOT_B", "NOT_A", "NOT_A_OR_B", "NAND", "1")


def gate_output(op: np.ndarray | int, a, b):
    """out(a, b) for gate id(s) `op` on 0/1 (or bool) operands; broadcasts like numpy."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return (np.right_shift(np.asarray(op, dtype=np.int64), 3 - (2 * a + b)) & 1).astype(bool)


@dataclass
class Netlist:
    num_inputs: int
    ops: np.ndarray          # (G,) uint8, difflogic gate ids
    a: np.ndarray            # (G,) int64, node id of operand A
    b: np.ndarray            # (G,) int64, node id of operand B
    outputs: np.ndarray      # (O,) int64, node ids of the outputs, in GroupSum order
    num_classes: int = 1
    tau: float = 1.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ops = np.asarray(self.ops, dtype=np.uint8).reshape(-1)
        self.a = np.asarray(self.a, dtype=np.int64).reshape(-1)
        self.b = np.asarray(self.b, dtype=np.int64).reshape(-1)
        self.outputs = np.asarray(self.outputs, dtype=np.int64).reshape(-1)
        self.validate()

    @property
    def num_gates(self) -> int:
        return int(self.ops.shape[0])

    @property
    def num_nodes(self) -> int:
        return self.num_inputs + self.num_gates

    def validate(self) -> None:
        g = self.num_gates
        if not (self.a.shape == self.b.shape == (g,)):
            raise InputError(f"netlist: ops/a/b lengths differ ({g}, {self.a.shape[0]}, {self.b.shape[0]})")
        if g and int(self.ops.max()) > 15:
            raise InputError(f"netlist: gate id {int(self.ops.max())} out of range 0..15")
        own = self.num_inputs + np.arange(g)
        if g and ((self.a < 0) | (self.b < 0) | (self.a >= own) | (self.b >= own)).any():
            bad = int(np.flatnonzero((self.a < 0) | (self.b < 0) | (self.a >= own) | (self.b >= own))[0])
            raise InputError(f"netlist: gate {bad} reads node {int(self.a[bad])}/{int(self.b[bad])}, "
                             "not an earlier node (netlist must be topologically ordered)")
        if self.outputs.size and ((self.outputs < 0) | (self.outputs >= self.num_nodes)).any():
            raise InputError("netlist: an output names a node that does not exist")
        if self.num_classes < 1 or self.outputs.size % self.num_classes:
            raise InputError(f"netlist: {self.outputs.size} outputs do not split into {self.num_classes} classes")

    def levels(self) -> np.ndarray:
        """Logic level of every node: inputs 0, a gate 1 + max(level(a), level(b))."""
        level = np.zeros(self.num_nodes, dtype=np.int64)
        for g in range(self.num_gates):
            level[self.num_inputs + g] = 1 + max(level[self.a[g]], level[self.b[g]])
        return level

    def depth(self) -> int:
        """Longest input-to-output path in gates."""
        return int(self.levels()[self.outputs].max()) if self.outputs.size else 0

    def evaluate(self, bits: np.ndarray) -> np.ndarray:
        """Reference: (N, num_inputs) 0/1 array -> (N, O) bool output bits."""
        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] != self.num_inputs:
            raise InputError(f"netlist expects (N, {self.num_inputs}) input bits, got {tuple(bits.shape)}")
        if bits.size and not np.isin(bits, (0, 1)).all():
            raise InputError("netlist inputs must be binary (0/1)")
        values = np.empty((self.num_nodes, bits.shape[0]), dtype=bool)
        values[: self.num_inputs] = bits.T.astype(bool)
        for g in range(self.num_gates):
            values[self.num_inputs + g] = gate_output(self.ops[g], values[self.a[g]], values[self.b[g]])
        return values[self.outputs].T.copy()

    def class_counts(self, bits: np.ndarray) -> np.ndarray:
        """Reference GroupSum: (N, num_classes) int64 popcount of each output group."""
        out = self.evaluate(bits)
        return out.reshape(out.shape[0], self.num_classes, -1).sum(axis=2, dtype=np.int64)

    # ------------------------------------------------------------------------------ (de)serialization
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, num_inputs=self.num_inputs, ops=self.ops, a=self.a, b=self.b, outputs=self.outputs,
                 num_classes=self.num_classes, tau=self.tau)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Netlist":
        """The netlist `to_bytes` wrote (bytes held in memory; a file from a folder: `read`)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {name: z[name] for name in (*SCALARS, *ARRAYS)}
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise InputError(f"netlist: not a valid netlist archive ({error})") from None
        return cls.from_arrays(arrays, "netlist")

    @classmethod
    def read(cls, path: str | Path) -> "Netlist":
        """A netlist file from anyone (a convert folder's netlist.npz), read as hostile input: hwact.npz
        checks each .npy header against its member before reading it (no pickles, sizes capped), the
        array shapes are checked against MAX_INPUTS / MAX_GATES before the data is read, then `from_arrays`."""
        from hwact.npz import INTEGER, REAL, open_npz

        with open_npz(path) as archive:
            for name in (*SCALARS, *ARRAYS):
                shape = archive.info(name).shape
                if name in SCALARS and shape != ():
                    raise _invalid(path, f"'{name}' has shape {shape}, expected a single value")
                if name in ARRAYS and (len(shape) != 1 or shape[0] > MAX_GATES):
                    raise _invalid(path, f"'{name}' has shape {shape}, expected one dimension of at most {MAX_GATES}")
            arrays = {name: archive.read(name, kinds=REAL if name == "tau" else INTEGER, per_sample=False)
                      for name in (*SCALARS, *ARRAYS)}
        return cls.from_arrays(arrays, str(path))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], source: str) -> "Netlist":
        """The netlist of the arrays a netlist file holds, each checked (dtype, shape, range, the caps) before
        it is used; `source` names the file in the errors."""
        for name in (*SCALARS, *ARRAYS):
            value = arrays[name]
            if value.dtype.kind not in ("iuf" if name == "tau" else "iu"):
                raise _invalid(source, f"'{name}' has dtype {value.dtype}, expected "
                                       f"{'a real number' if name == 'tau' else 'integers'}")
            if value.ndim != (0 if name in SCALARS else 1):
                raise _invalid(source, f"'{name}' has shape {value.shape}")
        num_inputs, num_classes, tau = int(arrays["num_inputs"]), int(arrays["num_classes"]), float(arrays["tau"])
        ops, outputs = arrays["ops"], arrays["outputs"]
        if not 0 <= num_inputs <= MAX_INPUTS:
            raise _invalid(source, f"{num_inputs} inputs, at most {MAX_INPUTS} are read")
        if ops.size > MAX_GATES or outputs.size > MAX_GATES:
            raise _invalid(source, f"{ops.size} gates and {outputs.size} outputs, at most {MAX_GATES} of each are read")
        if not 1 <= num_classes <= max(outputs.size, 1) or not np.isfinite(tau):
            raise _invalid(source, f"{num_classes} classes for {outputs.size} outputs, tau {tau}")
        if ops.size and (int(ops.min()) < 0 or int(ops.max()) > 15):
            raise _invalid(source, f"gate ids {int(ops.min())}..{int(ops.max())}, outside 0..15")
        try:
            return cls(num_inputs, ops, arrays["a"], arrays["b"], outputs, num_classes, tau)
        except InputError as error:
            raise _invalid(source, error.message.removeprefix("netlist: ")) from None


def _invalid(source, reason: str) -> InputError:
    return InputError(f"{source}: not a valid netlist file ({reason})",
                      hint="write it again with `hwact convert MODEL --target T`")


def random_layered(num_inputs: int, width: int, layers: int, num_classes: int, seed: int) -> Netlist:
    """A seeded difflogic-shaped netlist for tests and benchmarks: `layers` layers of `width` gates with
    uniformly random gate ids, each gate reading two random nodes of the previous layer; the last layer
    is the output."""
    rng = np.random.default_rng(seed)
    ops, a, b = [], [], []
    previous, start = np.arange(num_inputs), num_inputs
    for _ in range(layers):
        a.append(rng.choice(previous, width))
        b.append(rng.choice(previous, width))
        ops.append(rng.integers(0, 16, width))
        previous = start + np.arange(width)
        start += width
    return Netlist(num_inputs, np.concatenate(ops), np.concatenate(a), np.concatenate(b), previous, num_classes)
