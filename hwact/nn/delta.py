"""Delta activations: train a network for temporal sparsity (ALGORITHMS.md §6.1-6.3).

DeltaActivation, placed after an activation, quantizes each value to a learned step q:
    k = clamp(round(x / q), -levels, levels),   y = k * q
Between consecutive frames of a sequence only the neurons whose code k changed send anything
(Δy_t = y_t - y_{t-1}); the next linear layer updates its running output with those few deltas
(`lower-delta` makes that explicit). Training:
  * straight-through gradients: dy/dx = 1 inside the clamp range; dy/dq = round(x/q) - x/q (LSQ);
  * `penalty()` = n_neurons * mean_t |y_t - y_{t-1}|, an L1 on temporal changes (Yousefzadeh &
    Sifalakis), added to the loss with a weight so the network learns to change fewer codes.
  * `q` is per channel (default; the channel axis is `channel_dim` of a (batch, time, ...) tensor),
    per neuron (q has the full feature shape) or per layer (one q). Stored as |q_raw|.
Exported (eval mode) the layer is one `hwact::delta_act` node, which is how hwact recognises a delta
model in a .pt2 file.

FrameCNN is the per-frame conv model for (batch, time, C, H, W) sequences: a DeltaActivation with one
step per channel (channel_dim=2) before every Conv2d and before the flattened Linear classifier;
`lower-delta` makes each delta_act + Conv2d one hwact::delta_conv2d (hwact/ir/delta_conv_ops.py).

DeltaGRU is the recurrent form (DeltaRNN's DeltaGRU): thresholded deltas of the quantized input and
hidden state (learned steps, like DeltaActivation's) drive running pre-activation memories (biases in
their initial values; the candidate's x and h parts kept apart because n = tanh(M_nx + r * M_nh)).
Exported it is one `hwact::delta_gru_float` node; `lower-delta` makes it the int8 `hwact::delta_gru`
(C kernel and ONNX step model: hwact/backends/delta_gru_c.py).
"""

from __future__ import annotations

import torch
from torch import nn

import hwact.ir.delta_ops  # noqa: F401  (registers hwact::delta_act)
from hwact.ir.delta_conv_ops import output_size
from hwact.ir.delta_gru_ops import float_gru  # (and registers hwact::delta_gru_float)


class DeltaActivation(nn.Module):
    def __init__(self, features, granularity: str = "channel", channel_dim: int = -1, init_step: float = 0.05,
                 levels: int = 127):
        super().__init__()
        if granularity not in ("channel", "neuron", "layer"):
            raise ValueError(f"granularity must be channel, neuron or layer, not {granularity!r}")
        shape = tuple(features) if isinstance(features, (tuple, list)) else (int(features),)
        self.granularity, self.channel_dim, self.levels = granularity, channel_dim, levels
        self.feature_shape = shape
        if granularity == "layer":
            size = (1,)
        elif granularity == "neuron":
            size = shape
        else:
            size = (shape[channel_dim if channel_dim < 0 else channel_dim - 2],)   # dims 0, 1: batch, time
        self.raw_step = nn.Parameter(torch.full(size, float(init_step)))
        self.last_penalty = torch.zeros(())

    def step(self) -> torch.Tensor:
        """The positive step, shaped to broadcast against (batch, time, *feature_shape)."""
        step = self.raw_step.abs() + 1e-6
        if self.granularity == "channel":
            axis = self.channel_dim - 2 if self.channel_dim >= 0 else len(self.feature_shape) + self.channel_dim
            step = step.reshape(step.shape + (1,) * (len(self.feature_shape) - axis - 1))
        return step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = self.step()
        if not self.training:
            y = torch.ops.hwact.delta_act(x, step, self.levels)
        else:
            scaled = x / step
            codes = scaled + (torch.round(scaled) - scaled).detach()       # straight-through round
            y = torch.clamp(codes, -self.levels, self.levels) * step
        if self.training and y.dim() >= 3 and y.shape[1] > 1:
            neurons = y[0, 0].numel()
            self.last_penalty = neurons * (y[:, 1:] - y[:, :-1]).abs().mean()
        return y


def delta_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the temporal-change L1 penalties of every DeltaActivation and DeltaGRU in `model` (last forward)."""
    terms = [m.last_penalty for m in model.modules()
             if isinstance(m, (DeltaActivation, DeltaGRU)) and m.last_penalty.dim() == 0]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class FrameMLP(nn.Module):
    """Per-frame MLP on (batch, time, features) -> per-frame logits (batch, time, classes).

    With `delta=True` a DeltaActivation sits on the input and after every ReLU, so every Linear
    reads quantized, temporally sparse values. Clip classification averages the frame logits.
    """

    def __init__(self, features: int, hidden: tuple[int, ...], classes: int, delta: bool = False,
                 init_steps: tuple[float, ...] | None = None, granularity: str = "channel"):
        super().__init__()
        widths = (features, *hidden)
        layers: list[nn.Module] = []
        init_steps = init_steps or (0.05,) * len(widths)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if delta:
                layers.append(DeltaActivation(a, granularity, init_step=init_steps[i]))
            layers += [nn.Linear(a, b), nn.ReLU()]
        if delta:
            layers.append(DeltaActivation(widths[-1], granularity, init_step=init_steps[len(widths) - 1]))
        layers.append(nn.Linear(widths[-1], classes))
        self.layers = nn.Sequential(*layers)
        self.features, self.hidden, self.classes = features, tuple(hidden), classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def to_delta(self, init_steps: tuple[float, ...] | None = None, granularity: str = "channel") -> "FrameMLP":
        """A delta copy of this dense model with the same weights (the fine-tuning start)."""
        model = FrameMLP(self.features, self.hidden, self.classes, delta=True, init_steps=init_steps,
                         granularity=granularity)
        dense = [m for m in self.layers if isinstance(m, nn.Linear)]
        for target, source in zip([m for m in model.layers if isinstance(m, nn.Linear)], dense):
            target.load_state_dict(source.state_dict())
        return model


class DeltaGRU(nn.Module):
    """GRU over (batch, time, features) with thresholded deltas of quantized inputs and hidden state
    (DeltaRNN's DeltaGRU, §6.2; exact maths in hwact/ir/delta_gru_ops.py, hwact::delta_gru_float).

    The input x and the hidden state h are quantized to learned steps (per feature, or one per layer;
    stored as |raw|): k = clamp(round(v / step), -levels, levels), straight-through in training. A
    code is sent when it moved by at least max(1, ceil(threshold / step)) codes since it was last
    sent; the running pre-activation memories M_x = b_ih + W_ih (step_x * sent_x) and
    M_h = b_hh + W_hh (step_h * sent_h) see only the sent changes, and r, z, n are torch.nn.GRU's
    gates on them (n = tanh(M_nx + r * M_nh)). `last_penalty` = F * mean_t |Δ(k_x step_x)| +
    H * mean_t |Δ(k_h step_h)|, the L1 on temporal changes of the codes (counted by delta_penalty()).
    `last_sparsity` = fraction of x and h codes not sent per frame (training forward).
    Threshold 0 with fine steps is a GRU. Eval mode is one hwact::delta_gru_float node (export-able);
    `lower-delta` turns it into the int8 hwact::delta_gru."""

    def __init__(self, features: int, hidden: int, theta_x: float = 0.0, theta_h: float = 0.0,
                 granularity: str = "feature", init_step_x: float = 0.05, init_step_h: float = 1 / 64,
                 levels: int = 127):
        super().__init__()
        if granularity not in ("feature", "layer"):
            raise ValueError(f"granularity must be feature or layer, not {granularity!r}")
        self.cell = nn.GRUCell(features, hidden)
        self.features, self.hidden, self.levels, self.granularity = features, hidden, levels, granularity
        self.theta_x, self.theta_h = float(theta_x), float(theta_h)
        self.raw_step_x = nn.Parameter(torch.full((features if granularity == "feature" else 1,), float(init_step_x)))
        self.raw_step_h = nn.Parameter(torch.full((hidden if granularity == "feature" else 1,), float(init_step_h)))
        self.last_penalty = torch.zeros(())
        self.last_sparsity = (0.0, 0.0)

    def steps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positive steps of x (F,) and h (H,)."""
        step_x = (self.raw_step_x.abs() + 1e-6).expand(self.features)
        step_h = (self.raw_step_h.abs() + 1e-6).expand(self.hidden)
        return step_x, step_h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step_x, step_h = self.steps()
        c = self.cell
        if not self.training:
            return torch.ops.hwact.delta_gru_float(x, step_x, step_h, self.levels, c.weight_ih, c.weight_hh,
                                                   c.bias_ih, c.bias_hh, self.theta_x, self.theta_h)
        y, qx, qh, fired_x, fired_h = float_gru(x, step_x, step_h, self.levels, c.weight_ih, c.weight_hh, c.bias_ih,
                                                c.bias_hh, self.theta_x, self.theta_h)
        penalty = x.new_zeros(())
        if x.shape[1] > 1:
            penalty = (self.features * (qx[:, 1:] - qx[:, :-1]).abs().mean()
                       + self.hidden * (qh[:, 1:] - qh[:, :-1]).abs().mean())
        self.last_penalty = penalty
        frames = max(x.shape[0] * x.shape[1], 1)
        self.last_sparsity = (1 - float(fired_x) / (frames * self.features),
                              1 - float(fired_h) / (frames * self.hidden))
        return y


class FrameCNN(nn.Module):
    """Per-frame CNN on image / feature-map sequences (batch, time, C, H, W) -> logits (batch, time, classes).

    Each frame goes through Conv2d + ReLU layers (frames folded into the batch: (batch * time, C, H, W)
    for the conv, unfolded after it) and a Linear classifier on the flattened last map. With
    `delta=True` a DeltaActivation (one step per channel C, channel_dim=2) sits before every Conv2d and
    before the flatten of the Linear, so every conv and the classifier read quantized values.
    """

    def __init__(self, in_channels: int, size: tuple[int, int], channels: tuple[int, ...], classes: int,
                 kernel_size: int = 3, stride: int = 1, padding: int = 1, delta: bool = False,
                 init_steps: tuple[float, ...] | None = None, granularity: str = "channel"):
        super().__init__()
        widths = (in_channels, *channels)
        init_steps = init_steps or (0.05,) * len(widths)
        height, width = size
        self.convs, self.deltas = nn.ModuleList(), nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if delta:
                self.deltas.append(DeltaActivation((a, height, width), granularity, channel_dim=2,
                                                   init_step=init_steps[i]))
            self.convs.append(nn.Conv2d(a, b, kernel_size, stride=stride, padding=padding))
            height = output_size(height, kernel_size, stride, padding, 1)
            width = output_size(width, kernel_size, stride, padding, 1)
        self.head_delta = (DeltaActivation((widths[-1], height, width), granularity, channel_dim=2,
                                           init_step=init_steps[len(widths) - 1]) if delta else None)
        self.linear = nn.Linear(widths[-1] * height * width, classes)
        self.delta = delta
        self.config = dict(in_channels=in_channels, size=tuple(size), channels=tuple(channels), classes=classes,
                           kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps = x.shape[0], x.shape[1]
        for i, conv in enumerate(self.convs):
            if self.delta:
                x = self.deltas[i](x)
            x = conv(x.flatten(0, 1))
            x = torch.relu(x.unflatten(0, (batch, steps)))
        if self.head_delta is not None:
            x = self.head_delta(x)
        return self.linear(x.flatten(2))

    def to_delta(self, init_steps: tuple[float, ...] | None = None, granularity: str = "channel") -> "FrameCNN":
        """A delta copy of this dense model with the same weights (the fine-tuning start)."""
        model = FrameCNN(**self.config, delta=True, init_steps=init_steps, granularity=granularity)
        for target, source in zip(model.convs, self.convs):
            target.load_state_dict(source.state_dict())
        model.linear.load_state_dict(self.linear.state_dict())
        return model
