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
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from hwact.errors import InputError

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
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls(int(z["num_inputs"]), z["ops"], z["a"], z["b"], z["outputs"],
                           int(z["num_classes"]), float(z["tau"]))
        except (ValueError, KeyError, OSError) as error:
            raise InputError(f"netlist: not a valid netlist archive ({error})") from None


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
