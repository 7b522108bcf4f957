from __future__ import annotations

import torch

from dataset.schema import Schema
from models.base import CTRModel
from models.registry import register


@register
class LR(CTRModel):
    """Logistic regression, the first-order baseline (e.g. Richardson et al., "Predicting Clicks: Estimating
    the Click-Through Rate for New Ads", WWW 2007):

        y = b + sum_i w_{x_i} + <w_dense, x_dense>

    Only :meth:`layers.embedding.FeatureEmbedding.linear` is used (no embedding vectors, so ``embed_dim``
    has no effect); no hyperparameters of its own.

    Shapes: batch -> output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding.linear(batch)  # [B, 1]
