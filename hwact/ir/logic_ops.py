"""hwact::logic_netlist — a discretized logic-gate network (hwact/ir/netlist.py) as one graph op.

hwact::logic_netlist(bits, ops, a, b, outputs, num_classes) -> counts
    bits     (N, num_inputs) with values in {0, 1} (any dtype); anything else is an InputError
    ops      (G,) gate ids 0..15 (int), a, b (G,) operand node ids, outputs (O,) node ids (int64)
    counts   (N, num_classes) int32: class c = popcount of outputs[c·O/k : (c+1)·O/k]
Nodes 0..num_inputs-1 are the input bits, node num_inputs + g is gate g:
    value[num_inputs + g] = (ops[g] >> (3 - (2·value[a[g]] + value[b[g]]))) & 1
This is exactly `Netlist.class_counts`. The reference packs 64 samples per int64 word and evaluates the
gates level by level (all gates whose operands are ready at once), so it is vectorized over gates and samples.

A netlist with no gates is allowed (outputs are input bits). There is no ONNX translation: a logic
model is deployed through the logic flow's C/CUDA/Verilog backends, not through ONNX.
"""

from __future__ import annotations

import numpy as np
import torch

from hwact.errors import InputError
from hwact.ir.netlist import Netlist
from hwact.ir.ops import hwact_op, op_args


def gate_levels(num_inputs: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Logic level of each gate (1 = reads only inputs)."""
    level = np.zeros(num_inputs + len(a), dtype=np.int64)
    for g in range(len(a)):
        level[num_inputs + g] = 1 + max(level[a[g]], level[b[g]])
    return level[num_inputs:]


_SHIFTS = torch.arange(64, dtype=torch.int64)


def pack_samples(bits: torch.Tensor) -> torch.Tensor:
    """(N, K) 0/1 -> (K, ceil(N/64)) int64 words, sample s at bit s % 64 of word s // 64."""
    n, k = bits.shape
    words = (n + 63) // 64
    padded = torch.zeros(words * 64, k, dtype=torch.int64, device=bits.device)
    padded[:n] = bits.to(torch.int64)
    # distinct bits, so the (wrapping) int64 sum is the bitwise OR
    return (padded.reshape(words, 64, k) << _SHIFTS.to(bits.device)[None, :, None]).sum(dim=1).t().contiguous()


def unpack_samples(words: torch.Tensor, n: int) -> torch.Tensor:
    """(K, W) int64 words -> (n, K) bool."""
    bits = (words[:, :, None] >> _SHIFTS.to(words.device)) & 1
    return bits.reshape(words.shape[0], -1)[:, :n].t().to(torch.bool)


def evaluate_torch(bits: torch.Tensor, ops: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   outputs: torch.Tensor) -> torch.Tensor:
    """(N, num_inputs) {0,1} -> (N, O) bool output bits; samples bit-packed 64 per int64 word, gates
    evaluated level by level. For the gates of one level, with A, B their operand words:
        out = M00 & ~A & ~B | M01 & ~A & B | M10 & A & ~B | M11 & A & B,   M_xy = -((op >> (3 - 2x - y)) & 1)
    i.e. (op >> (3 - (2a + b))) & 1 for each of the 64 samples of a word."""
    num_inputs = bits.shape[1]
    num_gates = ops.shape[0]
    packed = pack_samples(bits)
    values = torch.zeros(num_inputs + num_gates, packed.shape[1], dtype=torch.int64, device=bits.device)
    values[:num_inputs] = packed
    ops64, a64, b64 = ops.to(torch.int64), a.to(torch.int64), b.to(torch.int64)
    masks = torch.stack([-((ops64 >> (3 - k)) & 1) for k in range(4)], dim=1)  # (G, 4): M00 M01 M10 M11
    if num_gates:
        levels = torch.as_tensor(gate_levels(num_inputs, a64.cpu().numpy(), b64.cpu().numpy()), device=bits.device)
        for level in range(1, int(levels.max()) + 1):
            gates = torch.nonzero(levels == level).flatten()
            va, vb = values[a64[gates]], values[b64[gates]]
            m = masks[gates]
            na, nb = ~va, ~vb
            values[num_inputs + gates] = ((m[:, 0:1] & na & nb) | (m[:, 1:2] & na & vb)
                                          | (m[:, 2:3] & va & nb) | (m[:, 3:4] & va & vb))
    return unpack_samples(values[outputs.to(torch.int64)], bits.shape[0])


def check_binary(bits: torch.Tensor, num_inputs: int) -> None:
    if bits.ndim != 2 or bits.shape[1] != num_inputs:
        raise InputError(f"logic netlist expects (N, {num_inputs}) input bits, got {tuple(bits.shape)}")
    if bits.numel() and not ((bits == 0) | (bits == 1)).all():
        raise InputError("logic netlist inputs must be binary (0/1)",
                         hint="threshold real inputs first (e.g. a thermometer encoder)")


@hwact_op("logic_netlist")
def logic_netlist(bits: torch.Tensor, ops: torch.Tensor, a: torch.Tensor, b: torch.Tensor, outputs: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    check_binary(bits, bits.shape[1] if bits.ndim == 2 else -1)
    out = evaluate_torch(bits, ops, a, b, outputs)
    counts = out.reshape(out.shape[0], num_classes, -1).sum(dim=2, dtype=torch.int32)
    return counts.to(torch.int32)


@logic_netlist.register_fake
def _(bits, ops, a, b, outputs, num_classes):
    return bits.new_empty(bits.shape[0], num_classes, dtype=torch.int32)


LOGIC_NETLIST = torch.ops.hwact.logic_netlist.default


class LogicNetlistModule(torch.nn.Module):
    """[thermometer thresholds] -> hwact::logic_netlist: what `hwact train-logic` exports.

    With `thresholds` (F, T): x (N, F) real -> bits = (x[..., None] > thresholds).flatten -> counts.
    Without: x (N, num_inputs) is taken as the bits (uint8 0/1).
    The net's tensors are buffers, so the export holds them as constants; `logic_accuracy` (unused by
    forward, kept by torch.export) carries the training report's (soft, discrete) accuracy.
    """

    def __init__(self, netlist: Netlist, thresholds: torch.Tensor | None = None,
                 accuracy: tuple[float, float] | None = None):
        super().__init__()
        self.register_buffer("ops", torch.as_tensor(netlist.ops.astype(np.int64)))
        self.register_buffer("a", torch.as_tensor(netlist.a))
        self.register_buffer("b", torch.as_tensor(netlist.b))
        self.register_buffer("outputs", torch.as_tensor(netlist.outputs))
        self.num_classes = int(netlist.num_classes)
        if accuracy is not None:  # (soft, discrete) held-out accuracy, read by the logic flow's report
            self.register_buffer("logic_accuracy", torch.tensor(accuracy, dtype=torch.float64))
        self.register_buffer("thresholds", None if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.thresholds is not None:
            bits = (x.unsqueeze(-1) > self.thresholds).flatten(1).to(torch.uint8)
        else:
            bits = x
        return LOGIC_NETLIST(bits, self.ops, self.a, self.b, self.outputs, self.num_classes)


def netlist_of_node(module: torch.nn.Module, node: torch.fx.Node, num_inputs: int) -> Netlist:
    """The Netlist held by a hwact::logic_netlist node of an fx graph (its tensors are get_attr constants)."""
    def constant(arg) -> np.ndarray:
        if not isinstance(arg, torch.fx.Node) or arg.op != "get_attr":
            raise InputError(f"node {node.name}: the netlist tensors must be constants of the graph")
        value = module
        for part in arg.target.split("."):
            value = getattr(value, part)
        return value.detach().cpu().numpy()

    args = op_args(node)
    return Netlist(num_inputs, constant(args.ops), constant(args.a), constant(args.b), constant(args.outputs),
                   int(args.num_classes))
