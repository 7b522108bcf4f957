"""Maths of the product layers (PNN, FiBiNET), NFM's bi-interaction and the TwoTower model, each against
a brute-force loop over field pairs or a hand computation."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from conftest import make_batch
from dataset.schema import Schema
from layers.interaction import FactorizationMachine, PairwiseProduct
from layers.product import SENET, BilinearInteraction, InnerProduct, OuterProduct
from models import build_model

B, NUM_FIELDS, DIM = 3, 5, 4
PAIRS = list(itertools.combinations(range(NUM_FIELDS), 2))  # the layers' pair order


@pytest.fixture
def emb() -> torch.Tensor:
    return torch.randn(B, NUM_FIELDS, DIM, generator=torch.Generator().manual_seed(0))


def test_inner_product_equals_brute_force(emb: torch.Tensor) -> None:
    expected = torch.stack([(emb[:, i] * emb[:, j]).sum(-1) for i, j in PAIRS], dim=1)
    assert_close(InnerProduct(NUM_FIELDS)(emb), expected)


@pytest.mark.parametrize("kernel_type", ["mat", "vec", "num"])
def test_outer_product_equals_kernel_contracted_outer_products(emb: torch.Tensor, kernel_type: str) -> None:
    layer = OuterProduct(NUM_FIELDS, DIM, kernel_type)
    with torch.no_grad():
        layer.kernel.normal_()
    out = layer(emb)
    assert out.shape == (B, len(PAIRS))
    for p, (i, j) in enumerate(PAIRS):
        k = layer.kernel[p]
        kernel = {"mat": k, "vec": torch.diag(k), "num": k * torch.eye(DIM)}[kernel_type]  # [D, D]
        for b in range(B):
            outer = torch.outer(emb[b, i], emb[b, j])  # f_i f_j^T
            assert_close(out[b, p], (outer * kernel).sum())


def test_outer_product_rejects_unknown_kernel() -> None:
    with pytest.raises(ValueError, match="kernel_type must be one of"):
        OuterProduct(NUM_FIELDS, DIM, "diag")


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_interaction_equals_brute_force(emb: torch.Tensor, bilinear_type: str) -> None:
    layer = BilinearInteraction(NUM_FIELDS, DIM, bilinear_type)
    expected_count = {"field_all": 1, "field_each": NUM_FIELDS - 1, "field_interaction": len(PAIRS)}
    assert layer.weight.shape == (expected_count[bilinear_type], DIM, DIM)
    out = layer(emb)
    for p, (i, j) in enumerate(PAIRS):
        w = layer.weight[{"field_all": 0, "field_each": i, "field_interaction": p}[bilinear_type]]
        for b in range(B):
            assert_close(out[b, p], (emb[b, i] @ w) * emb[b, j])
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum(dim=(1, 2)).gt(0).all()


def test_senet_weights_and_reweighting(emb: torch.Tensor) -> None:
    layer = SENET(NUM_FIELDS, reduction_ratio=2)
    w1, w2 = layer.excitation[0].weight, layer.excitation[2].weight
    assert w1.shape == (2, NUM_FIELDS) and w2.shape == (NUM_FIELDS, 2)
    weights = layer.weights(emb)
    assert weights.shape == (B, NUM_FIELDS)
    z = emb.mean(dim=-1)  # squeeze
    assert_close(weights, torch.relu(torch.relu(z @ w1.T) @ w2.T))
    out = layer(emb)
    for b, f in itertools.product(range(B), range(NUM_FIELDS)):
        assert_close(out[b, f], weights[b, f] * emb[b, f])


def test_bi_interaction_equals_pairwise_sum_and_square_formula(emb: torch.Tensor) -> None:
    pairwise = sum(emb[:, i] * emb[:, j] for i, j in PAIRS)  # sum_{i<j} v_i ⊙ v_j
    square_formula = 0.5 * (emb.sum(dim=1) ** 2 - (emb ** 2).sum(dim=1))
    out = FactorizationMachine(reduce_sum=False)(emb)
    assert out.shape == (B, DIM)
    assert_close(out, pairwise)
    assert_close(out, square_formula)


def test_nfm_is_linear_plus_mlp_of_normalized_bi_interaction(schema: Schema) -> None:
    model = build_model("NFM", schema, hidden_units=(8,)).eval()
    batch = make_batch(schema, 6)
    emb = model.embedding(batch)
    pairwise = sum(emb[:, i] * emb[:, j] for i, j in itertools.combinations(range(emb.shape[1]), 2))
    expected = model.embedding.linear(batch) + model.dnn(model.bi_norm(pairwise))
    assert_close(model(batch), expected)


@pytest.mark.parametrize("product_type", ["inner", "outer"])
@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
def test_pnn_shapes(schema: Schema, product_type: str, dense_mode: str) -> None:
    model = build_model("PNN", schema, dense_mode=dense_mode, product_type=product_type, hidden_units=(8,))
    fields = model.embedding.num_fields
    assert model.product.num_pairs == fields * (fields - 1) // 2
    assert model.dnn.net[0].in_features == fields * 16 + model.embedding.dense_dim + model.product.num_pairs
    batch = make_batch(schema, 7)
    assert model.product(model.embedding(batch)).shape == (7, model.product.num_pairs)
    assert model(batch).shape == (7, 1)
    with pytest.raises(ValueError, match="product_type must be one of"):
        build_model("PNN", schema, product_type="kernel")


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_fibinet_every_parameter_gets_a_gradient(schema: Schema, bilinear_type: str) -> None:
    model = build_model("FiBiNET", schema, bilinear_type=bilinear_type, hidden_units=(8,))
    model(make_batch(schema, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _two_tower(schema: Schema, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("TwoTower", schema, hidden_units=(8,), tower_dim=4, **kwargs)


def test_two_tower_field_assignment(schema: Schema) -> None:
    default = _two_tower(schema)
    assert default.user_idx.tolist() == [0, 1] and default.item_idx.tolist() == [2, 3, 4]
    named = _two_tower(schema, user_fields=("C4",), item_fields=("C1", "C3"))
    assert named.user_idx.tolist() == [3] and named.item_idx.tolist() == [0, 2]
    rest = _two_tower(schema, item_fields=("C2",))
    assert rest.user_idx.tolist() == [0, 2, 3, 4]
    embed = _two_tower(schema, dense_mode="embed")
    assert embed.user_idx.tolist() == [0, 1, 5, 6]  # embedded dense fields join the user tower


def test_two_tower_field_errors(schema: Schema) -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['user_id'\].*C1, C2, C3, C4, C5"):
        _two_tower(schema, user_fields=("user_id",))
    with pytest.raises(ValueError, match="in both user_fields and item_fields"):
        _two_tower(schema, user_fields=("C1",), item_fields=("C1", "C2"))
    with pytest.raises(ValueError, match="item tower has no fields"):
        _two_tower(schema, user_fields=schema.sparse_fields)


def test_two_tower_logit_is_scaled_cosine_of_towers(schema: Schema) -> None:
    model = _two_tower(schema, temperature=0.2).eval()
    batch = make_batch(schema, 5)
    emb = model.embedding(batch)
    user_in = torch.cat([emb[:, [0, 1]].flatten(1), batch["dense"]], dim=1)
    u = F.normalize(model.user_tower(user_in), dim=1)
    v = F.normalize(model.item_tower(emb[:, [2, 3, 4]].flatten(1)), dim=1)
    assert_close(model.user_embedding(batch), u)
    assert_close(model.item_embedding(batch), v)
    assert_close(model.user_embedding(batch).norm(dim=1), torch.ones(5))
    assert_close(model(batch), (u * v).sum(dim=1, keepdim=True) / 0.2)


def test_two_tower_in_batch_loss_equals_hand_computed_cross_entropy(schema: Schema) -> None:
    tau = 0.5
    model = _two_tower(schema, temperature=tau, in_batch_negatives=True)
    batch = make_batch(schema, 4)
    batch["label"] = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    logits = model(batch)
    u, v = model.user_embedding(batch).tolist(), model.item_embedding(batch).tolist()
    terms = []
    for i in (0, 2):  # rows with label 1; every item of the batch is a candidate
        scores = [sum(a * b for a, b in zip(u[i], v[j])) / tau for j in range(4)]
        terms.append(-(scores[i] - math.log(sum(math.exp(s) for s in scores))))
    loss = model.loss(batch, logits)
    assert_close(loss, torch.tensor(sum(terms) / len(terms)))
    loss.backward()
    assert model.item_tower.net[0].weight.grad.abs().sum() > 0
    assert model._towers is None  # released after use


def test_two_tower_loss_falls_back_to_bce(schema: Schema) -> None:
    batch = make_batch(schema, 4)
    batch["label"] = torch.zeros(4, 1)
    for in_batch in (True, False):
        model = _two_tower(schema, in_batch_negatives=in_batch)
        logits = model(batch)
        assert_close(model.loss(batch, logits), F.binary_cross_entropy_with_logits(logits, batch["label"]))
    model = _two_tower(schema, in_batch_negatives=True)
    batch["label"][0] = 1.0
    with pytest.raises(RuntimeError, match="call logits = model\\(batch\\)"):
        model.loss(batch, torch.zeros(4, 1))


@pytest.mark.parametrize("layer_name, variant", [("pairwise", None), ("outer", "mat"), ("outer", "vec"),
                                                 ("outer", "num"), ("bilinear", "field_all"),
                                                 ("bilinear", "field_each"), ("bilinear", "field_interaction")])
def test_pair_layers_formed_by_left_field_equal_the_gathered_formulas_at_criteo_width(layer_name, variant) -> None:
    """PairwiseProduct, OuterProduct and BilinearInteraction now form their pairs per left field (slices and one
    matmul per field) instead of gathering ``emb[:, rows]`` / ``emb[:, cols]``; at Criteo's 39 fields, in float64,
    their outputs and the gradients of the embeddings and weights must equal the gathered formulas they replaced."""
    fields, dim = 39, 4
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(3, fields, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    rows, cols = torch.triu_indices(fields, fields, offset=1)
    layer = {"pairwise": lambda: PairwiseProduct(fields), "outer": lambda: OuterProduct(fields, dim, variant),
             "bilinear": lambda: BilinearInteraction(fields, dim, variant)}[layer_name]().double()
    params = list(layer.parameters())
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, dtype=torch.float64, generator=gen))
    left, right = emb[:, rows], emb[:, cols]  # the gathered pairs: [B, P, D] each
    if layer_name == "pairwise":
        expected = left * right
    elif layer_name == "outer":
        k = layer.kernel
        expected = (torch.einsum("bpd,pde->bpe", left, k) * right).sum(-1) if variant == "mat" \
            else (left * right * k).sum(-1)
    else:
        w = layer.weight
        projected = {"field_all": lambda: left @ w[0],
                     "field_each": lambda: torch.einsum("bfd,fde->bfe", emb[:, :-1], w)[:, rows],
                     "field_interaction": lambda: torch.einsum("bpd,pde->bpe", left, w)}[variant]()
        expected = projected * right
    out = layer(emb)
    assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(out, [emb, *params], grad_out)
    want = torch.autograd.grad(expected, [emb, *params], grad_out)
    for g, w_ in zip(got, want):
        assert_close(g, w_, rtol=1e-12, atol=1e-12)
