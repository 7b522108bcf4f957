"""The shared embedding: one table with offsets, first-order term, dense modes, L2 on touched rows."""
from __future__ import annotations

import pytest
import torch

from conftest import make_batch
from dataset.schema import Schema
from layers.embedding import FeatureEmbedding, RowTable, field_offsets


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


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 4, 6)])
def test_row_table_rows_and_gradient_are_nn_embeddings(shape: tuple[int, ...]):
    """index_select on the CPU: the same rows, and the same gradient (repeated ids summed), in float64."""
    torch.manual_seed(0)
    ours = RowTable(10, 4).double()
    theirs = torch.nn.Embedding(10, 4).double()
    theirs.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 10, shape)
    ids.view(-1)[:2] = 3  # a repeated id
    upstream = torch.randn(*shape, 4, dtype=torch.float64)
    for table in (ours, theirs):
        (table(ids) * upstream).sum().backward()
    torch.testing.assert_close(ours(ids), theirs(ids), rtol=0, atol=0)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    assert list(ours.state_dict()) == ["weight"] and isinstance(ours, torch.nn.Embedding)
    with pytest.raises(IndexError):
        ours(torch.tensor([10]))


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


# -- shared vocabularies and sequence fields ------------------------------------------------------------


def brute_pool(emb: FeatureEmbedding, batch: dict, table: torch.Tensor, mode: str, schema: Schema) -> torch.Tensor:
    """A loop over rows, fields and valid elements: -> [B, S, K] in float64."""
    vocabs = list(schema.vocabs)
    starts = dict(zip(vocabs, [sum(list(schema.vocabs.values())[:i]) for i in range(len(vocabs))]))
    b_size, out = batch["seq"].shape[0], []
    for b in range(b_size):
        row, col, wcol = [], 0, 0
        for s_i, s in enumerate(schema.sequence_fields):
            n = int(batch["seq_len"][b, s_i])
            vecs = []
            for p in range(n):
                v = table[starts[s.vocab] + int(batch["seq"][b, col + p])].double()
                w = float(batch["seq_weight"][b, wcol + p]) if s.weighted else 1.0
                vecs.append(v * w)
            zero = torch.zeros(table.shape[1], dtype=torch.float64)
            if mode == "sum":
                row.append(sum(vecs, zero))
            elif mode == "mean":
                row.append(sum(vecs, zero) / max(n, 1))
            else:
                row.append(torch.stack(vecs).max(dim=0).values if vecs else zero)
            col += s.max_len
            wcol += s.max_len if s.weighted else 0
        out.append(torch.stack(row))
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_pooling_matches_a_loop_over_valid_elements(seq_schema, mode):
    emb = FeatureEmbedding(seq_schema, embed_dim=4, init_std=1.0, seq_pooling=mode).double()
    batch = make_batch(seq_schema, 64, seed=3)
    batch["seq_len"][0] = 0  # an all-padding row pools to 0
    batch["seq_len"][1] = torch.tensor([s.max_len for s in seq_schema.sequence_fields])
    batch["seq"][2, :] = 7 % 6  # ids left in padded positions must not count
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    out = emb(batch)  # [B, F_sparse + S, D]
    assert out.shape == (64, 3 + 3, 4)
    torch.testing.assert_close(out[:, 3:], brute_pool(emb, batch, emb.table.weight.detach(), mode, seq_schema))
    assert out[0, 3:].abs().sum() == 0
    lin = emb.linear(batch)  # first order covers pooled sequences too
    want = emb.weight.weight[batch["sparse"] + emb.offsets].sum(dim=1) + emb.bias
    want = want + brute_pool(emb, batch, emb.weight.weight.detach(), mode, seq_schema).sum(dim=1)
    want = want + batch["dense"] @ emb.dense_weight.unsqueeze(1)
    torch.testing.assert_close(lin, want)


def test_shared_vocabulary_shares_rows(seq_schema):
    emb = FeatureEmbedding(seq_schema, embed_dim=4, init_std=1.0)
    assert emb.table.num_embeddings == 9 + 30 + 6 + 8  # user, item (shared), cate (shared), genres
    batch = make_batch(seq_schema, 1)
    batch["seq_len"][:] = torch.tensor([[1, 0, 0]])
    batch["seq"][:] = 0
    batch["seq"][0, 0] = 17  # history item 17, in the item vocabulary
    batch["sparse"][0, 1] = 4  # candidate item 4
    emb(batch)[:, 3].sum().backward()  # only the pooled history field
    item_start = 9
    touched = emb.table.weight.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert touched == [item_start + 17]  # the row that item_id 17 uses
    raw, mask = emb.sequence(batch, "hist_item")
    assert raw.shape == (1, 5, 4) and mask.tolist() == [[True, False, False, False, False]]
    torch.testing.assert_close(raw[0, 0], emb.table.weight[item_start + 17])


def test_l2_penalty_counts_valid_sequence_elements_only(seq_schema):
    emb = FeatureEmbedding(seq_schema, embed_dim=3, init_std=1.0)
    batch = make_batch(seq_schema, 4)
    emb.l2_penalty(batch).backward()
    touched = set((batch["sparse"] + emb.offsets).flatten().tolist())
    mask = emb.seq_mask(batch)
    touched |= set((batch["seq"] + emb.seq_offsets)[mask].tolist())
    grad_rows = set(emb.table.weight.grad.abs().sum(dim=1).nonzero().flatten().tolist())
    assert grad_rows == touched


def test_field_aware_embedding_with_sequences(seq_schema):
    from layers.field_aware import FieldAwareEmbedding
    ffm = FieldAwareEmbedding(seq_schema, embed_dim=2)
    out = ffm(make_batch(seq_schema, 5))
    assert ffm.num_fields == 6 and out.shape == (5, 6, 6, 2)


def test_bad_pooling(seq_schema):
    with pytest.raises(ValueError, match="seq_pooling"):
        FeatureEmbedding(seq_schema, seq_pooling="median")


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
def test_fields_pools_only_the_named_sequences(seq_schema, mode, dense_mode):
    """fields(batch, pooled) is forward() without the sequence fields left out (behaviour histories that a
    model attends over instead), whatever order the names come in; it touches no row of the others."""
    emb = FeatureEmbedding(seq_schema, embed_dim=4, init_std=1.0, seq_pooling=mode, dense_mode=dense_mode)
    batch = make_batch(seq_schema, 16, seed=5)
    full = emb(batch)  # [B, 3 sparse + 3 pooled (+ 1 dense), D]
    keep = [0, 1, 2, 5] + ([6] if dense_mode == "embed" else [])  # sparse, genres (, dense)
    torch.testing.assert_close(emb.fields(batch, ["genres"]), full[:, keep])
    torch.testing.assert_close(emb.fields(batch, ["genres", "hist_item"]), full[:, [0, 1, 2, 3, *keep[3:]]])
    torch.testing.assert_close(emb.fields(batch, ("hist_cate", "genres")), full[:, [0, 1, 2, 4, *keep[3:]]])
    torch.testing.assert_close(emb.fields(batch), full[:, [0, 1, 2, *keep[4:]]])
    emb.fields(batch, ["genres"]).sum().backward()
    history_rows = (batch["seq"][:, :10] + emb.seq_offsets[:10]).unique()
    history_rows = history_rows[~torch.isin(history_rows, batch["sparse"] + emb.offsets)]
    assert emb.table.weight.grad[history_rows].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown sequence field"):
        emb.fields(batch, ["hist_brand"])
