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

DeltaGRU is the recurrent form (DeltaRNN's DeltaGRU): thresholded deltas of the input and of the
hidden state drive running pre-activation memories (biases in their initial values; the candidate's
x and h parts kept apart because n = tanh(M_nx + r * M_nh)). It trains and evaluates in PyTorch;
`lower-delta` lowers Linear layers (the C/CUDA/ONNX kernels do not cover the GRU yet).
"""

from __future__ import annotations

import torch
from torch import nn

import hwact.ir.delta_ops  # noqa: F401  (registers hwact::delta_act)


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
    """Sum of the temporal-change L1 penalties of every DeltaActivation in `model` (last forward)."""
    terms = [m.last_penalty for m in model.modules() if isinstance(m, DeltaActivation) and m.last_penalty.dim() == 0]
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
    """GRU over (batch, time, features) with thresholded input/hidden deltas (DeltaRNN, §6.2).

    theta_x = theta_h = 0 is exactly a GRU. `last_penalty` is mean |Δh| (the L1 on hidden deltas)."""

    def __init__(self, features: int, hidden: int, theta_x: float = 0.0, theta_h: float = 0.0):
        super().__init__()
        self.cell = nn.GRUCell(features, hidden)
        self.hidden, self.theta_x, self.theta_h = hidden, theta_x, theta_h
        self.last_penalty = torch.zeros(())
        self.last_sparsity = (0.0, 0.0)

    @staticmethod
    def _delta(value, memory, theta):
        change = value - memory
        fire = change.abs() >= theta if theta > 0 else change != 0
        change = torch.where(fire, change, torch.zeros_like(change))
        return change, memory + change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = x.shape
        H = self.hidden
        w_ih, w_hh, b_ih, b_hh = self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh
        h = x.new_zeros(batch, H)
        x_p, h_p = x.new_zeros(batch, x.shape[2]), x.new_zeros(batch, H)
        m_x = b_ih.expand(batch, -1)                      # running W_ih x memory, bias added once
        m_h = b_hh.expand(batch, -1)
        outputs, penalty, zeros_x, zeros_h = [], x.new_zeros(()), 0, 0
        for t in range(steps):
            dx, x_p = self._delta(x[:, t], x_p, self.theta_x)
            dh, h_p = self._delta(h, h_p, self.theta_h)
            zeros_x += int((dx == 0).sum())
            zeros_h += int((dh == 0).sum())
            penalty = penalty + dh.abs().mean()
            m_x = m_x + dx @ w_ih.t()
            m_h = m_h + dh @ w_hh.t()
            r = torch.sigmoid(m_x[:, :H] + m_h[:, :H])
            z = torch.sigmoid(m_x[:, H:2 * H] + m_h[:, H:2 * H])
            n = torch.tanh(m_x[:, 2 * H:] + r * m_h[:, 2 * H:])
            h = (1 - z) * n + z * h
            outputs.append(h)
        self.last_penalty = penalty / max(steps, 1)
        self.last_sparsity = (zeros_x / max(x.numel(), 1), zeros_h / max(batch * H * steps, 1))
        return torch.stack(outputs, dim=1)
