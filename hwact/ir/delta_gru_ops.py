"""hwact::delta_gru_float and hwact::delta_gru — the delta GRU (DeltaRNN's DeltaGRU, ALGORITHMS.md §6.2).

Two ops: the trained model's float marker, and the lowered int8 op every backend runs.

hwact::delta_gru_float(x, step_x, step_h, levels, w_ih, w_hh, b_ih, b_hh, threshold_x, threshold_h) -> y
  What DeltaGRU computes in eval mode (and, with straight-through gradients, in training), over
  x (B, T, F), with H hidden units and float weights laid out like torch.nn.GRU (gates r, z, n):
    qx_t = clamp(round(x_t / step_x), -L, L)       qh_t = clamp(round(h_{t-1} / step_h), -L, L)
    a code is sent when it moved by at least max(1, ceil(threshold / step)) codes since it was last
    sent; sx_t, sh_t = the codes last sent (start 0, h_{-1} = 0)
    M_x = b_ih + W_ih (step_x * sx_t)              M_h = b_hh + W_hh (step_h * sh_t)
    r = sigmoid(M_x[r] + M_h[r])   z = sigmoid(M_x[z] + M_h[z])   n = tanh(M_x[n] + r * M_h[n])
    h_t = (1 - z) * n + z * h_{t-1};   y_t = h_t
  M_x and M_h are the running pre-activation memories of DeltaRNN (bias in the initial value, then
  only the sent deltas W (step * Δcode) are added: the sum of the deltas is the last sent code). The
  candidate keeps its x and h parts apart because r multiplies only the h part.
  `lower-delta` (hwact/passes/lower_delta.py) replaces this op by hwact::delta_gru.

hwact::delta_gru(x, step_x, step_h, levels, weight_x, weight_h, scale_x, scale_h, bias_x, bias_h,
                 threshold, key_interval, codes_x, codes_h, acc_x, acc_h, h, frame)
    -> (y, codes_x', codes_h', acc_x', acc_h', h', frame')
  The lowered, stateful form over x (B, T, F). Per frame t (key = key_interval > 0 and
  (frame + t) % key_interval == 0; limits t_j = max(1, ceil(threshold_g / step_j)) in float32):
    kx  = clamp(round_half_even(x_t / step_x), -L, L)      (int32; x_t / step_x one float32 division)
    dx  = kx - codes_x;  fire = (dx != 0) if key else (|dx| >= t_x);  dx[~fire] = 0;  codes_x += dx
    acc_x += weight_x @ dx                                  (int32; only fired columns contribute)
    kh  = clamp(round_half_even(h / step_h), -L, L)         (h: the previous frame's output)
    dh  likewise with codes_h, t_h;                         acc_h += weight_h @ dh
    px  = float32(acc_x) * scale_x;  ph = float32(acc_h) * scale_h          (3H each)
    r   = sig(px[r] + ph[r]);  z = sig(px[z] + ph[z]);  n = th(px[n] + r * ph[n])
    h   = ((1 - z) * n) + (z * h);   y_t = h
  with th(v) the rational tanh below and sig(v) = 0.5 * th(0.5 * v) + 0.5. Every float step is one
  IEEE single operation in the order written (no fused multiply-add), so the C kernel and the ONNX
  step model reproduce the reference bit for bit (tolerance 0); th differs from tanh by <= 4e-7
  and sig from sigmoid by <= 3e-7.
    th(v): v = clamp(v, -c, c), c = 7.90531110763549805;  p = v * P(v²), q = Q(v²) (Horner, the
    Eigen float tanh coefficients TANH_P, TANH_Q);  th = p / q
  weight_x (3H, F) and weight_h (3H, H) hold int8 values (stored int32) with the steps folded in,
  quantized per output row: step_j * W[o, j] ~ scale[o] * weight[o, j]; the accumulators start at
  bias = round(b / scale) (the bias is added once). threshold is a float32 tensor (2,) = (θx, θh)
  in the activation's units (0 = every change is sent: the accumulators then equal the dense
  bias + weight @ codes exactly). levels L <= 127 (codes and deltas fit the int16 column products).
  State: codes_x (B, F), codes_h (B, H), acc_x (B, 3H), acc_h (B, 3H) int32, h (B, H) float32,
  frame (1,) int64. Passing None starts a stream (codes 0, acc = bias, h = 0, frame 0). Inputs must
  be finite (a NaN is code 0 in C; its int32 cast is undefined in the reference).
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
from onnxscript import FLOAT, INT32, INT64
from onnxscript import opset20 as op

from hwact.ir.delta_ops import code_thresholds, quantize_codes, send
from hwact.ir.ops import hwact_op, onnx_translation, op_args
from hwact.ir.params import constant_value

TANH_CLAMP = 7.90531110763549805
TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
          -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)   # v^1, v^3, ... v^13
TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)  # v^0 ... v^6


# ----- shared pieces ---------------------------------------------------------------------------
def rational_tanh(v: torch.Tensor) -> torch.Tensor:
    """th(v) in float32, one rounding per operation in a fixed order (reproducible in C and ONNX)."""
    v = torch.clamp(v, -TANH_CLAMP, TANH_CLAMP)
    v2 = v * v
    p = torch.full_like(v, TANH_P[-1])
    for c in reversed(TANH_P[:-1]):
        p = p * v2 + c
    q = torch.full_like(v, TANH_Q[-1])
    for c in reversed(TANH_Q[:-1]):
        q = q * v2 + c
    return (p * v) / q


def rational_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return rational_tanh(v * 0.5) * 0.5 + 0.5


def gates(px: torch.Tensor, ph: torch.Tensor, h: torch.Tensor, sigmoid, tanh) -> torch.Tensor:
    """One GRU update from the x and h pre-activations (B, 3H): h' = (1 - z) * n + z * h."""
    H = h.shape[-1]
    r = sigmoid(px[:, :H] + ph[:, :H])
    z = sigmoid(px[:, H:2 * H] + ph[:, H:2 * H])
    n = tanh(px[:, 2 * H:] + r * ph[:, 2 * H:])
    return (1 - z) * n + z * h


# ----- delta_gru_float (float semantics, also DeltaGRU's training forward) -----------------------
def straight_through_codes(v: torch.Tensor, step: torch.Tensor, levels: int) -> torch.Tensor:
    """clamp(round(v / step)) as float, gradient 1 through the round (and LSQ's through step)."""
    scaled = v / step
    return torch.clamp(scaled + (torch.round(scaled) - scaled).detach(), -levels, levels)


def float_gru(x, step_x, step_h, levels, w_ih, w_hh, b_ih, b_hh, threshold_x, threshold_h):
    """hwact::delta_gru_float with gradients: (y (B, T, H), quantized x (B, T, F), quantized h (B, T, H),
    fired x codes, fired h codes). Quantized values are code * step (what the deltas are taken of)."""
    batch, steps, _ = x.shape
    H = w_hh.shape[1]
    qx = straight_through_codes(x, step_x, levels)
    kx = qx.detach()
    limit_x = code_thresholds(threshold_x, step_x).to(x.dtype)
    limit_h = code_thresholds(threshold_h, step_h).to(x.dtype)
    sent_x, sent_kx, sent_rows, fired_x = x.new_zeros(batch, x.shape[2]), x.new_zeros(batch, x.shape[2]), [], 0
    for t in range(steps):
        fire = (kx[:, t] - sent_kx).abs() >= limit_x
        sent_x = torch.where(fire, qx[:, t], sent_x)
        sent_kx = torch.where(fire, kx[:, t], sent_kx)
        sent_rows.append(sent_x)
        fired_x = fired_x + fire.sum()
    m_x = b_ih + (torch.stack(sent_rows, dim=1) * step_x) @ w_ih.t() if steps else x.new_zeros(batch, 0, 3 * H)
    h = x.new_zeros(batch, H)
    sent_h, sent_kh, outputs, quantized_h, fired_h = x.new_zeros(batch, H), x.new_zeros(batch, H), [], [], 0
    for t in range(steps):
        qh = straight_through_codes(h, step_h, levels)
        fire = (qh.detach() - sent_kh).abs() >= limit_h
        sent_h = torch.where(fire, qh, sent_h)
        sent_kh = torch.where(fire, qh.detach(), sent_kh)
        fired_h = fired_h + fire.sum()
        m_h = b_hh + (sent_h * step_h) @ w_hh.t()
        h = gates(m_x[:, t], m_h, h, torch.sigmoid, torch.tanh)
        outputs.append(h)
        quantized_h.append(qh * step_h)
    y = torch.stack(outputs, dim=1) if steps else x.new_zeros(batch, 0, H)
    qh_seq = torch.stack(quantized_h, dim=1) if steps else x.new_zeros(batch, 0, H)
    return y, qx * step_x, qh_seq, fired_x, fired_h


@hwact_op("delta_gru_float")
def delta_gru_float(x: torch.Tensor, step_x: torch.Tensor, step_h: torch.Tensor, levels: int, w_ih: torch.Tensor,
                    w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, threshold_x: float,
                    threshold_h: float) -> torch.Tensor:
    with torch.no_grad():
        return float_gru(x, step_x, step_h, levels, w_ih, w_hh, b_ih, b_hh, threshold_x, threshold_h)[0]


@delta_gru_float.register_fake
def _(x, step_x, step_h, levels, w_ih, w_hh, b_ih, b_hh, threshold_x, threshold_h):
    return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])


# ----- delta_gru (lowered, integer accumulators) -----------------------------------------------
def initial_state(batch: int, n_in: int, hidden: int, bias_x: torch.Tensor, bias_h: torch.Tensor):
    """(codes_x, codes_h, acc_x, acc_h, h, frame) at the start of `batch` streams."""
    return (torch.zeros(batch, n_in, dtype=torch.int32), torch.zeros(batch, hidden, dtype=torch.int32),
            bias_x.to(torch.int32).expand(batch, -1).clone(), bias_h.to(torch.int32).expand(batch, -1).clone(),
            torch.zeros(batch, hidden, dtype=torch.float32), torch.zeros(1, dtype=torch.int64))


def add_columns(acc: torch.Tensor, weight: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """acc + weight @ change in exact integers, wrapped to int32."""
    return (acc.to(torch.int64) + change.to(torch.int64) @ weight.to(torch.int64).t()).to(torch.int32)


SEVEN_TENSORS = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@hwact_op("delta_gru")
def delta_gru(x: torch.Tensor, step_x: torch.Tensor, step_h: torch.Tensor, levels: int, weight_x: torch.Tensor,
              weight_h: torch.Tensor, scale_x: torch.Tensor, scale_h: torch.Tensor, bias_x: torch.Tensor,
              bias_h: torch.Tensor, threshold: torch.Tensor, key_interval: int,
              codes_x: Optional[torch.Tensor] = None, codes_h: Optional[torch.Tensor] = None,
              acc_x: Optional[torch.Tensor] = None, acc_h: Optional[torch.Tensor] = None,
              h: Optional[torch.Tensor] = None, frame: Optional[torch.Tensor] = None,
              ) -> SEVEN_TENSORS:
    batch, steps, n_in = x.shape
    hidden = weight_h.shape[1]
    state = (codes_x, codes_h, acc_x, acc_h, h, frame)
    if any(s is None for s in state):
        state = initial_state(batch, n_in, hidden, bias_x, bias_h)
    codes_x, codes_h, acc_x, acc_h = (s.to(torch.int32).clone() for s in state[:4])
    h, frame = state[4].to(torch.float32).clone(), state[5]
    threshold = threshold.to(torch.float32).reshape(-1)
    limit_x, limit_h = code_thresholds(threshold[0], step_x), code_thresholds(threshold[-1], step_h)
    kx_all = quantize_codes(x.to(torch.float32), step_x, levels)
    first = int(frame.reshape(-1)[0])
    outputs = []
    for t in range(steps):
        key = key_interval > 0 and (first + t) % key_interval == 0
        dx = send(kx_all[:, t], codes_x, limit_x, key)
        dh = send(quantize_codes(h, step_h, levels), codes_h, limit_h, key)
        codes_x, codes_h = codes_x + dx, codes_h + dh
        acc_x, acc_h = add_columns(acc_x, weight_x, dx), add_columns(acc_h, weight_h, dh)
        px, ph = acc_x.to(torch.float32) * scale_x, acc_h.to(torch.float32) * scale_h
        h = gates(px, ph, h, rational_sigmoid, rational_tanh)
        outputs.append(h)
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(batch, 0, hidden)
    return y, codes_x, codes_h, acc_x, acc_h, h, (frame.reshape(1) + steps).to(torch.int64)


@delta_gru.register_fake
def _(x, step_x, step_h, levels, weight_x, weight_h, scale_x, scale_h, bias_x, bias_h, threshold, key_interval,
      codes_x=None, codes_h=None, acc_x=None, acc_h=None, h=None, frame=None):
    batch, steps, n_in = x.shape
    hidden, rows = weight_h.shape[1], weight_h.shape[0]
    i32 = torch.int32
    return (x.new_empty(batch, steps, hidden), x.new_empty(batch, n_in, dtype=i32),
            x.new_empty(batch, hidden, dtype=i32), x.new_empty(batch, rows, dtype=i32), x.new_empty(batch, rows, dtype=i32),
            x.new_empty(batch, hidden, dtype=torch.float32), x.new_empty(1, dtype=torch.int64))


# ----- ONNX: one frame (T = 1) --------------------------------------------------------------------
def _onnx_tanh(v):
    v = op.Clip(v, op.Constant(value_float=-TANH_CLAMP), op.Constant(value_float=TANH_CLAMP))
    v2 = op.Mul(v, v)
    p = op.Add(op.Mul(op.Constant(value_float=TANH_P[6]), v2), op.Constant(value_float=TANH_P[5]))
    p = op.Add(op.Mul(p, v2), op.Constant(value_float=TANH_P[4]))
    p = op.Add(op.Mul(p, v2), op.Constant(value_float=TANH_P[3]))
    p = op.Add(op.Mul(p, v2), op.Constant(value_float=TANH_P[2]))
    p = op.Add(op.Mul(p, v2), op.Constant(value_float=TANH_P[1]))
    p = op.Add(op.Mul(p, v2), op.Constant(value_float=TANH_P[0]))
    q = op.Add(op.Mul(op.Constant(value_float=TANH_Q[3]), v2), op.Constant(value_float=TANH_Q[2]))
    q = op.Add(op.Mul(q, v2), op.Constant(value_float=TANH_Q[1]))
    q = op.Add(op.Mul(q, v2), op.Constant(value_float=TANH_Q[0]))
    return op.Div(op.Mul(p, v), q)


def _onnx_sigmoid(v):
    half = op.Constant(value_float=0.5)
    return op.Add(op.Mul(_onnx_tanh(op.Mul(v, half)), half), half)


def _onnx_codes(v, step, levels: int):
    low, high = op.Constant(value_float=-float(levels)), op.Constant(value_float=float(levels))
    return op.Cast(op.Clip(op.Round(op.Div(v, step)), low, high), to=6)


def _onnx_send(codes, sent, threshold, step, is_key):
    one = op.Constant(value_float=1.0)
    limits = op.Cast(op.Max(op.Ceil(op.Div(threshold, step)), one), to=6)
    change = op.Sub(codes, sent)
    zero = op.Cast(op.Constant(value_int=0), to=6)
    # |change| >= limit >= 1 implies change != 0, so a key frame only adds the smaller changes
    fire = op.Or(op.GreaterOrEqual(op.Abs(change), limits), op.And(is_key, op.Not(op.Equal(change, zero))))
    return op.Mul(change, op.Cast(fire, to=6))


@onnx_translation(torch.ops.hwact.delta_gru.default)
def delta_gru_onnx(x: FLOAT, step_x: FLOAT, step_h: FLOAT, levels: int, weight_x: INT32, weight_h: INT32,
                   scale_x: FLOAT, scale_h: FLOAT, bias_x: INT32, bias_h: INT32, threshold: FLOAT, key_interval: int,
                   codes_x: INT32, codes_h: INT32, acc_x: INT32, acc_h: INT32, h: FLOAT, frame: INT64):
    """One frame (T = 1) of hwact::delta_gru in standard ONNX ops (the streaming step)."""
    axis = op.Constant(value_ints=[1])
    interval = op.Constant(value_int=key_interval)
    on_key = op.Equal(op.Mod(frame, op.Constant(value_ints=[max(key_interval, 1)])), op.Constant(value_ints=[0]))
    is_key = op.And(op.Greater(interval, op.Constant(value_int=0)), on_key)
    theta_x = op.Gather(threshold, op.Constant(value_ints=[0]), axis=0)
    theta_h = op.Gather(threshold, op.Constant(value_ints=[-1]), axis=0)
    dx = _onnx_send(_onnx_codes(op.Squeeze(x, axis), step_x, levels), codes_x, theta_x, step_x, is_key)
    dh = _onnx_send(_onnx_codes(h, step_h, levels), codes_h, theta_h, step_h, is_key)
    new_acc_x = op.Add(acc_x, op.MatMul(dx, op.Transpose(weight_x, perm=[1, 0])))
    new_acc_h = op.Add(acc_h, op.MatMul(dh, op.Transpose(weight_h, perm=[1, 0])))
    px = op.Mul(op.Cast(new_acc_x, to=1), scale_x)
    ph = op.Mul(op.Cast(new_acc_h, to=1), scale_h)
    px_r, px_z, px_n = op.Split(px, axis=1, num_outputs=3)
    ph_r, ph_z, ph_n = op.Split(ph, axis=1, num_outputs=3)
    r = _onnx_sigmoid(op.Add(px_r, ph_r))
    z = _onnx_sigmoid(op.Add(px_z, ph_z))
    n = _onnx_tanh(op.Add(px_n, op.Mul(r, ph_n)))
    new_h = op.Add(op.Mul(op.Sub(op.Constant(value_float=1.0), z), n), op.Mul(z, h))
    new_frame = op.Add(frame, op.Constant(value_ints=[1]))
    return (op.Unsqueeze(new_h, axis), op.Add(codes_x, dx), op.Add(codes_h, dh), new_acc_x, new_acc_h, new_h,
            new_frame)


# ----- the lowered layers ------------------------------------------------------------------------
DELTA_GRU = torch.ops.hwact.delta_gru.default


def delta_gru_layers(graph) -> list[dict]:
    """The hwact.delta_gru layers of a lowered graph in graph order: their constant tensors and settings."""
    names = ("step_x", "step_h", "levels", "weight_x", "weight_h", "scale_x", "scale_h", "bias_x", "bias_h",
             "threshold", "key_interval")
    layers = []
    for node in graph.call_nodes():
        if node.target is not DELTA_GRU:
            continue
        args = op_args(node)
        values = {key: constant_value(graph, getattr(args, key)) for key in names}
        values["levels"], values["key_interval"] = int(values["levels"]), int(values["key_interval"])
        out = next(u for u in node.users if u.target is operator.getitem and u.args[1] == 0)
        layers.append({"node": node, "input": args.x, "output": out, **values})
    return layers
