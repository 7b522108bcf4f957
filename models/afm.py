from __future__ import annotations

import torch
from torch import nn

from dataset.schema import Schema
from layers.interaction import AttentionalPooling
from models.base import CTRModel
from models.registry import register


@register
class AFM(CTRModel):
    """Attentional Factorization Machine (Xiao et al., "Attentional Factorization Machines: Learning the
    Weight of Feature Interactions via Attention Networks", IJCAI 2017):

        a_{ij} = softmax_{(i,j)} h^T ReLU(W (v_i ⊙ v_j) x_i x_j + b)
        y = w_0 + sum_i w_i x_i + p^T sum_{i<j} a_{ij} (v_i ⊙ v_j) x_i x_j

    Pure interaction model: use ``dense_mode="embed"`` for dense features to join the pairs. Defaults follow
    the BARS Criteo_x4_001 AFM config: attention_dim 16, no dropout (attention_dropout [0, 0]).

    Shapes: embeddings [B, F, D]; pair products [B, F(F-1)/2, D]; pooled f_Att [B, D]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, attention_dim: int = 16, dropout: float = 0.0) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.afm = AttentionalPooling(self.embedding.num_fields, embed_dim, attention_dim, dropout)
        self.p = nn.Linear(embed_dim, 1, bias=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        f_att = self.afm(self.embedding(batch))  # [B, D]
        return self.embedding.linear(batch) + self.p(f_att)  # [B, 1]

    def attention(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """AFM's attention weights a_{ij} over field pairs (DeepCTR FAQ 3), from the very module forward
        uses -> (weights [B, P], each row summing to 1; the pairs (field_i, field_j) as embedding field
        numbers, i < j, in weight column order)."""
        _, weights = self.afm.attend(self.embedding(batch))  # [B, P]
        rows, cols = self.afm.pairs.rows.tolist(), self.afm.pairs.cols.tolist()
        return weights, list(zip(rows, cols))
