"""Maths of layers/factorization.py (FwFM, FEFM, IFM / DIFM, FLEN, MLR) against brute-force loops over fields,
pairs and regions in float64, plus the models' wiring and their hyperparameter errors."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from conftest import make_batch
from dataset.schema import Schema
from layers.embedding import FeatureEmbedding
from layers.product import InnerProduct
from layers.factorization import (DualFactorEstimatingNetwork, FactorEstimatingNetwork, FieldEmbeddedProduct,
                                  FieldWeightedFM, FieldWiseBiInteraction, InputAwareFM, field_linear_terms,
                                  mixed_logistic_logit)
from models import build_model
from models.flen import default_field_groups, parse_field_groups

B, NUM_FIELDS, DIM = 3, 5, 4
PAIRS = list(itertools.combinations(range(NUM_FIELDS), 2))  # the layers' pair order


@pytest.fixture
def emb() -> torch.Tensor:
    return torch.randn(B, NUM_FIELDS, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def randomize(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """float64, every parameter drawn from N(0, 1) (no weight sits at its init value 1 or 0), no gradients."""
    module = module.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.requires_grad_(False)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


# -- per-field first-order terms -------------------------------------------------------------------------------


@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
@pytest.mark.parametrize("which", ["schema", "seq_schema"])
def test_field_linear_terms_split_the_linear_term_field_by_field(request, which: str, dense_mode: str) -> None:
    schema = request.getfixturevalue(which)
    embedding = randomize(FeatureEmbedding(schema, DIM, dense_mode))
    batch = make_batch(schema, 6)
    batch["dense"] = batch["dense"].double()
    if "seq_weight" in batch:
        batch["seq_weight"] = batch["seq_weight"].double()
    terms, rest = field_linear_terms(embedding, batch)
    assert terms.shape == (6, embedding.num_fields) and rest.shape == (6, 1)
    assert_close(terms.sum(dim=1, keepdim=True) + rest, embedding.linear(batch))
    w = embedding.weight.weight[:, 0]
    for b, i in itertools.product(range(6), range(schema.num_sparse)):  # sparse field i: w[offset_i + id]
        assert_close(terms[b, i], w[embedding.offsets[i] + batch["sparse"][b, i]])
    dense_terms = batch["dense"] * embedding.dense_weight  # x_j w_j
    if dense_mode == "embed":
        assert_close(terms[:, -schema.num_dense:], dense_terms)
        assert_close(rest[:, 0], embedding.bias.expand(6))
    else:
        assert_close(rest[:, 0], embedding.bias + dense_terms.sum(dim=1))


# -- FwFM ---------------------------------------------------------------------------------------------------------


def test_field_weighted_fm_equals_brute_force(emb: torch.Tensor) -> None:
    layer = randomize(FieldWeightedFM(NUM_FIELDS))
    out = layer(emb)
    assert out.shape == (B, 1)
    for b in range(B):
        expected = sum(float(layer.r[p]) * dot(emb[b, i], emb[b, j]) for p, (i, j) in enumerate(PAIRS))
        assert math.isclose(float(out[b, 0]), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_field_weighted_fm_starts_as_fm(emb: torch.Tensor) -> None:
    out = FieldWeightedFM(NUM_FIELDS).double()(emb)
    assert_close(out[:, 0], torch.tensor([sum(dot(emb[b, i], emb[b, j]) for i, j in PAIRS) for b in range(B)],
                                         dtype=torch.float64))


@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
def test_fwfm_linear_types(schema: Schema, dense_mode: str) -> None:
    batch = make_batch(schema, 5)
    lw = build_model("FwFM", schema, dense_mode=dense_mode, linear_type="LW").eval()
    emb = lw.embedding(batch)
    assert lw.field_linear is None
    assert_close(lw(batch), lw.embedding.linear(batch) + lw.fwfm(emb))
    filv = build_model("FwFM", schema, dense_mode=dense_mode, linear_type="FiLV").eval().requires_grad_(False)
    emb = filv.embedding(batch)
    w = filv.field_linear.weight[0]  # [w_{F_1}, ..., w_{F_F}, w_dense]
    linear = torch.tensor([
        sum(dot(emb[b, i], w[i * 16:(i + 1) * 16]) for i in range(filv.embedding.num_fields))
        + dot(batch["dense"][b], w[filv.embedding.num_fields * 16:]) + float(filv.field_linear.bias)
        for b in range(5)])
    assert_close(filv(batch)[:, 0], linear + filv.fwfm(emb)[:, 0])
    with pytest.raises(ValueError, match=r"FwFM --linear_type must be one of \('LW', 'FiLV'\), got 'FeLV'"):
        build_model("FwFM", schema, linear_type="FeLV")


# -- FEFM ---------------------------------------------------------------------------------------------------------


def test_field_embedded_product_equals_brute_force(emb: torch.Tensor) -> None:
    layer = randomize(FieldEmbeddedProduct(NUM_FIELDS, DIM))
    assert layer.U.shape == (len(PAIRS), DIM, DIM)
    out = layer(emb)
    assert out.shape == (B, len(PAIRS))
    for p, (i, j) in enumerate(PAIRS):
        u = layer.U[p]
        for b in range(B):
            expected = sum(float(emb[b, i, d]) * float(u[d, e] + u[e, d]) * float(emb[b, j, e])
                           for d in range(DIM) for e in range(DIM))
            assert math.isclose(float(out[b, p]), expected, rel_tol=1e-12, abs_tol=1e-12)
    # a symmetric kernel: swapping the two fields of a pair changes nothing
    swapped = emb[:, [1, 0, 2, 3, 4]]
    assert_close(layer(swapped)[:, 0], out[:, 0])


def test_deepfefm_is_linear_plus_fefm_plus_dnn_of_embeddings_and_interactions(schema: Schema) -> None:
    model = build_model("DeepFEFM", schema, hidden_units=(8,)).eval()
    fields = model.embedding.num_fields
    assert model.dnn.net[0].in_features == fields * 16 + schema.num_dense + fields * (fields - 1) // 2
    batch = make_batch(schema, 4)
    emb = model.embedding(batch)
    r = model.fefm(emb)
    dnn_in = torch.cat([emb.flatten(1), batch["dense"], r], dim=1)
    assert_close(model(batch), model.embedding.linear(batch) + r.sum(1, keepdim=True) + model.dnn(dnn_in))


# -- IFM / DIFM ---------------------------------------------------------------------------------------------------


def test_input_aware_fm_equals_brute_force(emb: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(2)
    factors = torch.rand(B, NUM_FIELDS, generator=g, dtype=torch.float64) * 2
    terms = torch.randn(B, NUM_FIELDS, generator=g, dtype=torch.float64)
    rest = torch.randn(B, 1, generator=g, dtype=torch.float64)
    out = InputAwareFM()(emb, factors, terms, rest)
    assert out.shape == (B, 1)
    for b in range(B):
        m = factors[b]
        expected = float(rest[b, 0]) + sum(float(m[i] * terms[b, i]) for i in range(NUM_FIELDS))
        expected += sum(float(m[i] * m[j]) * dot(emb[b, i], emb[b, j]) for i, j in PAIRS)
        assert math.isclose(float(out[b, 0]), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_factor_estimating_network_is_f_times_softmax(emb: torch.Tensor) -> None:
    fen = randomize(FactorEstimatingNetwork(NUM_FIELDS, DIM, hidden_units=(6,)))
    out = fen(emb)
    assert out.shape == (B, NUM_FIELDS)
    lin = fen.mlp.net[0]
    for b in range(B):
        u = [max(0.0, dot(lin.weight[k], emb[b].flatten()) + float(lin.bias[k])) for k in range(6)]  # ReLU layer
        scores = [dot(fen.P.weight[i], u) for i in range(NUM_FIELDS)]
        total = sum(math.exp(s) for s in scores)
        for i in range(NUM_FIELDS):
            assert math.isclose(float(out[b, i]), NUM_FIELDS * math.exp(scores[i]) / total, rel_tol=1e-10)
    assert_close(out.sum(dim=1), torch.full((B,), float(NUM_FIELDS), dtype=torch.float64))


def test_dual_factor_estimating_network_equals_attention_plus_mlp_by_hand(emb: torch.Tensor) -> None:
    heads, d = 2, DIM // 2
    fen = randomize(DualFactorEstimatingNetwork(NUM_FIELDS, DIM, num_heads=heads, hidden_units=(6,)))
    out = fen(emb)
    assert out.shape == (B, NUM_FIELDS)
    att = fen.attention
    lin = fen.mlp.net[0]
    for b in range(B):
        e = emb[b]  # [F, D]
        q, k, v, res = (e @ w.weight.T for w in (att.W_q, att.W_k, att.W_v, att.W_res))  # [F, D] each
        o = torch.zeros(NUM_FIELDS, DIM, dtype=torch.float64)
        for h, m in itertools.product(range(heads), range(NUM_FIELDS)):
            cols = slice(h * d, (h + 1) * d)
            scores = [dot(q[m, cols], k[n, cols]) / math.sqrt(d) for n in range(NUM_FIELDS)]  # use_scale
            total = sum(math.exp(s) for s in scores)
            o[m, cols] = sum(math.exp(scores[n]) / total * v[n, cols] for n in range(NUM_FIELDS))
        o = torch.relu(o + res)  # residual, then ReLU
        m_vec = [dot(fen.P_vec.weight[i], o.flatten()) for i in range(NUM_FIELDS)]
        u = [max(0.0, dot(lin.weight[j], e.flatten()) + float(lin.bias[j])) for j in range(6)]
        m_bit = [dot(fen.P_bit.weight[i], u) for i in range(NUM_FIELDS)]
        for i in range(NUM_FIELDS):
            assert math.isclose(float(out[b, i]), m_vec[i] + m_bit[i], rel_tol=1e-9, abs_tol=1e-12)


def test_difm_heads_must_divide_the_embedding(schema: Schema) -> None:
    with pytest.raises(ValueError, match="DIFM --num_heads must be >= 1 and divide embed_dim=16, got 3"):
        build_model("DIFM", schema, num_heads=3)


@pytest.mark.parametrize("name", ["IFM", "DIFM"])
@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
def test_input_aware_models_rescale_linear_and_fm_by_their_factors(schema: Schema, name: str, dense_mode: str) -> None:
    model = build_model(name, schema, dense_mode=dense_mode, hidden_units=(8,)).eval()
    batch = make_batch(schema, 4)
    emb = model.embedding(batch)
    factors = model.fen(emb)
    assert factors.shape == (4, model.embedding.num_fields)
    terms, rest = field_linear_terms(model.embedding, batch)
    pairwise = sum(factors[:, i] * factors[:, j] * (emb[:, i] * emb[:, j]).sum(-1)
                   for i, j in itertools.combinations(range(emb.shape[1]), 2))
    expected = rest[:, 0] + (factors * terms).sum(1) + pairwise
    assert_close(model(batch)[:, 0], expected)


# -- FLEN ---------------------------------------------------------------------------------------------------------


def test_field_wise_bi_interaction_equals_brute_force(emb: torch.Tensor) -> None:
    groups = [[0, 3], [1], [2, 4]]
    layer = randomize(FieldWiseBiInteraction(NUM_FIELDS, groups))
    out = layer(emb)
    assert out.shape == (B, DIM)
    for b, d in itertools.product(range(B), range(DIM)):
        e = [sum(float(emb[b, i, d]) for i in g) for g in groups]  # group sums
        h_mf = sum(float(layer.r_between[p]) * e[m] * e[n] for p, (m, n) in enumerate(itertools.combinations(range(3), 2)))
        h_fm = sum(float(layer.r_within[m]) * sum(float(emb[b, i, d] * emb[b, j, d]) for i, j in itertools.combinations(g, 2))
                   for m, g in enumerate(groups))
        assert math.isclose(float(out[b, d]), h_mf + h_fm, rel_tol=1e-12, abs_tol=1e-12)


def test_field_wise_bi_interaction_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="at least 2 non-empty field groups"):
        FieldWiseBiInteraction(NUM_FIELDS, [[0, 1, 2]])
    with pytest.raises(ValueError, match="disjoint field indices in 0..4"):
        FieldWiseBiInteraction(NUM_FIELDS, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="disjoint field indices in 0..4"):
        FieldWiseBiInteraction(NUM_FIELDS, [[0], [5]])


def test_flen_default_groups_come_from_the_schema(seq_schema: Schema, schema: Schema) -> None:
    # user + its histories | the candidates of the histories | the rest (genres; price when embedded)
    assert default_field_groups(seq_schema, "vector") == [("user", [0, 3, 4]), ("item", [1, 2]), ("context", [5])]
    assert default_field_groups(seq_schema, "embed")[2] == ("context", [5, 6])
    # anonymous fields (no user_field, no histories): three contiguous parts
    assert default_field_groups(schema, "vector") == [("part1", [0, 1]), ("part2", [2]), ("part3", [3, 4])]
    assert default_field_groups(schema, "embed") == [("part1", [0, 1]), ("part2", [2, 3, 4]), ("part3", [5, 6])]
    two = Schema(("a", "b"), (3, 4))
    assert default_field_groups(two, "vector") == [("part1", [0]), ("part2", [1])]


def test_flen_explicit_groups_and_their_errors(schema: Schema) -> None:
    assert parse_field_groups("user: C1, C2; item:C3", schema, "vector") == [
        ("user", [0, 1]), ("item", [2]), ("other", [3, 4])]
    assert parse_field_groups("a:C1,I1;b:C2,C3,C4,C5,I2", schema, "embed") == [("a", [0, 5]), ("b", [1, 2, 3, 4, 6])]
    model = build_model("FLEN", schema, field_groups="user:C1,C2;item:C3,C4,C5", hidden_units=(8,))
    assert model.group_names == ["user", "item"] and model.fwbi.member.sum(1).tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['I1'\].*C1, C2, C3, C4, C5.*dense_mode='embed'"):
        build_model("FLEN", schema, field_groups="user:C1,I1")
    with pytest.raises(ValueError, match=r"field\(s\) \['C2'\] are in more than one group"):
        build_model("FLEN", schema, field_groups="user:C1,C2;item:C2,C3")
    with pytest.raises(ValueError, match="is not 'name:field,field,...'"):
        build_model("FLEN", schema, field_groups="C1,C2")
    with pytest.raises(ValueError, match="at least 2 non-empty field groups"):
        build_model("FLEN", schema, field_groups="all:C1,C2,C3,C4,C5")


def test_flen_output_is_w_f_of_fwbi_and_dnn(seq_schema: Schema) -> None:
    model = build_model("FLEN", seq_schema, hidden_units=(8,)).eval()
    batch = make_batch(seq_schema, 4)
    emb = model.embedding(batch)
    h_fwbi = torch.relu(torch.cat([model.embedding.linear(batch), model.fwbi(emb)], 1) @ model.W_FwBI.weight.T)
    h_l = model.dnn(model.embedding.dnn_input(emb, batch))
    assert_close(model(batch), torch.cat([h_fwbi, h_l], 1) @ model.w_F.weight.T)


# -- MLR ----------------------------------------------------------------------------------------------------------


def test_mixed_logistic_logit_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    gate = torch.randn(B, 4, generator=g, dtype=torch.float64) * 3
    learner = torch.randn(B, 4, generator=g, dtype=torch.float64) * 3
    out = mixed_logistic_logit(gate, learner)
    assert out.shape == (B, 1)
    for b in range(B):
        total = sum(math.exp(float(u)) for u in gate[b])
        p = sum(math.exp(float(u)) / total / (1 + math.exp(-float(z))) for u, z in zip(gate[b], learner[b]))
        assert math.isclose(float(out[b, 0]), math.log(p / (1 - p)), rel_tol=1e-10)
    z = torch.randn(B, 1, generator=g, dtype=torch.float64)
    assert_close(mixed_logistic_logit(torch.zeros(B, 1, dtype=torch.float64), z), z)  # one region: plain LR


def test_mixed_logistic_logit_is_finite_where_p_rounds_to_0_or_1() -> None:
    gate = torch.tensor([[0.0, 0.0], [50.0, -50.0]], requires_grad=True)
    learner = torch.tensor([[60.0, 70.0], [-80.0, 90.0]], requires_grad=True)
    out = mixed_logistic_logit(gate, learner)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(gate.grad).all() and torch.isfinite(learner.grad).all()
    assert out[1, 0] < -20  # the dominant region's learner says "no"


@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
def test_mlr_regions_and_learners_are_rows_of_the_shared_table(schema: Schema, dense_mode: str) -> None:
    m = 3
    model = build_model("MLR", schema, dense_mode=dense_mode, region_num=m, embed_dim=8).eval().requires_grad_(False)
    assert model.embedding.table.weight.shape[1] == 2 * m  # embed_dim has no effect
    model.embedding.table.weight.normal_()
    model.bias.normal_()
    batch = make_batch(schema, 4)
    out = model(batch)
    table = model.embedding.table.weight
    for b in range(4):
        scores = model.bias.clone() + sum(table[model.embedding.offsets[i] + batch["sparse"][b, i]] for i in range(5))
        if dense_mode == "embed":
            scores = scores + (batch["dense"][b].unsqueeze(1) * model.embedding.dense_table).sum(0)
        else:
            scores = scores + model.dense.weight @ batch["dense"][b]
        u, w = scores[:m].tolist(), scores[m:].tolist()
        total = sum(math.exp(x) for x in u)
        p = sum(math.exp(ui) / total / (1 + math.exp(-wi)) for ui, wi in zip(u, w))
        assert math.isclose(float(out[b, 0]), math.log(p / (1 - p)), rel_tol=1e-4)
    with pytest.raises(ValueError, match=r"MLR --region_num must be >= 2 \(1 region is LR\), got 1"):
        build_model("MLR", schema, region_num=1)


def test_fast_pair_layers_match_gathered_pairs_at_criteo_width() -> None:
    """InnerProduct (Gram matrix) and FieldEmbeddedProduct (pairs grouped by left field) were rewritten for
    CPU speed; at Criteo's 39 fields, in float64, they must equal the gathered-pair formulas they replaced."""
    torch.manual_seed(0)
    fields, dim = 39, 4
    emb = torch.randn(3, fields, dim, dtype=torch.float64)
    rows, cols = torch.triu_indices(fields, fields, offset=1)
    inner = InnerProduct(fields).double()
    assert_close(inner(emb), (emb[:, rows] * emb[:, cols]).sum(-1), rtol=1e-12, atol=1e-12)
    fefm = randomize(FieldEmbeddedProduct(fields, dim))
    sym = fefm.U + fefm.U.transpose(1, 2)
    expected = torch.einsum("bpd,pde,bpe->bp", emb[:, rows], sym, emb[:, cols])
    assert_close(fefm(emb), expected, rtol=1e-12, atol=1e-12)
