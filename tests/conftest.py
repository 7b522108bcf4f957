"""Shared fixtures: a small hand-written schema and random batches in the DESIGN.md batch format."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(1)

from dataset.schema import Schema, SequenceField  # noqa: E402

BEHAVIOUR_SCHEMA = Schema(
    ("user_id", "item_id", "cate_id"), (52, 202, 12), ("price",), ("click",),
    sequence_fields=(SequenceField("hist_item_id", "item", 202, 10), SequenceField("hist_cate_id", "cate", 12, 10),
                     SequenceField("hist_session", "session", 12, 10)),
    sparse_vocabs=("user", "item", "cate"), user_field="user_id")


def make_batch(schema: Schema, batch_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch: sparse int64 [B, F], dense float32 [B, D], label float32 [B, T] (binary tasks 0/1,
    regression tasks normal), and for a schema with sequences seq int32 [B, L] (zero-padded after random
    lengths in 0..max_len), seq_len int64 [B, S] and seq_weight float32 [B, L_weighted]."""
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, v, (batch_size,), generator=g) for v in schema.vocab_sizes], dim=1)
    dense = torch.rand(batch_size, schema.num_dense, generator=g)
    label = (torch.rand(batch_size, schema.num_tasks, generator=g) < 0.3).float()
    for t, task in enumerate(schema.task_types):
        if task == "regression":
            label[:, t] = torch.randn(batch_size, generator=g)
    batch = {"sparse": sparse, "dense": dense, "label": label}
    if schema.num_sequences:
        lens = torch.stack([torch.randint(0, s.max_len + 1, (batch_size,), generator=g)
                            for s in schema.sequence_fields], dim=1)
        ids = [torch.randint(0, s.vocab_size, (batch_size, s.max_len), generator=g) for s in schema.sequence_fields]
        ids = [x * (torch.arange(x.shape[1]) < lens[:, i:i + 1]) for i, x in enumerate(ids)]
        batch.update(seq=torch.cat(ids, dim=1).int(), seq_len=lens)
        if schema.seq_weight_width:
            batch["seq_weight"] = torch.rand(batch_size, schema.seq_weight_width, generator=g) * 2
    return batch


def write_behaviour_store(path: Path, n_rows: int = 3000, seed: int = 0) -> Path:
    """A small behaviour store (:data:`BEHAVIOUR_SCHEMA`, splits 80/10/10) with a planted history signal.

    200 items (ids 2..201) in 10 categories (item i in category i % 10, ids 2..11); each row has an interest
    category, its history of 0..10 behaviours is in that category with probability 0.7 (else uniform), in
    sessions of 1..4 behaviours (``hist_session``: ids 2.., counted back from the latest session), and its
    candidate is in it with probability 0.5. ``click ~ Bernoulli(sigmoid(-2 + 0.9 m))``, ``m`` the number of
    history behaviours in the candidate's category: without the history a model is at chance."""
    from dataset.store import StoreWriter

    rng = np.random.default_rng(seed)
    n, max_len = n_rows, 10
    interest = rng.integers(0, 10, n)
    lengths = rng.integers(0, max_len + 1, n)
    cates = np.where(rng.random((n, max_len)) < 0.7, interest[:, None], rng.integers(0, 10, (n, max_len)))
    items = cates + 10 * rng.integers(0, 20, (n, max_len))
    valid = np.arange(max_len) < lengths[:, None]
    opens = rng.random((n, max_len)) < 0.4  # a behaviour opens a new session
    sessions = np.cumsum(opens & valid, axis=1)
    sessions = np.maximum(sessions.max(axis=1, keepdims=True) - sessions, 0)  # counted back from the latest
    cand_cate = np.where(rng.random(n) < 0.5, interest, rng.integers(0, 10, n))
    cand_item = cand_cate + 10 * rng.integers(0, 20, n)
    m = ((cates == cand_cate[:, None]) & valid).sum(axis=1)
    click = rng.random(n) < 1 / (1 + np.exp(2.0 - 0.9 * m))
    sparse = np.stack([rng.integers(2, 52, n), cand_item + 2, cand_cate + 2], axis=1).astype(np.int32)
    seq = np.concatenate([items + 2, cates + 2, sessions + 2], axis=1).astype(np.int32) * np.tile(valid, 3)
    seq_len = np.repeat(lengths[:, None], 3, axis=1).astype(np.int32)
    dense = rng.random((n, 1)).astype(np.float32)
    label = click[:, None].astype(np.float32)
    a, b = int(0.8 * n), int(0.9 * n)
    with StoreWriter(path, BEHAVIOUR_SCHEMA, dataset="planted_behaviour", chunk_size=512) as writer:
        for split, rows in (("train", slice(0, a)), ("valid", slice(a, b)), ("test", slice(b, n))):
            writer.add(split, sparse[rows], dense[rows], label[rows], seq=seq[rows], seq_len=seq_len[rows])
    return path


def load_rows(path: Path, split: str = "train") -> dict[str, torch.Tensor]:
    """Every row of a store's split as batch tensors, of the loader's dtypes."""
    from dataset.store import StoreReader

    store = StoreReader(path)
    rows = store.read_split(split)
    return {b.name: torch.from_numpy(rows[b.name].astype(b.batch_dtype)) for b in store.schema.blocks()
            if b.name in store.schema.batch_keys()}


@pytest.fixture
def schema() -> Schema:
    """Single-task schema with sparse and dense fields."""
    return Schema(("C1", "C2", "C3", "C4", "C5"), (7, 11, 3, 50, 5), ("I1", "I2"), ("click",))


@pytest.fixture
def mt_schema() -> Schema:
    """Two-task schema (click, conversion), like an ESMM / MMOE store."""
    return Schema(("C1", "C2", "C3", "C4"), (7, 11, 3, 50), ("I1",), ("click", "conversion"))


@pytest.fixture
def seq_schema() -> Schema:
    """A behaviour-sequence schema: user, item and category with histories sharing the item and category
    vocabularies, a weighted multi-value genre field with its own vocabulary, one dense field."""
    return Schema(("user", "item", "cate"), (9, 30, 6), ("price",), ("click",),
                  sequence_fields=(SequenceField("hist_item", "item", 30, 5), SequenceField("hist_cate", "cate", 6, 5),
                                   SequenceField("genres", "genres", 8, 3, weighted=True)),
                  user_field="user")
