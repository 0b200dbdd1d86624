"""lut-gelu: replace each GELU float island by a lookup table (hwact::int_lut), bit-identical to the island;
an alternative to shift-gelu's integer approximation for 8-bit (or 16-bit) inputs.

    table[i] = hwact.quantize(GELU(hwact.dequantize(qmin_in + i, S_in)), S_out, qmin, qmax)   i = 0 .. N − 1
    GELU(x)  = x · Φ(x)  (approximate="none")   or   0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))  ("tanh")

evaluated with the island's own aten.gelu call (its `approximate` argument included) in float32 on every
input code its producer declares; the math, the refusals (unknown input bounds, more than 65536 codes)
and the per-layer record (table_size, path_dependent_codes) are lut-activations' (hwact/passes/
lut_activations.py), of which this pass is the GELU instance. Unlike shift-gelu it costs N int32 table
entries per layer (1 KiB for int8 input, 256 KiB for int16) and has no approximation error of its own.

Before:                                              After:
    %dq = hwact.dequantize(%q, 0.063)                    %t = get_attr[int32, 256]
    %g  = aten.gelu(%dq, approximate="tanh")             %y = hwact.int_lut(%q, %t, -128, -128, 127)
    %y  = hwact.quantize(%g, 0.05, -128, 127)
"""

from __future__ import annotations

import torch

from hwact.passes.base import register
from hwact.passes.lut_activations import LutActivations

aten = torch.ops.aten
GELU_OPS = {getattr(aten, name).default for name in ("gelu", "gelu_") if hasattr(aten, name)}


@register
class LutGelu(LutActivations):
    name = "lut-gelu"
    preconditions = ("every GELU is a float island hwact.dequantize → aten.gelu → hwact.quantize (run "
                     "fold-quant-scales first) whose input code bounds a hwact op declares (at most 65536 codes)",)
    ops = GELU_OPS
