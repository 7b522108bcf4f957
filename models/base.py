"""What every model has: the schema it was built from, the shared embedding, the tasks it predicts, its loss."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dataset.schema import Schema
from layers.embedding import FeatureEmbedding


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: torch.Tensor,
              weights: torch.Tensor) -> torch.Tensor:
    """``sum_t w_t * mean_b loss_t(logits[b, t], labels[b, t])`` with BCE-with-logits for binary tasks and
    squared error for regression tasks (``regression`` bool [T]); logits, labels [B, T], weights [T] -> scalar."""
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # [B, T]
    per_task = torch.where(regression, (logits - labels).square(), bce).mean(dim=0)  # [T]
    return (per_task * weights).sum()


class CTRModel(nn.Module):
    """Base class of every model: ``forward(batch) -> logits [B, T]``; the sigmoid lives outside (binary
    tasks), regression tasks output their prediction directly.

    Single-task models predict the store's first label (T = 1); multi-task models (``multitask = True``)
    predict every label of the store, one logit column each, in ``schema.labels`` order.

    :meth:`loss` is the training loss of a forward pass: per-task BCE or squared error, weighted by
    :meth:`set_task_weights` (the trainer's ``--task_weights``). A model whose paper changes the loss
    overrides it (TwoTower's in-batch softmax; DIEN adds its auxiliary loss).

    Args (shared by every model, so train.py sets them the same way for all):
        schema: fields, vocab sizes, dense width, labels and task types, read from the store's metadata.
        embed_dim: D, the embedding size (BARS Criteo_x4 configs use 16).
        dense_mode: ``"vector"`` or ``"embed"``, see :class:`layers.embedding.FeatureEmbedding`.
        embed_init_std: std of the normal init of embedding rows (FuxiCTR's default, 1e-4).
    """

    multitask: bool = False
    needs_sequences: bool = False  # True: attends over behaviour histories (models/behaviour.py)
    embedding_cls: type[FeatureEmbedding] = FeatureEmbedding  # FFM / ONN swap in the field-aware kind

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4) -> None:
        super().__init__()
        self.schema = schema
        self.embedding = self.embedding_cls(schema, embed_dim, dense_mode, embed_init_std)
        self.tasks: tuple[str, ...] = tuple(schema.labels) if self.multitask else tuple(schema.labels[:1])
        self.task_types: tuple[str, ...] = tuple(schema.task_types[: self.num_tasks])
        regression = torch.tensor([t == "regression" for t in self.task_types])
        self.register_buffer("regression", regression, persistent=False)  # bool [T]
        self.register_buffer("task_weights", torch.ones(self.num_tasks), persistent=False)  # [T]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def set_task_weights(self, weights: Sequence[float]) -> None:
        """One loss weight per task of this model."""
        if len(weights) != self.num_tasks:
            raise ValueError(f"{type(self).__name__} predicts {self.num_tasks} task(s) {list(self.tasks)}, "
                             f"got {len(weights)} weights; pass one weight per task")
        self.task_weights.copy_(torch.as_tensor(weights, dtype=self.task_weights.dtype))

    def loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Training loss of ``logits = self(batch)`` [B, T] -> scalar."""
        return task_loss(logits, batch["label"][:, : self.num_tasks], self.regression, self.task_weights)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
