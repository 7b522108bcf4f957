"""What every model has: the schema it was built from, the shared embedding, and the tasks it predicts."""
from __future__ import annotations

import torch
from torch import nn

from dataset.schema import Schema
from layers.embedding import FeatureEmbedding


class CTRModel(nn.Module):
    """Base class of every model: ``forward(batch) -> logits [B, T]``; loss and sigmoid live outside.

    Single-task models predict the store's first label (T = 1); multi-task models (``multitask = True``)
    predict every label of the store, one logit column each, in ``schema.labels`` order.

    Args (shared by every model, so train.py sets them the same way for all):
        schema: fields, vocab sizes, dense width and labels, read from the store's metadata.
        embed_dim: D, the embedding size (BARS Criteo_x4 configs use 16).
        dense_mode: ``"vector"`` or ``"embed"``, see :class:`layers.embedding.FeatureEmbedding`.
        embed_init_std: std of the normal init of embedding rows (FuxiCTR's default, 1e-4).
    """

    multitask: bool = False
    embedding_cls: type[FeatureEmbedding] = FeatureEmbedding  # FFM / ONN swap in the field-aware kind

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4) -> None:
        super().__init__()
        self.schema = schema
        self.embedding = self.embedding_cls(schema, embed_dim, dense_mode, embed_init_std)
        self.tasks: tuple[str, ...] = tuple(schema.labels) if self.multitask else tuple(schema.labels[:1])

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
