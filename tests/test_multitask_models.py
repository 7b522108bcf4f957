"""Multi-task layers against brute-force references, and the ESMM / MMoE / PLE / SharedBottom invariants."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import models
from conftest import make_batch
from dataset.schema import Schema
from layers.mlp import MLP
from layers.multitask import CGC, Experts, Gate, MultiGateMixture, Towers, mix, product_logit

B = 16


def task_schema(num_tasks: int) -> Schema:
    return Schema(("C1", "C2", "C3"), (7, 11, 5), ("I1", "I2"), tuple(f"task{k}" for k in range(num_tasks)))


# ---------------------------------------------------------------- layers


def test_product_logit_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1000, generator=g, dtype=torch.float64) * 8 for _ in range(2))
    reference = torch.logit(torch.sigmoid(a) * torch.sigmoid(b))
    assert_close(product_logit(a, b), reference, rtol=1e-9, atol=1e-9)
    assert_close(product_logit(a.float(), b.float()), reference.float(), rtol=1e-5, atol=1e-5)


def test_product_logit_is_exact_and_ordered_at_extreme_logits():
    big = 1e4
    values = torch.tensor([-big, -100.0, -20.0, 0.0, 20.0, 100.0, big])
    a, b = (t.reshape(-1) for t in torch.meshgrid(values, values, indexing="ij"))
    a.requires_grad_(True)
    out = product_logit(a, b)
    assert torch.isfinite(out).all()
    assert (out <= a).all() and (out <= b).all()
    out.sum().backward()
    assert torch.isfinite(a.grad).all()
    # closed forms: logit = -log(e^-a + e^-b + e^-(a+b))
    pairs = torch.tensor([[big, big], [big, 0.0], [-big, 0.0], [0.0, 0.0]])
    expected = torch.tensor([big - math.log(2.0), 0.0, -big - math.log(2.0), -math.log(3.0)])
    assert_close(product_logit(pairs[:, 0], pairs[:, 1]), expected)


def test_mix_is_the_gate_weighted_sum():
    g = torch.Generator().manual_seed(1)
    experts, weights = torch.randn(B, 3, 5, generator=g), torch.rand(B, 3, generator=g)
    expected = sum(weights[:, i, None] * experts[:, i] for i in range(3))
    assert_close(mix(experts, weights), expected)


@pytest.mark.parametrize("activation", ["relu", "prelu", "dice"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_batched_experts_equal_independent_mlps(activation, batch_norm):
    torch.manual_seed(0)
    experts = Experts(6, 3, (5, 4), activation, batch_norm=batch_norm)
    x = torch.randn(B, 6)
    out = experts(x)
    assert out.shape == (B, 3, 4)
    for i in range(3):
        mlp = MLP(6, (5, 4), activation, batch_norm=batch_norm)
        linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, parallel in zip(linears, experts.linears):
                linear.weight.copy_(parallel.weight[i].T)
                linear.bias.copy_(parallel.bias[i])
        assert_close(out[:, i], mlp(x))


def test_experts_need_a_hidden_layer():
    with pytest.raises(ValueError, match="at least one hidden layer.*--expert_units"):
        Experts(6, 3, ())


def test_gate_is_softmax_of_a_linear_map():
    torch.manual_seed(0)
    gate = Gate(6, 4)
    x = torch.randn(B, 6)
    linear = gate.net.net[0]
    weights = gate(x)
    assert_close(weights, torch.softmax(x @ linear.weight.T + linear.bias, dim=1))
    assert (weights >= 0).all()
    assert_close(weights.sum(dim=1), torch.ones(B))


def test_multi_gate_mixture_mixes_shared_experts_per_task():
    torch.manual_seed(0)
    block = MultiGateMixture(6, num_tasks=3, num_experts=4, expert_units=(5,))
    x = torch.randn(B, 6)
    mixtures, gates = block(x)
    assert mixtures.shape == (3, B, 5) and gates.shape == (3, B, 4)
    experts = block.experts(x)
    for k in range(3):
        assert_close(gates[k], block.gates[k](x))
        assert_close(mixtures[k], sum(gates[k][:, i, None] * experts[:, i] for i in range(4)))


@pytest.mark.parametrize("shared_gate", [False, True])
def test_cgc_mixes_own_and_shared_experts(shared_gate):
    torch.manual_seed(0)
    T, m_k, m_s = 2, 2, 3
    cgc = CGC(6, T, m_k, m_s, (5,), shared_gate=shared_gate)
    inputs = torch.randn(T + 1, B, 6)  # a non-first level: each task and the shared branch has its own input
    out = cgc(inputs)
    assert out.outputs.shape == (T + int(shared_gate), B, 5)
    assert out.task_gates.shape == (T, B, m_k + m_s)
    shared = cgc.shared(inputs[T])
    own = [cgc.specific[k](inputs[k]) for k in range(T)]
    for k in range(T):
        assert_close(out.task_gates[k], cgc.task_gates[k](inputs[k]))
        pool = [own[k][:, i] for i in range(m_k)] + [shared[:, i] for i in range(m_s)]
        assert_close(out.outputs[k], sum(out.task_gates[k][:, i, None] * e for i, e in enumerate(pool)))
    if not shared_gate:
        assert out.shared_gate is None
        return
    assert out.shared_gate.shape == (B, T * m_k + m_s)
    pool = [own[k][:, i] for k in range(T) for i in range(m_k)] + [shared[:, i] for i in range(m_s)]
    assert_close(out.outputs[T], sum(out.shared_gate[:, i, None] * e for i, e in enumerate(pool)))


def test_cgc_first_level_feeds_x_to_every_branch():
    torch.manual_seed(0)
    cgc = CGC(6, 2, 1, 2, (5,), shared_gate=True)
    x = torch.randn(B, 6)
    assert_close(cgc(x).outputs, cgc(x.expand(3, B, 6)).outputs)


def test_towers_give_one_logit_column_per_task():
    torch.manual_seed(0)
    towers = Towers(5, 3, (4,))
    per_task, shared = torch.randn(3, B, 5), torch.randn(B, 5)
    out = towers(per_task)
    assert out.shape == (B, 3)
    for k in range(3):
        assert_close(out[:, k : k + 1], towers.towers[k](per_task[k]))
        assert_close(towers(shared)[:, k : k + 1], towers.towers[k](shared))


# ---------------------------------------------------------------- ESMM


def esmm(schema: Schema) -> nn.Module:
    torch.manual_seed(0)
    return models.build_model("ESMM", schema, embed_dim=4, hidden_units=(8,))


@pytest.mark.parametrize("ctr_bias,cvr_bias", [(0.0, 0.0), (60.0, 60.0), (-60.0, 60.0), (60.0, -60.0), (1e4, 1e4)])
def test_esmm_pctcvr_never_exceeds_pctr(mt_schema, ctr_bias, cvr_bias):
    model = esmm(mt_schema)
    with torch.no_grad():
        model.ctr_tower.net[-1].bias.fill_(ctr_bias)
        model.cvr_tower.net[-1].bias.fill_(cvr_bias)
    out = model(make_batch(mt_schema, 64))
    assert torch.isfinite(out).all()
    assert (out[:, 1] <= out[:, 0]).all()
    assert (torch.sigmoid(out[:, 1]) <= torch.sigmoid(out[:, 0])).all()


def test_esmm_pcvr_is_pctcvr_over_pctr(mt_schema):
    model = esmm(mt_schema)
    with torch.no_grad():
        model.cvr_tower.net[-1].bias.fill_(-1.5)
    batch = make_batch(mt_schema, 64)
    out = model(batch)
    p_ctr, p_ctcvr = torch.sigmoid(out[:, :1]), torch.sigmoid(out[:, 1:])
    assert_close(model.predict_cvr(batch), p_ctcvr / p_ctr)


def test_esmm_loss_is_the_entire_space_loss(mt_schema):
    model = esmm(mt_schema)
    batch = make_batch(mt_schema, 64)
    out = model(batch)
    p_ctr, p_cvr = torch.sigmoid(out[:, 0]), model.predict_cvr(batch)[:, 0]
    click, click_and_buy = batch["label"][:, 0], batch["label"][:, 0] * batch["label"][:, 1]
    paper = F.binary_cross_entropy(p_ctr, click) + F.binary_cross_entropy(p_ctr * p_cvr, click_and_buy)
    ours = (F.binary_cross_entropy_with_logits(out[:, 0], click)
            + F.binary_cross_entropy_with_logits(out[:, 1], click_and_buy))
    assert_close(ours, paper)


@pytest.mark.parametrize("labels", [("click",), ("click", "conversion", "share")])
def test_esmm_needs_exactly_two_labels(labels):
    schema = Schema(("C1",), (5,), (), labels)
    with pytest.raises(ValueError, match=r"exactly two labels.*" + r".*".join(labels)):
        models.build_model("ESMM", schema)


# ---------------------------------------------------------------- MMoE, PLE, SharedBottom


@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_mmoe_has_one_gate_per_task_over_all_experts(num_tasks):
    schema = task_schema(num_tasks)
    torch.manual_seed(0)
    model = models.build_model("MMoE", schema, embed_dim=4, num_experts=5)
    batch = make_batch(schema, B)
    assert model(batch).shape == (B, num_tasks)
    gates = model.gate_weights(batch)
    assert gates.shape == (num_tasks, B, 5)
    assert (gates >= 0).all()
    assert_close(gates.sum(dim=-1), torch.ones(num_tasks, B))


@pytest.mark.parametrize("num_levels", [1, 2, 3])
@pytest.mark.parametrize("num_tasks", [1, 3])
def test_ple_levels_shapes_and_gates(num_levels, num_tasks):
    schema = task_schema(num_tasks)
    m_s, m_k, width = 3, 2, 6
    torch.manual_seed(0)
    model = models.build_model("PLE", schema, embed_dim=4, num_levels=num_levels, num_shared_experts=m_s,
                               num_specific_experts=m_k, expert_units=(8, width), tower_units=(4,))
    batch = make_batch(schema, B)
    assert model(batch).shape == (B, num_tasks)
    levels = model.extract(batch)
    assert len(levels) == num_levels
    for j, level in enumerate(levels):
        last = j == num_levels - 1
        assert level.outputs.shape == (num_tasks + (0 if last else 1), B, width)
        assert level.task_gates.shape == (num_tasks, B, m_k + m_s)
        gates = [*level.task_gates]
        if last:
            assert level.shared_gate is None
        else:
            assert level.shared_gate.shape == (B, num_tasks * m_k + m_s)
            gates.append(level.shared_gate)
        for g in gates:
            assert (g >= 0).all()
            assert_close(g.sum(dim=-1), torch.ones(B))


def test_ple_rejects_zero_levels():
    with pytest.raises(ValueError, match="num_levels >= 1.*--num_levels"):
        models.build_model("PLE", task_schema(2), num_levels=0)


@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_shared_bottom_feeds_one_bottom_to_every_tower(num_tasks):
    schema = task_schema(num_tasks)
    torch.manual_seed(0)
    model = models.build_model("SharedBottom", schema, embed_dim=4, bottom_units=(8,), tower_units=(4,))
    batch = make_batch(schema, B)
    out = model(batch)
    assert out.shape == (B, num_tasks)
    bottom = model.bottom(model.embedding.dnn_input(model.embedding(batch), batch))
    for k in range(num_tasks):
        assert_close(out[:, k : k + 1], model.towers.towers[k](bottom))


SMALL = {
    "ESMM": {"hidden_units": (16,)},
    "MMoE": {"num_experts": 4, "expert_units": (16,), "tower_units": (8,)},
    "PLE": {"num_shared_experts": 2, "num_specific_experts": 1, "expert_units": (16,), "tower_units": (8,)},
    "SharedBottom": {"bottom_units": (16,), "tower_units": (8,)},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_steps_on_a_planted_signal_lower_the_loss(name, mt_schema):
    batch = make_batch(mt_schema, 512, seed=3)
    click = (batch["sparse"][:, 0] >= 4).float()  # the click depends on C1 only
    batch["label"] = torch.stack([click, click * (batch["sparse"][:, 1] < 4).float()], dim=1)  # buy needs C2 < 4
    torch.manual_seed(0)
    model = models.build_model(name, mt_schema, embed_dim=8, **SMALL[name])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
