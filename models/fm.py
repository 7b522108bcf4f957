from __future__ import annotations

import torch

from dataset.schema import Schema
from layers.interaction import FactorizationMachine
from models.base import CTRModel
from models.registry import register


@register
class FM(CTRModel):
    """Factorization Machine (Rendle, "Factorization Machines", ICDM 2010, eq. 1):

        y = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j

    Pure interaction model: use ``dense_mode="embed"`` for dense features to join the pairwise term (in
    ``"vector"`` mode they only enter the linear term). No hyperparameters of its own; BARS Criteo_x4_001
    uses embed_dim 16.

    Shapes: embeddings [B, F, D]; linear and FM terms [B, 1]; output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.fm = FactorizationMachine()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        return self.embedding.linear(batch) + self.fm(emb)  # [B, 1]
