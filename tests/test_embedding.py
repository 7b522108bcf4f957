"""The shared embedding: one table with offsets, first-order term, dense modes, L2 on touched rows."""
from __future__ import annotations

import pytest
import torch

from conftest import make_batch
from dataset.schema import Schema
from layers.embedding import FeatureEmbedding, field_offsets


def test_offsets():
    assert field_offsets([3, 5, 2]).tolist() == [0, 3, 8]


def test_one_table_lookup_matches_per_field_rows(schema):
    emb = FeatureEmbedding(schema, embed_dim=4, init_std=1.0)
    batch = make_batch(schema, 8)
    out = emb(batch)
    assert out.shape == (8, schema.num_sparse, 4)
    start = 0
    for f, v in enumerate(schema.vocab_sizes):
        torch.testing.assert_close(out[:, f], emb.table.weight[start + batch["sparse"][:, f]])
        start += v


def test_linear_term_brute_force(schema):
    emb = FeatureEmbedding(schema, embed_dim=4)
    torch.nn.init.normal_(emb.weight.weight)
    torch.nn.init.normal_(emb.dense_weight)
    torch.nn.init.normal_(emb.bias)
    batch = make_batch(schema, 5)
    want = torch.zeros(5, 1)
    for b in range(5):
        start = 0
        for f, v in enumerate(schema.vocab_sizes):
            want[b] += emb.weight.weight[start + batch["sparse"][b, f], 0]
            start += v
        want[b] += (batch["dense"][b] * emb.dense_weight).sum() + emb.bias
    torch.testing.assert_close(emb.linear(batch), want)


@pytest.mark.parametrize("mode", ["vector", "embed"])
def test_dense_modes(schema, mode):
    emb = FeatureEmbedding(schema, embed_dim=4, dense_mode=mode, init_std=1.0)
    batch = make_batch(schema, 6)
    out = emb(batch)
    flat = emb.dnn_input(out, batch)
    if mode == "vector":
        assert out.shape == (6, schema.num_sparse, 4) and emb.dense_dim == schema.num_dense
        torch.testing.assert_close(flat[:, -schema.num_dense:], batch["dense"])
    else:
        assert out.shape == (6, schema.num_sparse + schema.num_dense, 4) and emb.dense_dim == 0
        torch.testing.assert_close(out[:, -1], batch["dense"][:, -1:] * emb.dense_table[-1])
    assert flat.shape == (6, emb.output_dim)


def test_no_dense_fields():
    s = Schema(("a", "b"), (3, 4), (), ("click",))
    emb = FeatureEmbedding(s, embed_dim=2, dense_mode="embed")
    batch = {"sparse": torch.tensor([[0, 3]]), "dense": torch.zeros(1, 0)}
    assert emb(batch).shape == (1, 2, 2) and emb.linear(batch).shape == (1, 1) and emb.output_dim == 4


def test_l2_penalty_counts_touched_rows_only(schema):
    emb = FeatureEmbedding(schema, embed_dim=3, init_std=1.0)
    batch = make_batch(schema, 4)
    ids = batch["sparse"] + emb.offsets
    want = (emb.table.weight[ids] ** 2).sum() / 4 + (emb.weight.weight[ids] ** 2).sum() / 4
    torch.testing.assert_close(emb.l2_penalty(batch), want)
    emb.l2_penalty(batch).backward()
    untouched = torch.ones(emb.table.num_embeddings, dtype=torch.bool)
    untouched[ids.flatten()] = False
    assert emb.table.weight.grad[untouched].abs().sum() == 0


def test_bad_dense_mode(schema):
    with pytest.raises(ValueError, match="dense_mode"):
        FeatureEmbedding(schema, dense_mode="bucket")
