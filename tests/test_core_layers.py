"""Maths of the core interaction layers (FM, FFM, cross nets, CIN, AFM, AutoInt, ONN) against brute force."""
from __future__ import annotations

import doctest
import itertools

import pytest
import torch

import layers.attention
import layers.cross
import layers.field_aware
import layers.interaction
import models
from conftest import make_batch
from layers.attention import InteractingLayer
from layers.cross import CrossNet, CrossNetMix, CrossNetV2
from layers.field_aware import FieldAwareEmbedding
from layers.interaction import CIN, AttentionalPooling, FactorizationMachine, PairwiseProduct, pair_indices


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def double_batch(schema, batch_size: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = make_batch(schema, batch_size, seed)
    batch["dense"] = batch["dense"].double()
    return batch


@pytest.mark.parametrize("module", [layers.interaction, layers.cross, layers.attention, layers.field_aware])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --- FM and pairs ------------------------------------------------------------------------------------------

def test_fm_equals_sum_over_all_pairs():
    emb = randn(4, 6, 5)
    pairs = sum(emb[:, i] * emb[:, j] for i, j in itertools.combinations(range(6), 2))  # [B, D]
    torch.testing.assert_close(FactorizationMachine(reduce_sum=False)(emb), pairs)
    torch.testing.assert_close(FactorizationMachine(reduce_sum=True)(emb), pairs.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("reduce_sum", [True, False])
def test_fm_gradient_is_the_gradient_of_the_sum_over_pairs(reduce_sum: bool):
    """The written-out backward against autograd through the pair loop, float64."""
    emb = randn(4, 6, 5).requires_grad_()
    upstream = randn(4, 1 if reduce_sum else 5)
    (FactorizationMachine(reduce_sum)(emb) * upstream).sum().backward()
    ours, emb.grad = emb.grad, None
    pairs = sum(emb[:, i] * emb[:, j] for i, j in itertools.combinations(range(6), 2))  # [B, D]
    ((pairs.sum(dim=1, keepdim=True) if reduce_sum else pairs) * upstream).sum().backward()
    torch.testing.assert_close(ours, emb.grad)
    assert torch.autograd.gradcheck(FactorizationMachine(reduce_sum), (randn(2, 4, 3).requires_grad_(),))


def test_pair_indices_are_row_major_i_lt_j_and_products_match():
    rows, cols = pair_indices(4)
    assert list(zip(rows.tolist(), cols.tolist())) == list(itertools.combinations(range(4), 2))
    emb = randn(3, 4, 2)
    expected = torch.stack([emb[:, i] * emb[:, j] for i, j in itertools.combinations(range(4), 2)], dim=1)
    torch.testing.assert_close(PairwiseProduct(4)(emb), expected)
    with pytest.raises(ValueError, match="at least 2 fields"):
        PairwiseProduct(1)


# --- FFM / field-aware embedding ---------------------------------------------------------------------------

def brute_force_ffm(fa: FieldAwareEmbedding, schema, batch) -> torch.Tensor:
    """sum_{i<j} <v_{i,f_j}, v_{j,f_i}> with explicit loops over rows of the raw tables -> [B]."""
    D, F = fa.embed_dim, fa.num_fields
    table = fa.table.weight
    offsets = [sum(schema.vocab_sizes[:i]) for i in range(schema.num_sparse)]
    out = []
    for b in range(batch["sparse"].shape[0]):
        vectors = [table[offsets[i] + batch["sparse"][b, i]] for i in range(schema.num_sparse)]
        if fa.dense_table is not None:
            vectors += [batch["dense"][b, j] * fa.dense_table[j] for j in range(schema.num_dense)]
        total = torch.zeros((), dtype=torch.float64)
        for i in range(F):
            for j in range(i + 1, F):
                v_i_fj = vectors[i][j * D:(j + 1) * D]
                v_j_fi = vectors[j][i * D:(i + 1) * D]
                total = total + (v_i_fj * v_j_fi).sum()
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
def test_ffm_interaction_equals_loops_over_raw_table(schema, dense_mode):
    torch.manual_seed(0)
    fa = FieldAwareEmbedding(schema, embed_dim=3, dense_mode=dense_mode, init_std=1.0).double()
    batch = double_batch(schema)
    assert fa.num_fields == (7 if dense_mode == "embed" else 5)
    ffm = fa.inner_products(fa(batch)).sum(dim=1)
    torch.testing.assert_close(ffm, brute_force_ffm(fa, schema, batch))


def test_ffm_model_is_linear_plus_ffm_and_regularizes_the_field_aware_table(schema):
    torch.manual_seed(0)
    model = models.build_model("FFM", schema, embed_dim=3, dense_mode="embed", embed_init_std=1.0).double()
    torch.nn.init.normal_(model.embedding.weight.weight)
    batch = double_batch(schema)
    expected = model.embedding.linear(batch).squeeze(1) + brute_force_ffm(model.embedding, schema, batch)
    torch.testing.assert_close(model(batch).squeeze(1), expected)
    ids = batch["sparse"] + model.embedding.offsets
    touched = model.embedding.table.weight[ids].pow(2).sum() + model.embedding.weight.weight[ids].pow(2).sum()
    torch.testing.assert_close(model.embedding.l2_penalty(batch), touched / 6)


# --- cross networks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 3])
def test_crossnet_equals_hand_computation(num_layers):
    net = CrossNet(input_dim=5, num_layers=num_layers).double()
    torch.nn.init.normal_(net.bias)
    x0 = randn(4, 5)
    x = x0
    for layer in range(num_layers):
        w, b = net.weight[layer], net.bias[layer]
        x = torch.stack([x0[n] * torch.dot(x[n], w) + b + x[n] for n in range(4)])
    torch.testing.assert_close(net(x0), x)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_crossnetv2_equals_hand_computation(num_layers):
    net = CrossNetV2(input_dim=5, num_layers=num_layers).double()
    x0 = randn(4, 5)
    x = x0
    for linear in net.layers:
        x = x0 * (x @ linear.weight.T + linear.bias) + x
    torch.testing.assert_close(net(x0), x)


def test_crossnetmix_one_expert_full_rank_is_documented_formula():
    net = CrossNetMix(input_dim=5, num_layers=2, low_rank=5, num_experts=1).double()
    torch.nn.init.normal_(net.bias)
    x0 = randn(3, 5)
    x = x0
    for layer in range(2):
        U, V, C, b = net.U[layer, 0], net.V[layer, 0], net.C[layer, 0], net.bias[layer]
        x = torch.stack([x0[n] * (U @ torch.tanh(C @ torch.tanh(V.T @ x[n])) + b) + x[n] for n in range(3)])
    torch.testing.assert_close(net(x0), x)


def test_crossnetmix_mixes_experts_with_softmax_gates():
    net = CrossNetMix(input_dim=4, num_layers=2, low_rank=2, num_experts=3).double()
    torch.nn.init.normal_(net.gate.weight)
    x0 = randn(3, 4)
    x = x0
    for layer in range(2):
        new = []
        for n in range(3):
            scores = net.gate.weight @ x[n]
            gates = torch.exp(scores) / torch.exp(scores).sum()
            experts = [x0[n] * (net.U[layer, k] @ torch.tanh(net.C[layer, k] @ torch.tanh(net.V[layer, k].T @ x[n]))
                                + net.bias[layer]) for k in range(3)]
            new.append(sum(g * e for g, e in zip(gates, experts)) + x[n])
        x = torch.stack(new)
    torch.testing.assert_close(net(x0), x)


# --- CIN ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split_half, expected_dim", [(False, 6 + 4 + 3), (True, 3 + 2 + 3)])
def test_cin_output_dim_is_sum_of_layer_sizes_halved_when_split(split_half, expected_dim):
    cin = CIN(num_fields=4, layer_sizes=(6, 4, 3), split_half=split_half)
    assert cin.output_dim == expected_dim
    assert cin(torch.randn(2, 4, 5)).shape == (2, expected_dim)


def test_cin_split_half_rejects_odd_hidden_sizes():
    with pytest.raises(ValueError, match="must be even"):
        CIN(num_fields=4, layer_sizes=(5, 4), split_half=True)


@pytest.mark.parametrize("split_half", [False, True])
def test_cin_equals_outer_product_then_filters(split_half):
    B, m, D = 2, 3, 4
    cin = CIN(num_fields=m, layer_sizes=(4, 2), split_half=split_half).double()
    x0 = randn(B, m, D)
    hidden, pooled = x0, []
    for k, conv in enumerate(cin.convs):
        W = conv.weight.squeeze(-1)  # [H_k, H_{k-1} * m]
        H_prev = hidden.shape[1]
        z = torch.einsum("bhd,bjd->bhjd", hidden, x0)  # z^k: [B, H_{k-1}, m, D]
        x = torch.stack([sum(W[c, h * m + j] * z[:, h, j] for h in range(H_prev) for j in range(m))
                         for c in range(W.shape[0])], dim=1)  # [B, H_k, D]
        if split_half and k == 0:
            hidden, direct = x[:, :2], x[:, 2:]
        else:
            hidden, direct = x, x
        pooled.append(direct.sum(dim=2))
    torch.testing.assert_close(cin(x0), torch.cat(pooled, dim=1))


@pytest.mark.parametrize("split_half", [False, True])
def test_cin_equals_the_einsum_and_conv1d_formula_at_criteo_width(split_half):
    """CIN runs as a batched outer product and one matmul per layer (fast on CPU); in float64 at 39 fields its
    output and gradients must equal the einsum to [B, H, m, D] and Conv1d it replaced."""
    m, D = 39, 4
    cin = CIN(num_fields=m, layer_sizes=(6, 4, 3), split_half=split_half).double()
    x0 = randn(3, m, D).requires_grad_()
    hidden, pooled = x0, []
    for conv, direct in zip(cin.convs, cin.direct_sizes):
        x = conv(torch.einsum("bhd,bmd->bhmd", hidden, x0).reshape(3, -1, D))  # [B, H_k, D]
        hidden, x = torch.split(x, [x.shape[1] - direct, direct], dim=1) if direct < x.shape[1] else (x, x)
        pooled.append(x.sum(dim=2))
    expected, out = torch.cat(pooled, dim=1), cin(x0)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = randn(*out.shape, seed=1)
    params = [x0, *cin.parameters()]
    for got, want in zip(torch.autograd.grad(out, params, grad_out), torch.autograd.grad(expected, params, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- AFM ---------------------------------------------------------------------------------------------------

def test_afm_weights_sum_to_one_and_pooling_equals_loop():
    pool = AttentionalPooling(num_fields=4, embed_dim=3, attention_dim=5).double()
    emb = randn(2, 4, 3)
    out, weights = pool.attend(emb)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, dtype=torch.float64))
    lin1, lin2 = pool.attention[0], pool.attention[2]
    for b in range(2):
        products = [emb[b, i] * emb[b, j] for i, j in itertools.combinations(range(4), 2)]
        scores = torch.stack([lin2.weight[0] @ torch.relu(lin1.weight @ p + lin1.bias) for p in products])
        a = torch.exp(scores) / torch.exp(scores).sum()
        torch.testing.assert_close(weights[b], a)
        torch.testing.assert_close(out[b], sum(a_p * p for a_p, p in zip(a, products)))


# --- AutoInt -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_scale", [False, True])
def test_interacting_layer_weights_and_output_equal_per_head_loops(use_scale):
    B, F, D, H, d = 2, 4, 3, 2, 5
    layer = InteractingLayer(D, attention_dim=d, num_heads=H, use_scale=use_scale).double()
    emb = randn(B, F, D)
    out, alpha = layer.attend(emb)
    assert out.shape == (B, F, H * d) and alpha.shape == (B, H, F, F)
    torch.testing.assert_close(alpha.sum(dim=-1), torch.ones(B, H, F, dtype=torch.float64))
    scale = d ** -0.5 if use_scale else 1.0
    for b, h, m in itertools.product(range(B), range(H), range(F)):
        rows = slice(h * d, (h + 1) * d)
        Wq, Wk, Wv = layer.W_q.weight[rows], layer.W_k.weight[rows], layer.W_v.weight[rows]
        scores = torch.stack([torch.dot(Wq @ emb[b, m], Wk @ emb[b, k]) * scale for k in range(F)])
        a = torch.exp(scores) / torch.exp(scores).sum()
        torch.testing.assert_close(alpha[b, h, m], a)
        head = sum(a[k] * (Wv @ emb[b, k]) for k in range(F))
        torch.testing.assert_close(out[b, m, rows], torch.relu(head + layer.W_res.weight[rows] @ emb[b, m]))


def test_autoint_stack_widths_and_autointplus_is_registered_separately(schema):
    model = models.build_model("AutoInt", schema, embed_dim=4, attention_layers=2, num_heads=2, attention_dim=3)
    widths = [(layer.W_q.in_features, layer.output_dim) for layer in model.interacting]
    assert widths == [(4, 6), (6, 6)]
    assert model.fc.in_features == 5 * 6 + 2  # F * H*d' plus the raw dense vector in "vector" mode
    plus = models.get_model_class("AutoIntPlus")
    assert plus is not models.get_model_class("AutoInt") and issubclass(plus, models.get_model_class("AutoInt"))


# --- ONN, DCNv2, LR, FM models -----------------------------------------------------------------------------

@pytest.mark.parametrize("dense_mode, fields, dnn_in", [("vector", 5, 5 * 3 + 2 + 10), ("embed", 7, 7 * 3 + 21)])
def test_onn_shapes(schema, dense_mode, fields, dnn_in):
    model = models.build_model("ONN", schema, embed_dim=3, dense_mode=dense_mode, hidden_units=(8,))
    batch = make_batch(schema, 4)
    field_emb = model.embedding(batch)
    assert field_emb.shape == (4, fields, fields, 3)
    assert model.embedding.table.weight.shape == (sum(schema.vocab_sizes), fields * 3)
    own = model.embedding.own_field(field_emb)
    torch.testing.assert_close(own, torch.stack([field_emb[:, i, i] for i in range(fields)], dim=1))
    assert model.embedding.inner_products(field_emb).shape == (4, fields * (fields - 1) // 2)
    assert model.dnn.net[0].in_features == dnn_in
    assert model(batch).shape == (4, 1)


def test_dcnv2_structures_and_low_rank_switch(schema):
    batch = make_batch(schema, 4)
    only = models.build_model("DCNv2", schema, embed_dim=4, structure="crossnet_only", low_rank=2)
    assert only.dnn is None and isinstance(only.cross, CrossNetMix)
    x0 = only.embedding.dnn_input(only.embedding(batch), batch)
    torch.testing.assert_close(only(batch), only.fc(only.cross(x0)))
    stacked = models.build_model("DCNv2", schema, embed_dim=4, structure="stacked", hidden_units=(8, 6))
    assert isinstance(stacked.cross, CrossNetV2) and stacked.fc.in_features == 6
    parallel = models.build_model("DCNv2", schema, embed_dim=4, hidden_units=(8, 6))
    assert parallel.fc.in_features == 5 * 4 + 2 + 6
    with pytest.raises(ValueError, match="structure must be one of"):
        models.build_model("DCNv2", schema, structure="serial")


def test_lr_and_fm_models_are_their_equations(schema):
    torch.manual_seed(0)
    batch = make_batch(schema, 5)
    lr = models.build_model("LR", schema)
    torch.nn.init.normal_(lr.embedding.weight.weight)
    torch.testing.assert_close(lr(batch), lr.embedding.linear(batch))
    fm = models.build_model("FM", schema, dense_mode="embed", embed_init_std=1.0)
    emb = fm.embedding(batch)
    pairs = sum((emb[:, i] * emb[:, j]).sum(dim=1) for i, j in itertools.combinations(range(7), 2))
    torch.testing.assert_close(fm(batch), fm.embedding.linear(batch) + pairs.unsqueeze(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_in_place_relu_gives_the_out_of_place_values_and_gradients(batch_norm: bool):
    """MLP's ReLUs after nn.Linear / batch norm run in place; after another layer (FINAL's) they must not."""
    from layers.mlp import MLP

    torch.manual_seed(0)
    mlp = MLP(12, (8, 8), batch_norm=batch_norm, output_dim=1).double()
    assert [m.inplace for m in mlp.net if isinstance(m, torch.nn.ReLU)] == [True, True]
    x = torch.randn(16, 12, dtype=torch.float64, requires_grad=True)
    out = mlp(x)
    grads = torch.autograd.grad(out.sum(), [x, *mlp.parameters()])
    for m in mlp.net:  # the same stack, out of place: the reference
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    ref = mlp(x)
    assert torch.equal(out, ref)
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), [x, *mlp.parameters()])):
        assert torch.equal(g, r)

    class Exponential(torch.nn.Linear):  # a map whose backward reads its own output
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(super().forward(x))

    other = MLP(12, (8,), linear=Exponential)
    assert not other.net[1].inplace
    other(torch.randn(4, 12)).sum().backward()
