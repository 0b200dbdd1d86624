"""cle: cross-layer equalization (Nagel et al. 2019, DFQ) with high-bias absorption.

For a pair   y = W2 · f(W1 x + b1) + b2   where f is positively homogeneous per channel
(f(s·z) = s·f(z) for s > 0: ReLU, HeLU, LeakyReLU, PReLU, identity, and the channel-wise max/avg
pools and spatial means that may sit between the layers), any S = diag(s), s > 0, gives the same y:

    W1 ← S⁻¹ W1,   b1 ← S⁻¹ b1,   W2 ← W2 S            (W2 S scales input channel i of W2 by s_i)

With r1_i = max|W1[i, ...]| (output channel i of layer 1) and r2_i = max|W2[:, i, ...]| (input channel
i of layer 2), s_i = sqrt(r1_i / r2_i) makes both ranges sqrt(r1_i · r2_i): per-channel weight ranges
become equal, so a per-tensor (or per-channel) int8 grid wastes less precision. Pairs: linear→linear
(including the transformer MLP fc1→ReLU→fc2), conv→conv, conv→depthwise conv, depthwise→conv, and
conv→(pool/mean)→linear. Chains of pairs are equalized in sweeps until no scale moves by more than
1e-4 (relative) or `iterations` sweeps ran. A channel with r1_i = 0 or r2_i = 0 keeps s_i = 1.
Layer 1's output and every node between the two layers must have a single user (otherwise another
consumer would see the scaled tensor).

High-bias absorption (implemented from calibrated pre-activation statistics, not BN statistics:
fold-bn runs before cle, so β and γ are gone). With z = W1 x + b1 the pre-activation and ReLU-like f,
if z_i ≥ c_i ≥ 0 then f(z_i − c_i) + c_i = f(z_i), hence

    b1 ← b1 − c,     b2 ← b2 + W2 · c     (for a conv layer 2: b2[o] += Σ_{i,k} W2[o, i, k] · c_i)

We take c_i = max(0, min(mean_i − 3·std_i, min_i)) over the calibration batches (mean/std/min per
channel of z after equalization): the paper's "β − 3γ" rule with the BN statistics replaced by measured
ones, capped at the observed minimum so the rewrite is exact on the calibration data (it is approximate
only for inputs whose z_i falls below c_i). Absorption is skipped when layer 2 is a padded conv (zero
padding would not carry the shift) or an average pool with padding sits between; it runs only when
the pass is given calibration batches (the pass manager always gives them).

Before (after gelu-to-relu and fold-bn):   After:
    %fc1 = aten.linear(%x, %w1, %b1)          %fc1 = aten.linear(%x, %w1_eq, %b1_eq)     w1_eq = S⁻¹w1
    %relu = aten.relu(%fc1)                   %relu = aten.relu(%fc1)                    b1_eq = S⁻¹b1 − c
    %fc2 = aten.linear(%relu, %w2, %b2)       %fc2 = aten.linear(%relu, %w2_eq, %b2_eq)  w2_eq = w2·S
                                                                                         b2_eq = b2 + w2_eq·c
Precondition: a layer pair joined by a GELU is reported by `check()` and the pass refuses to run (run
gelu-to-relu first: that is the swap that unlocks cle). A pair joined by another activation that is not
positively homogeneous (tanh, SiLU, ReLU6, ...) is a part of the model no pass here swaps: it is left
unequalized, and listed with the reason in graph.meta["hwact_cle"]["skipped"] (and convert's report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from hwact.errors import InputError
from hwact.ir import activations
from hwact.ir.graph import Graph, module_path, op_name
from hwact.ir.record import record
from hwact.passes.base import Pass, register
from hwact.quant.layers import Layer, as_layer, input_ranges, output_ranges, scale_inputs, set_parameters
from hwact.quant.observers import ChannelStatsObserver

aten = torch.ops.aten

# element-wise, positively homogeneous per channel: f(s·z) = s·f(z) and f(z − c) + c = f(z) for z ≥ c ≥ 0
HOMOGENEOUS = {"aten.relu.default", "aten.relu_.default", "aten.leaky_relu.default", "aten.prelu.default",
               "hwact.helu.default", "aten.clone.default", "aten.alias.default", "aten.dropout.default",
               "aten.contiguous.default"}
# channel-wise linear/homogeneous reductions: allowed when the channel axis is axis 1 and kept
CHANNEL_POOLS = {"aten.max_pool1d.default", "aten.max_pool2d.default", "aten.max_pool3d.default",
                 "aten.avg_pool1d.default", "aten.avg_pool2d.default", "aten.avg_pool3d.default",
                 "aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default",
                 "aten.adaptive_avg_pool3d.default"}
NOT_HOMOGENEOUS = {
    "aten.relu6.default": "ReLU6 clips at 6 (f(s·z) ≠ s·f(z)): replace it by ReLU first (DFQ) or leave cle out",
    "aten.hardtanh.default": "hardtanh/ReLU6 clips (f(s·z) ≠ s·f(z)): replace it by ReLU first or leave cle out",
    "aten.silu.default": "SiLU is not positively homogeneous: leave cle out for this model",
    "aten.sigmoid.default": "sigmoid is not positively homogeneous",
    "aten.tanh.default": "tanh is not positively homogeneous",
    "aten.hardswish.default": "hardswish is not positively homogeneous",
    "aten.elu.default": "ELU is not positively homogeneous",
    "aten.mish.default": "Mish is not positively homogeneous",
}
GELU_REASON = "GELU is not positively homogeneous: run gelu-to-relu (or gelu-to-helu) first"


@dataclass
class Pair:
    first: Layer
    second: Layer
    chain: list[torch.fx.Node] = field(default_factory=list)   # nodes between the layers, in order
    blocked: str | None = None                                 # why it cannot be equalized
    blocker: torch.fx.Node | None = None
    absorbable: bool = True

    def describe(self) -> str:
        where = module_path(self.first.node)
        where = f" [{where}]" if where else ""
        if self.blocker is not None:
            return (f"{self.blocker.name} ({op_name(self.blocker)}) between {self.first.node.name} and "
                    f"{self.second.node.name}{where}: {self.blocked}")
        return f"{self.first.node.name} -> {self.second.node.name}{where}"


def _single_user(node: torch.fx.Node) -> bool:
    return len(node.users) == 1


def _channels_follow(pair: Pair) -> bool:
    """True when layer 1's output channel axis reaches layer 2 as the axis it contracts over."""
    value = pair.first.node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return False
    ndim = value.dim()
    axis = pair.first.channel_axis % ndim
    for node in pair.chain:
        name = op_name(node)
        if name in CHANNEL_POOLS:
            if axis != 1:
                return False
        elif name == "aten.mean.dim":
            dims = node.args[1] if len(node.args) > 1 else None
            keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            if dims is None:
                return False
            dims = [d % ndim for d in ([dims] if isinstance(dims, int) else dims)]
            if axis in dims:
                return False
            if not keepdim:
                axis -= sum(d < axis for d in dims)
                ndim -= len(dims)
        elif name == "aten.flatten.using_ints":
            shape = node.args[0].meta.get("val").shape
            start = node.args[1] if len(node.args) > 1 else 0
            if axis != 1 or start != 1 or any(int(d) != 1 for d in shape[2:]):
                return False
            ndim = 2
    if pair.second.kind == "linear":
        return axis == ndim - 1
    return axis == 1


def find_pairs(graph: Graph) -> list[Pair]:
    """Every layer → (activation / channel-wise ops) → layer pair, blocked or not."""
    gelu_outputs = {site.output: site for site in activations.gelu_sites(graph)}
    pairs = []
    for node in graph.call_nodes():
        second = as_layer(node)
        if second is None:
            continue
        pair, current = Pair(None, second), second.input  # type: ignore[arg-type]
        while isinstance(current, torch.fx.Node) and current.op == "call_function" and _single_user(current):
            first = as_layer(current)
            if first is not None:
                pair.first = first
                break
            name = op_name(current)
            if current in gelu_outputs:
                pair.blocked, pair.blocker = GELU_REASON, current
                pair.chain.append(current)
                current = gelu_outputs[current].x
                continue
            if name in NOT_HOMOGENEOUS:
                pair.blocked, pair.blocker = NOT_HOMOGENEOUS[name], current
            elif name in CHANNEL_POOLS or name in ("aten.mean.dim", "aten.flatten.using_ints"):
                if name.startswith("aten.avg_pool") and len(current.args) > 3 and any(current.args[3]):
                    pair.absorbable = False  # a padded average pool does not carry a constant shift
            elif name not in HOMOGENEOUS:
                break
            pair.chain.append(current)
            current = current.args[0]
        if pair.first is None:
            continue
        pair.chain.reverse()
        if pair.blocked is None and not _channels_follow(pair):
            continue
        if pair.second.kind == "conv" and pair.second.padded:
            pair.absorbable = False
        pairs.append(pair)
    return pairs


@register
class CrossLayerEqualization(Pass):
    name = "cle"
    takes = ("calibration_batches", "iterations", "absorb_bias")
    preconditions = ("layer pairs are joined by positively homogeneous activations (ReLU-like)",)
    tolerance = 1e-3

    def __init__(self, calibration_batches: list[tuple] | None = None, iterations: int = 100,
                 absorb_bias: bool = True):
        if iterations < 1:
            raise InputError(f"cle: iterations must be at least 1, got {iterations}")
        self.batches = list(calibration_batches or [])
        self.iterations = iterations
        self.absorb_bias = absorb_bias

    def check(self, graph: Graph) -> list[str]:
        return [pair.describe() for pair in find_pairs(graph) if pair.blocked == GELU_REASON]

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        found = find_pairs(graph)
        pairs = [pair for pair in found if not pair.blocked]
        skipped = [pair.describe() for pair in found if pair.blocked]
        if not pairs:
            graph.meta["hwact_cle"] = {"pairs": 0, "sweeps": 0, "absorbed_channels": 0, "skipped": skipped}
            return graph, 0
        params = {}
        for pair in pairs:
            for layer in (pair.first, pair.second):
                if layer.node not in params:
                    weight, bias = layer.weight(graph), layer.bias(graph)
                    params[layer.node] = [weight.detach().double(), None if bias is None else bias.detach().double()]
        sweeps = 0
        for sweeps in range(1, self.iterations + 1):
            largest = 0.0
            for pair in pairs:
                largest = max(largest, self._equalize(pair, params))
            if largest < 1e-4:
                break
        for node, (weight, bias) in params.items():
            layer = as_layer(node)
            dtype = layer.weight(graph).dtype
            set_parameters(graph, layer, weight.to(dtype), None if bias is None else bias.to(dtype), "equalized")
        absorbed = self._absorb(graph, pairs) if self.absorb_bias and self.batches else 0
        graph.recompile()
        graph.meta["hwact_cle"] = {"pairs": len(pairs), "sweeps": sweeps, "absorbed_channels": absorbed,
                                   "skipped": skipped}
        return graph, len(pairs)

    @staticmethod
    def _equalize(pair: Pair, params: dict) -> float:
        """Apply s = sqrt(r1/r2) to one pair in `params`; returns max |s − 1|."""
        first, second = params[pair.first.node], params[pair.second.node]
        r1 = output_ranges(first[0])
        r2 = input_ranges(second[0], pair.second.groups)
        if r1.shape != r2.shape:
            return 0.0
        live = (r1 > 0) & (r2 > 0)
        scale = torch.where(live, torch.sqrt(r1 / torch.where(live, r2, 1.0)), torch.ones_like(r1))
        first[0] = first[0] / scale.reshape(-1, *([1] * (first[0].dim() - 1)))
        if first[1] is not None:
            first[1] = first[1] / scale
        second[0] = scale_inputs(second[0], pair.second.groups, scale)
        return float((scale - 1).abs().max())

    def _absorb(self, graph: Graph, pairs: list[Pair]) -> int:
        """High-bias absorption from calibrated pre-activation statistics (see the module docstring)."""
        candidates = [p for p in pairs if p.absorbable and p.first.bias(graph) is not None]
        if not candidates:
            return 0
        stats = {p.first.node: ChannelStatsObserver(p.first.channel_axis) for p in candidates}

        def observe(node: torch.fx.Node, value) -> None:
            if node in stats:
                stats[node].observe(value)

        record(graph.module, self.batches, observe)
        absorbed = 0
        for pair in candidates:
            observer = stats[pair.first.node]
            if observer.count == 0:
                continue
            shift = torch.minimum(observer.mean() - 3 * observer.std(), observer.minimum).clamp_min(0)
            if not bool((shift > 0).any()):
                continue
            b1 = pair.first.bias(graph).detach().double()
            w2 = pair.second.weight(graph).detach().double()
            b2 = pair.second.bias(graph)
            b2 = torch.zeros(w2.shape[0], dtype=torch.float64) if b2 is None else b2.detach().double()
            groups = pair.second.groups
            grouped = w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1).sum(-1)
            b2 = b2 + torch.einsum("goi,gi->go", grouped, shift.reshape(groups, -1)).reshape(-1)
            dtype = pair.first.weight(graph).dtype
            set_parameters(graph, pair.first, None, (b1 - shift).to(dtype), "absorbed")
            set_parameters(graph, pair.second, None, b2.to(dtype), "absorbed")
            absorbed += int((shift > 0).sum())
        return absorbed
