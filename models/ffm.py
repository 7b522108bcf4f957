from __future__ import annotations

import torch

from dataset.schema import Schema
from layers.field_aware import FieldAwareEmbedding
from models.base import CTRModel
from models.registry import register


@register
class FFM(CTRModel):
    """Field-aware Factorization Machine (Juan et al., "Field-aware Factorization Machines for CTR
    Prediction", RecSys 2016, eq. 3, plus the usual linear term):

        y = w_0 + sum_i w_i x_i + sum_{i<j} <v_{i, f_j}, v_{j, f_i}> x_i x_j

    ``self.embedding`` is a :class:`layers.field_aware.FieldAwareEmbedding` (F vectors of size D per
    feature, one table), which also provides the linear term and the L2 penalty. Pure interaction model:
    use ``dense_mode="embed"`` for dense features to join the pairwise term. BARS Criteo_x4_001 trains FFM
    with ``embed_dim=4`` (the table is [sum(vocab), F*D], so D drives memory).

    Shapes: field-aware embeddings [B, F, F, D]; pair products [B, F(F-1)/2]; output logits [B, 1].
    """

    embedding_cls = FieldAwareEmbedding

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pairs = self.embedding.inner_products(self.embedding(batch))  # [B, P]
        return self.embedding.linear(batch) + pairs.sum(dim=1, keepdim=True)  # [B, 1]
