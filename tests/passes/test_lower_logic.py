"""lower-logic: simplify never changes outputs (property-based), each rule fires, the pass on a graph."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.ir.logic_ops import LOGIC_NETLIST, LogicNetlistModule
from hwact.ir.netlist import Netlist
from hwact.nn.logic import LogicNet
from hwact.passes.lower_logic import LowerLogic, simplify


def random_netlist(seed: int, n_in: int, gates: int, n_out: int, classes: int, op_pool=None) -> Netlist:
    rng = np.random.default_rng(seed)
    pool = np.arange(16) if op_pool is None else np.asarray(op_pool)
    ops = rng.choice(pool, gates)
    # mostly local wiring (deep nets), sometimes anywhere, sometimes the same operand twice
    a = np.array([rng.integers(max(0, n_in + g - 8), n_in + g) if rng.random() < 0.7 else rng.integers(0, n_in + g)
                  for g in range(gates)], dtype=np.int64)
    b = np.array([a[g] if rng.random() < 0.1 else rng.integers(0, n_in + g) for g in range(gates)], dtype=np.int64)
    outputs = rng.integers(0, n_in + gates, n_out * classes)
    return Netlist(n_in, ops, a, b, outputs, classes)


def all_inputs(n_in: int) -> np.ndarray:
    return ((np.arange(2 ** n_in)[:, None] >> np.arange(n_in)) & 1).astype(np.uint8)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n_in=st.integers(1, 8), gates=st.integers(0, 120), n_out=st.integers(1, 6),
       classes=st.integers(1, 3), restricted=st.booleans())
def test_simplify_preserves_every_output_on_all_inputs(seed, n_in, gates, n_out, classes, restricted):
    # restricted: only constants, pass-throughs and NOTs, so whole chains must fold away
    pool = [0, 3, 5, 10, 12, 15, 6, 9] if restricted else None
    netlist = random_netlist(seed, n_in, gates, n_out, classes, pool)
    simplified, stats = simplify(netlist)
    bits = all_inputs(n_in)
    assert np.array_equal(simplified.evaluate(bits), netlist.evaluate(bits))
    assert np.array_equal(simplified.class_counts(bits), netlist.class_counts(bits))
    assert simplified.num_inputs == netlist.num_inputs and simplified.num_classes == netlist.num_classes
    assert stats["gates_after"] == simplified.num_gates
    assert simplified.depth() <= netlist.depth()
    # idempotent in size: simplifying again finds nothing more to remove
    again, _ = simplify(simplified)
    assert again.num_gates == simplified.num_gates


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31))
def test_simplify_preserves_outputs_on_wide_random_netlists(seed):
    netlist = random_netlist(seed, 40, 400, 10, 4)
    bits = np.random.default_rng(seed).integers(0, 2, (2000, 40)).astype(np.uint8)
    simplified, _ = simplify(netlist)
    assert np.array_equal(simplified.evaluate(bits), netlist.evaluate(bits))


def test_each_rule():
    # inputs 0,1; gates: 2 = NOT(0), 3 = NOT(2) (double negation -> input 0), 4 = AND(3, 1), 5 = AND(1, 0)
    # (commuted duplicate of 4), 6 = XOR(0, 0) (constant 0), 7 = OR(6, 1) (-> input 1), 8 = NAND(0, 1),
    # 9 = A(8, 0) (pass-through of 8), 10 = unused XOR
    netlist = Netlist(2, [12, 12, 1, 1, 6, 7, 14, 3, 6], [0, 2, 3, 1, 0, 6, 0, 8, 0], [0, 2, 1, 0, 0, 1, 1, 0, 1],
                      [4, 5, 7, 9], 1)
    simplified, stats = simplify(netlist)
    assert np.array_equal(simplified.evaluate(all_inputs(2)), netlist.evaluate(all_inputs(2)))
    # left: one AND(0,1) (4 and 5 merged) and the NAND output (complement of the same canonical AND)
    assert simplified.num_gates == 2
    assert sorted(simplified.ops.tolist()) == [1, 14]
    assert simplified.outputs[2] == 1  # OR(0-constant, input 1) is input 1 itself
    assert stats["constant"] == 1 and stats["merged"] == 2 and stats["pass_through"] == 4 and stats["dead"] == 1
    assert stats["gates_before"] == 9 and stats["depth_before"] == 3 and stats["depth_after"] == 1


def test_constant_and_not_outputs_materialize():
    netlist = Netlist(3, [0, 12, 15], [0, 1, 2], [0, 1, 2], [3, 4, 5, 2], 2)
    simplified, _ = simplify(netlist)
    assert np.array_equal(simplified.evaluate(all_inputs(3)), netlist.evaluate(all_inputs(3)))
    assert simplified.num_gates == 3


def test_simplify_shrinks_a_discretized_net():
    net = LogicNet(24, (300, 300, 300), 3, seed=0, init="gaussian").eval()
    netlist = net.to_netlist()
    simplified, stats = simplify(netlist)
    bits = np.random.default_rng(0).integers(0, 2, (3000, 24)).astype(np.uint8)
    assert np.array_equal(simplified.class_counts(bits), netlist.class_counts(bits))
    # Gaussian-initialised gates: ~6/16 are constants or pass-throughs, plus dead gates: at least 30% removed
    assert stats["gates_after"] < 0.7 * stats["gates_before"], stats


def test_pass_rewrites_the_graph_and_keeps_counts():
    net = LogicNet(16, (200, 200), 4, seed=1, init="gaussian").eval()
    thresholds = torch.linspace(-1, 1, 4).repeat(4, 1)
    module = LogicNetlistModule(net.to_netlist(), thresholds)
    # the model's 16 bits are 4 features x 4 thresholds
    net_bits = LogicNet(16, (200, 200), 4, seed=1, init="gaussian").eval()
    graph = trace(module, [InputSpec("x", (2, 4))])
    x = torch.randn(500, 4)
    before = graph(x)
    lowering = LowerLogic()
    assert lowering.check(graph) == []
    graph, changed = lowering(graph)
    assert changed == 1
    after = graph(x)
    assert torch.equal(before, after)
    node = next(n for n in graph.call_nodes() if n.target is LOGIC_NETLIST)
    stats = node.meta["hwact_logic"]
    assert stats["gates_before"] == 400 and stats["gates_after"] < 400
    assert graph.meta["lower_logic"][0]["gates_after"] == stats["gates_after"]
    del net_bits


def test_pass_refuses_non_binary_inputs():
    class Scaled(torch.nn.Module):
        def __init__(self, netlist):
            super().__init__()
            self.inner = LogicNetlistModule(netlist)

        def forward(self, x):
            return self.inner(x * 2)

    netlist = Netlist(4, [1, 6], [0, 2], [1, 3], [4, 5], 2)
    graph = trace(LogicNetlistModule(netlist), [InputSpec("x", (2, 4), torch.float32)])
    problems = LowerLogic().check(graph)
    assert len(problems) == 1 and "binary" in problems[0] and "'x'" in problems[0]
    with pytest.raises(PreconditionError, match="binary"):
        LowerLogic()(graph)
    ok = trace(LogicNetlistModule(netlist), [InputSpec("x", (2, 4), torch.uint8, high=2)])
    assert LowerLogic().check(ok) == []
    scaled = trace(Scaled(netlist), [InputSpec("x", (2, 4), torch.uint8, high=2)])
    assert "aten.mul" in LowerLogic().check(scaled)[0]
