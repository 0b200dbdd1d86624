"""Differentiable logic-gate layers (ALGORITHMS.md §5): LogicLayer, GroupSum, ThermometerEncoder, LogicNet.

A LogicLayer of `out_dim` neurons reads fixed pairs (a_j, b_j) of its inputs and learns, per neuron,
which of the 16 two-input Boolean functions to compute. Every function is a truth table
T = (T00, T01, T10, T11) (T_xy = out(a=x, b=y); difflogic id = Σ T_xy << (3 - (2x + y)), see
hwact/ir/netlist.py), and with inputs read as probabilities p = P(a=1), q = P(b=1) the relaxation of a
table is the multilinear extension

    f_T(p, q) = T00 (1-p)(1-q) + T01 (1-p) q + T10 p (1-q) + T11 p q

which gives the 16 relaxations of the difflogic table (AND = pq, XOR = p+q-2pq, ...). Both
parametrizations therefore reduce to a "soft truth table" per neuron:
  * softmax16 (Petersen et al. 2022): logits z ∈ R^16, T = softmax(z) @ TABLES (TABLES: 16 × 4 in {0,1});
    hard (eval): the table of argmax z.
  * iwp (Light DLGN, input-wise parametrization): logits w ∈ R^4, T = sigmoid(w);
    hard (eval): T = [w >= 0]  (sigmoid(w) >= 0.5).
Initialization: "gaussian" (z ~ N(0,1) / w ~ N(0,1)) or "residual" (biased to the pass-through gate A:
z_A = 5, others 0, i.e. p(A) ≈ 0.908; iwp: w = 3·(2·T_A - 1) + N(0, 0.25)).

In train mode the layer is soft; in eval mode it is hard, so on {0,1} inputs it computes exactly the
netlist that `LogicNet.to_netlist()` writes (before simplification).

Wiring (fixed, only the gates learn):
  * random: c = perm(2·out) mod in, relabelled by a random permutation of the inputs; a, b = the two halves.
    Every input is used when out >= in / 2.
  * unique: pairs (0,1),(2,3),... (plus (in-2,in-1) when in is odd) then (1,2),(3,4),... then pairs at offsets 2, 3, ... until out pairs
    exist, in a random order: no pair repeats, every input is used when out >= in / 2.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from hwact.errors import InputError
from hwact.ir.netlist import Netlist

# TABLES[op] = (T00, T01, T10, T11) of difflogic gate `op`
TABLES = torch.tensor([[(op >> (3 - (2 * x + y))) & 1 for x in (0, 1) for y in (0, 1)] for op in range(16)],
                      dtype=torch.float32)
PASS_A = 3
PARAMETRIZATIONS = ("softmax16", "iwp")
CONNECTIONS = ("random", "unique")
INITS = ("residual", "gaussian")


def soft_gate(table: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multilinear relaxation: table (..., 4) soft truth table; a, b probabilities (broadcast)."""
    na, nb = 1 - a, 1 - b
    return (table[..., 0] * na * nb + table[..., 1] * na * b + table[..., 2] * a * nb + table[..., 3] * a * b)


def table_to_op(table: torch.Tensor) -> torch.Tensor:
    """{0,1} truth tables (..., 4) -> difflogic gate ids (...)."""
    weights = torch.tensor([8, 4, 2, 1], dtype=torch.int64, device=table.device)
    return (table.round().to(torch.int64) * weights).sum(-1)


def random_connections(in_dim: int, out_dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.randperm(2 * out_dim, generator=generator) % in_dim
    c = torch.randperm(in_dim, generator=generator)[c]
    return c[:out_dim].clone(), c[out_dim:].clone()


def unique_connections(in_dim: int, out_dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if in_dim < 2:
        raise InputError(f"unique wiring needs at least 2 inputs, got {in_dim}")
    index = torch.arange(in_dim)
    firsts = [index[0:in_dim - 1:2], index[1:in_dim - 1:2]]
    seconds = [index[1:in_dim:2], index[2:in_dim:2]]
    if in_dim % 2:  # odd: the last input only appears in the second round; move its pair to the first
        firsts = [torch.cat([firsts[0], firsts[1][-1:]]), firsts[1][:-1]]
        seconds = [torch.cat([seconds[0], seconds[1][-1:]]), seconds[1][:-1]]
    offset = 2
    while sum(len(f) for f in firsts) < out_dim and offset < in_dim:
        firsts.append(index[:in_dim - offset])
        seconds.append(index[offset:])
        offset += 1
    a, b = torch.cat(firsts), torch.cat(seconds)
    if a.numel() < out_dim:
        raise InputError(f"unique wiring: {in_dim} inputs give only {a.numel()} distinct pairs, "
                         f"fewer than {out_dim} neurons", hint="use connections='random' or a narrower layer")
    order = torch.randperm(out_dim, generator=generator)
    return a[:out_dim][order].clone(), b[:out_dim][order].clone()


class LogicLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, connections: str = "random", parametrization: str = "softmax16",
                 init: str = "residual", seed: int = 0):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise InputError(f"LogicLayer needs in_dim, out_dim >= 1, got {in_dim}, {out_dim}")
        for name, value, allowed in (("connections", connections, CONNECTIONS),
                                     ("parametrization", parametrization, PARAMETRIZATIONS), ("init", init, INITS)):
            if value not in allowed:
                raise InputError(f"LogicLayer: unknown {name} '{value}'", hint="one of " + ", ".join(allowed))
        self.in_dim, self.out_dim = in_dim, out_dim
        self.connections, self.parametrization, self.init = connections, parametrization, init
        generator = torch.Generator().manual_seed(seed)
        wire = random_connections if connections == "random" else unique_connections
        a, b = wire(in_dim, out_dim, generator)
        self.register_buffer("a", a.to(torch.int64))
        self.register_buffer("b", b.to(torch.int64))
        if parametrization == "softmax16":
            if init == "gaussian":
                logits = torch.randn(out_dim, 16, generator=generator)
            else:
                logits = torch.zeros(out_dim, 16)
                logits[:, PASS_A] = 5.0
        else:
            if init == "gaussian":
                logits = torch.randn(out_dim, 4, generator=generator)
            else:
                logits = 3.0 * (2 * TABLES[PASS_A] - 1).expand(out_dim, 4) + 0.25 * torch.randn(out_dim, 4, generator=generator)
        self.logits = nn.Parameter(logits)

    def extra_repr(self) -> str:
        return (f"{self.in_dim}, {self.out_dim}, connections={self.connections}, "
                f"parametrization={self.parametrization}, init={self.init}")

    def soft_tables(self) -> torch.Tensor:
        """(out_dim, 4) soft truth tables (train mode)."""
        if self.parametrization == "softmax16":
            return torch.softmax(self.logits, dim=-1) @ TABLES.to(self.logits.device)
        return torch.sigmoid(self.logits)

    def hard_tables(self) -> torch.Tensor:
        """(out_dim, 4) {0,1} truth tables (eval mode / discretization)."""
        if self.parametrization == "softmax16":
            return TABLES.to(self.logits.device)[self.logits.argmax(dim=-1)]
        return (self.logits >= 0).to(torch.float32)

    def gate_ids(self) -> torch.Tensor:
        return table_to_op(self.hard_tables().detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise InputError(f"LogicLayer expects {self.in_dim} inputs, got {x.shape[-1]}")
        table = self.soft_tables() if self.training else self.hard_tables()
        return soft_gate(table, x[..., self.a], x[..., self.b])


class GroupSum(nn.Module):
    """Class score c = Σ_{j in group c} x_j / tau over k equal, consecutive groups of the last axis."""

    def __init__(self, k: int, tau: float = 1.0):
        super().__init__()
        if k < 1 or not tau > 0:
            raise InputError(f"GroupSum needs k >= 1 and tau > 0, got {k}, {tau}")
        self.k, self.tau = k, float(tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.k:
            raise InputError(f"GroupSum: {x.shape[-1]} outputs do not split into {self.k} groups")
        return x.reshape(*x.shape[:-1], self.k, x.shape[-1] // self.k).sum(-1) / self.tau


class ThermometerEncoder(nn.Module):
    """x (N, F) real -> bits (N, F·T): bit[f·T + t] = x[f] > thresholds[f, t] (thresholds (F, T))."""

    def __init__(self, thresholds: torch.Tensor):
        super().__init__()
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32)
        if thresholds.ndim != 2 or thresholds.numel() == 0:
            raise InputError(f"thermometer thresholds must be (features, levels), got {tuple(thresholds.shape)}")
        self.register_buffer("thresholds", thresholds)

    @property
    def num_features(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def num_bits(self) -> int:
        return int(self.thresholds.numel())

    @classmethod
    def from_data(cls, x: np.ndarray, levels: int) -> "ThermometerEncoder":
        """`levels` thresholds per feature at the training data's quantiles (i+1)/(levels+1)."""
        x = np.asarray(x, dtype=np.float64)
        quantiles = (np.arange(levels) + 1) / (levels + 1)
        return cls(torch.as_tensor(np.quantile(x, quantiles, axis=0).T.copy(), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(-1) > self.thresholds).flatten(-2).to(torch.float32)


class LogicNet(nn.Module):
    """[ThermometerEncoder] -> LogicLayer × L -> GroupSum(k, tau). Inputs: real features, or bits when
    there is no encoder."""

    def __init__(self, num_inputs: int, widths: tuple[int, ...], num_classes: int, tau: float = 1.0,
                 connections: str = "random", parametrization: str = "softmax16", init: str = "residual",
                 seed: int = 0, encoder: ThermometerEncoder | None = None):
        super().__init__()
        if not widths:
            raise InputError("LogicNet needs at least one logic layer")
        if widths[-1] % num_classes:
            raise InputError(f"the last logic layer ({widths[-1]} neurons) must split into {num_classes} classes",
                             hint="make the last width a multiple of the number of classes")
        self.encoder = encoder
        self.num_bits = encoder.num_bits if encoder is not None else num_inputs
        dims = (self.num_bits, *widths)
        self.layers = nn.ModuleList(LogicLayer(dims[i], dims[i + 1], connections, parametrization, init, seed + 1000 * i)
                                    for i in range(len(widths)))
        self.group_sum = GroupSum(num_classes, tau)
        self.num_classes = num_classes

    def bits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) if self.encoder is not None else x.to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bits(x)
        for layer in self.layers:
            h = layer(h)
        return self.group_sum(h)

    def to_netlist(self) -> Netlist:
        """The discretized (eval-mode) net as an unsimplified Netlist over the input bits."""
        ops, a, b = [], [], []
        base = 0  # node id of the first output of the previous layer (the inputs for layer 0)
        next_id = self.num_bits
        for layer in self.layers:
            ops.append(layer.gate_ids().cpu().numpy())
            a.append(layer.a.cpu().numpy() + base)
            b.append(layer.b.cpu().numpy() + base)
            base = next_id
            next_id += layer.out_dim
        outputs = np.arange(base, next_id)
        return Netlist(self.num_bits, np.concatenate(ops), np.concatenate(a), np.concatenate(b), outputs,
                       self.num_classes, self.group_sum.tau)
