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

from dataset.schema import Schema  # noqa: E402


def make_batch(schema: Schema, batch_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch: sparse int64 [B, F], dense float32 [B, D], label float32 [B, T]."""
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, v, (batch_size,), generator=g) for v in schema.vocab_sizes], dim=1)
    dense = torch.rand(batch_size, schema.num_dense, generator=g)
    label = (torch.rand(batch_size, schema.num_tasks, generator=g) < 0.3).float()
    return {"sparse": sparse, "dense": dense, "label": label}


@pytest.fixture
def schema() -> Schema:
    """Single-task schema with sparse and dense fields."""
    return Schema(("C1", "C2", "C3", "C4", "C5"), (7, 11, 3, 50, 5), ("I1", "I2"), ("click",))


@pytest.fixture
def mt_schema() -> Schema:
    """Two-task schema (click, conversion), like an ESMM / MMOE store."""
    return Schema(("C1", "C2", "C3", "C4"), (7, 11, 3, 50), ("I1",), ("click", "conversion"))
