"""Shared fixtures: a small hand-written schema and random batches in the DESIGN.md batch format."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

torch.set_num_threads(1)

from dataset.schema import Schema, SequenceField  # noqa: E402


def make_batch(schema: Schema, batch_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch: sparse int64 [B, F], dense float32 [B, D], label float32 [B, T] (binary tasks 0/1,
    regression tasks normal), and for a schema with sequences seq int64 [B, L] (zero-padded after random
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
        batch.update(seq=torch.cat(ids, dim=1), seq_len=lens)
        if schema.seq_weight_width:
            batch["seq_weight"] = torch.rand(batch_size, schema.seq_weight_width, generator=g) * 2
    return batch


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
