from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class WDL(CTRModel):
    """Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016, eq. 3):
    a linear model and a DNN trained jointly, their logits summed,

        y = w_wide^T x + b  +  MLP(concat(e_1 .. e_F))

    The wide part is the shared first-order term (one weight per sparse id, plus dense weights), i.e.
    the paper's wide model without hand-crafted cross-product transformations.

    Defaults follow the BARS Criteo_x4_001 WideDeep config (hidden 1000 x 5, ReLU, dropout 0.2, no BN).

    Shapes: embeddings [B, F, D]; wide [B, 1]; DNN input [B, F*D (+ dense)]; output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000),
                 activation: str = "relu", dropout: float = 0.2, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.dnn = MLP(self.embedding.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        y_wide = self.embedding.linear(batch)  # [B, 1]
        y_deep = self.dnn(self.embedding.dnn_input(emb, batch))  # [B, 1]
        return y_wide + y_deep
