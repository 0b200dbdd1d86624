"""Seeded random netlists for the logic backend tests."""

import numpy as np

from hwact.ir.netlist import Netlist


def random_netlist(seed: int, num_inputs: int, num_gates: int, num_outputs: int, num_classes: int,
                   window: int | None = None) -> Netlist:
    """Gates read random earlier nodes (only the last `window` nodes when given: deeper nets)."""
    rng = np.random.default_rng(seed)
    own = num_inputs + np.arange(num_gates)
    low = np.zeros(num_gates, dtype=np.int64) if window is None else np.maximum(0, own - window)
    a = rng.integers(low, own) if num_gates else np.zeros(0, dtype=np.int64)
    b = rng.integers(low, own) if num_gates else np.zeros(0, dtype=np.int64)
    outputs = rng.integers(max(0, num_inputs + num_gates - 2 * num_outputs), num_inputs + num_gates, num_outputs)
    return Netlist(num_inputs, rng.integers(0, 16, num_gates), a, b, outputs, num_classes)


def random_bits(seed: int, n: int, num_inputs: int) -> np.ndarray:
    """Random 0/1 rows, with the all-zeros and all-ones rows first when there is room."""
    bits = np.random.default_rng(seed).integers(0, 2, (n, num_inputs)).astype(np.uint8)
    if n >= 2:
        bits[0] = 0
        bits[1] = 1
    return bits


def all_gates_netlist(num_classes: int = 16) -> Netlist:
    """Inputs (a, b); gate k = id k applied to (a, b) for k = 0..15; outputs are the 16 gates."""
    return Netlist(2, np.arange(16), np.zeros(16), np.ones(16), 2 + np.arange(16), num_classes)
