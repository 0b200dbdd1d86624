"""Logic layers: relaxations, parametrizations, wiring, eval == netlist reference, the netlist op."""

import numpy as np
import pytest
import torch

from hwact.errors import InputError
from hwact.ir.logic_ops import LOGIC_NETLIST, LogicNetlistModule
from hwact.ir.netlist import Netlist, gate_output
from hwact.nn.logic import (TABLES, GroupSum, LogicLayer, LogicNet, ThermometerEncoder, soft_gate, table_to_op,
                            unique_connections)

# ALGORITHMS.md §5.1 relaxation table, written out independently of TABLES
RELAXATIONS = [
    lambda a, b: 0 * a, lambda a, b: a * b, lambda a, b: a - a * b, lambda a, b: a,
    lambda a, b: b - a * b, lambda a, b: b, lambda a, b: a + b - 2 * a * b, lambda a, b: a + b - a * b,
    lambda a, b: 1 - (a + b - a * b), lambda a, b: 1 - (a + b - 2 * a * b), lambda a, b: 1 - b,
    lambda a, b: 1 - b + a * b, lambda a, b: 1 - a, lambda a, b: 1 - a + a * b, lambda a, b: 1 - a * b,
    lambda a, b: 0 * a + 1,
]


@pytest.mark.parametrize("op", range(16))
def test_each_relaxation_is_the_hard_gate_on_bits_and_the_published_formula(op):
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.0, 1.0, 0.0, 1.0])
    hard = soft_gate(TABLES[op], a, b)
    expected = gate_output(op, a.numpy().astype(int), b.numpy().astype(int)).astype(np.float32)
    assert np.array_equal(hard.numpy(), expected)
    p, q = torch.rand(1000, generator=torch.Generator().manual_seed(op)), torch.rand(1000)
    torch.testing.assert_close(soft_gate(TABLES[op], p, q), RELAXATIONS[op](p, q), atol=1e-6, rtol=0)
    assert int(table_to_op(TABLES[op])) == op


def test_softmax16_eval_picks_argmax_gate():
    layer = LogicLayer(6, 16, parametrization="softmax16", init="gaussian", seed=3)
    with torch.no_grad():
        layer.logits.zero_()
        layer.logits[torch.arange(16), torch.arange(16)] = 4.0  # neuron j -> gate j
    assert layer.gate_ids().tolist() == list(range(16))
    x = torch.randint(0, 2, (64, 6)).float()
    out = layer.eval()(x)
    for j in range(16):
        ref = gate_output(j, x[:, layer.a[j]].int().numpy(), x[:, layer.b[j]].int().numpy())
        assert np.array_equal(out[:, j].numpy(), ref.astype(np.float32))
    soft = layer.train()(x)
    assert not torch.equal(soft, out)  # train mode is the relaxation, not the hard gate
    assert ((soft > 0) & (soft < 1)).any()


def test_iwp_truth_tables_threshold_sigmoid_at_half():
    layer = LogicLayer(4, 16, parametrization="iwp", init="gaussian", seed=1)
    with torch.no_grad():  # neuron j: logits +-2 following the bits of j, MSB = (a,b)=(0,0)
        for j in range(16):
            layer.logits[j] = torch.tensor([2.0 if (j >> (3 - i)) & 1 else -2.0 for i in range(4)])
    assert layer.gate_ids().tolist() == list(range(16))
    torch.testing.assert_close(layer.soft_tables(), torch.sigmoid(layer.logits))
    assert layer.parameters().__next__().shape == (16, 4)


def test_residual_init_is_pass_through_a():
    for parametrization in ("softmax16", "iwp"):
        layer = LogicLayer(10, 30, parametrization=parametrization, init="residual", seed=0)
        assert (layer.gate_ids() == 3).all()
        if parametrization == "softmax16":
            assert abs(float(torch.softmax(layer.logits.detach(), -1)[0, 3]) - 0.908) < 0.002


@pytest.mark.parametrize("in_dim,out_dim", [(10, 5), (64, 100), (33, 17), (7, 21), (9, 5)])
def test_unique_wiring_uses_every_input_and_no_pair_twice(in_dim, out_dim):
    layer = LogicLayer(in_dim, out_dim, connections="unique", seed=2)
    used = set(layer.a.tolist()) | set(layer.b.tolist())
    assert used == set(range(in_dim))
    pairs = {tuple(sorted(p)) for p in zip(layer.a.tolist(), layer.b.tolist())}
    assert len(pairs) == out_dim
    assert (layer.a != layer.b).all()


def test_random_wiring_uses_every_input_when_wide_enough():
    layer = LogicLayer(100, 50, connections="random", seed=5)
    assert set(layer.a.tolist()) | set(layer.b.tolist()) == set(range(100))


def test_unique_wiring_refuses_too_many_neurons():
    with pytest.raises(InputError):
        unique_connections(3, 10, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("parametrization", ["softmax16", "iwp"])
def test_eval_output_equals_netlist_reference(parametrization):
    net = LogicNet(20, (48, 40, 30), 3, tau=2.0, parametrization=parametrization, init="gaussian", seed=7)
    net.eval()
    bits = torch.randint(0, 2, (500, 20), generator=torch.Generator().manual_seed(1)).float()
    netlist = net.to_netlist()
    assert netlist.num_gates == 48 + 40 + 30 and netlist.num_inputs == 20 and netlist.outputs.size == 30
    with torch.no_grad():
        scores = net(bits)
    assert np.array_equal((scores * 2.0).round().numpy().astype(np.int64), netlist.class_counts(bits.numpy().astype(np.uint8)))


def test_group_sum_and_thermometer():
    x = torch.arange(12.0).reshape(1, 12)
    assert GroupSum(3, 2.0)(x).tolist() == [[3.0, 11.0, 19.0]]
    enc = ThermometerEncoder(torch.tensor([[0.5, 1.5], [0.0, 10.0]]))
    assert enc(torch.tensor([[1.0, 5.0]])).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    with pytest.raises(InputError):
        GroupSum(4)(torch.ones(2, 10))


def test_netlist_op_matches_reference_and_rejects_non_binary():
    rng = np.random.default_rng(0)
    n_in, gates = 12, 200
    ops = rng.integers(0, 16, gates)
    a = np.array([rng.integers(0, n_in + g) for g in range(gates)])
    b = np.array([rng.integers(0, n_in + g) for g in range(gates)])
    outputs = rng.integers(0, n_in + gates, 40)
    netlist = Netlist(n_in, ops, a, b, outputs, 4)
    bits = rng.integers(0, 2, (300, n_in)).astype(np.uint8)
    counts = LOGIC_NETLIST(torch.from_numpy(bits), torch.from_numpy(ops), torch.from_numpy(a), torch.from_numpy(b),
                           torch.from_numpy(outputs), 4)
    assert counts.dtype == torch.int32
    assert np.array_equal(counts.numpy(), netlist.class_counts(bits))
    with pytest.raises(InputError, match="binary"):
        LogicNetlistModule(netlist)(torch.full((2, n_in), 0.5))


def test_netlist_module_exports_and_runs():
    enc = ThermometerEncoder.from_data(np.random.default_rng(0).random((50, 5)), 3)
    net = LogicNet(5, (30, 20), 2, encoder=enc, seed=0, init="gaussian").eval()
    module = LogicNetlistModule(net.to_netlist(), enc.thresholds, accuracy=(0.5, 0.25))
    x = torch.rand(9, 5)
    program = torch.export.export(module, (x,))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(LOGIC_NETLIST) == 1
    assert torch.equal(program.module()(x), module(x))
    assert torch.equal((net(x) * net.group_sum.tau).round().to(torch.int32), module(x))
    assert program.state_dict["logic_accuracy"].tolist() == [0.5, 0.25]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_training_step_and_netlist_op_on_gpu():
    net = LogicNet(32, (256, 200), 4, parametrization="iwp", seed=0, init="gaussian").cuda()
    x = torch.randint(0, 2, (128, 32), device="cuda").float()
    y = torch.randint(0, 4, (128,), device="cuda")
    loss = torch.nn.functional.cross_entropy(net.train()(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    netlist = net.eval().to_netlist()
    with torch.no_grad():
        scores = net(x)
    expected = netlist.class_counts(x.cpu().numpy().astype(np.uint8))
    assert np.array_equal(scores.cpu().round().numpy().astype(np.int64), expected)
    tensors = [torch.as_tensor(t).cuda() for t in (netlist.ops.astype(np.int64), netlist.a, netlist.b, netlist.outputs)]
    counts = LOGIC_NETLIST(x.to(torch.uint8), *tensors, 4)
    assert counts.is_cuda and np.array_equal(counts.cpu().numpy(), expected)
