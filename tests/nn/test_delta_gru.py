"""DeltaGRU: learnable steps, training with the delta penalty, one-node export, threshold 0 ~ nn.GRU."""

import torch

from hwact.nn.delta import DeltaGRU, delta_penalty


def sequences(batch=3, steps=12, features=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, features, generator=g) * 0.3).cumsum(dim=1)


def gru_like(model: DeltaGRU) -> torch.nn.GRU:
    gru = torch.nn.GRU(model.features, model.hidden, batch_first=True)
    c = model.cell
    gru.load_state_dict({"weight_ih_l0": c.weight_ih, "weight_hh_l0": c.weight_hh,
                         "bias_ih_l0": c.bias_ih, "bias_hh_l0": c.bias_hh})
    return gru


def test_training_reduces_the_loss_and_the_penalty_is_differentiable():
    torch.manual_seed(0)
    model = torch.nn.Sequential(DeltaGRU(5, 16, theta_x=0.05, theta_h=0.02), torch.nn.Linear(16, 3)).train()
    x, target = sequences(8, 15, 5), torch.randn(8, 15, 3) * 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now():
        return torch.nn.functional.mse_loss(model(x), target) + 1e-3 * delta_penalty(model)

    first = float(loss_now().detach())
    for _ in range(30):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
    assert float(loss_now().detach()) < 0.8 * first
    gru = model[0]
    optimizer.zero_grad()
    model(x)
    penalty = delta_penalty(model)
    assert float(penalty.detach()) > 0 and penalty.requires_grad
    penalty.backward()
    assert float(gru.raw_step_h.grad.abs().sum()) > 0 and float(gru.raw_step_x.grad.abs().sum()) > 0
    assert float(gru.cell.weight_hh.grad.abs().sum()) > 0          # through h's codes (straight-through)
    assert 0 < gru.last_sparsity[0] < 1 and 0 < gru.last_sparsity[1] < 1


def test_eval_mode_exports_as_one_hwact_node_with_the_same_output():
    torch.manual_seed(1)
    model = DeltaGRU(5, 7, theta_x=0.1, theta_h=0.05, granularity="layer").eval()
    assert tuple(model.raw_step_x.shape) == (1,) and tuple(model.raw_step_h.shape) == (1,)
    x = sequences()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    hwact_ops = [n.target for n in program.graph.nodes
                 if n.op == "call_function" and n.target.namespace == "hwact"]
    assert hwact_ops == [torch.ops.hwact.delta_gru_float.default]
    other = sequences(batch=5, seed=3)
    with torch.no_grad():
        assert torch.equal(program.module()(other), model(other))
        model.train()
        assert torch.equal(program.module()(other), model(other))   # eval op == training forward's values


def test_threshold_zero_with_fine_steps_is_a_gru_and_thresholds_sparsify():
    torch.manual_seed(2)
    fine = DeltaGRU(5, 7, init_step_x=1e-5, init_step_h=1e-6, levels=10**7)
    x = sequences(3, 20, 5)
    with torch.no_grad():
        expected, _ = gru_like(fine)(x)
        assert (fine.train()(x) - expected).abs().max() < 2e-5
        assert (fine.eval()(x) - expected).abs().max() < 2e-5
        coarse = DeltaGRU(5, 7).train()                              # default steps 0.05 / (1/64)
        coarse.load_state_dict(fine.state_dict() | {"raw_step_x": coarse.raw_step_x, "raw_step_h": coarse.raw_step_h})
        dense_error = float((coarse(x) - expected).abs().max())
        sparse = DeltaGRU(5, 7, theta_x=0.1, theta_h=0.05).train()
        sparse.load_state_dict(coarse.state_dict())
        sparse_error = float((sparse(x) - expected).abs().max())
    assert 1e-3 < dense_error < 0.05 and dense_error < sparse_error < 0.5
    assert sparse.last_sparsity[0] > coarse.last_sparsity[0] + 0.1
    assert sparse.last_sparsity[1] > coarse.last_sparsity[1] + 0.2


def test_rational_gates_are_within_the_documented_error_of_tanh_and_sigmoid():
    from hwact.ir.delta_gru_ops import rational_sigmoid, rational_tanh

    v = torch.linspace(-12, 12, 200001, dtype=torch.float32)
    tanh_err = (rational_tanh(v).double() - torch.tanh(v.double())).abs().max().item()
    sigmoid_err = (rational_sigmoid(v).double() - torch.sigmoid(v.double())).abs().max().item()
    assert tanh_err <= 3.6e-7 and sigmoid_err <= 2.4e-7, (tanh_err, sigmoid_err)   # docs/delta.md "GRU"
