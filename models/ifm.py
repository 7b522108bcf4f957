from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.factorization import FactorEstimatingNetwork, InputAwareFM, field_linear_terms
from models.base import CTRModel
from models.registry import register


@register
class IFM(CTRModel):
    """Input-aware Factorization Machine (Yu, Wang and Yuan, "An Input-aware Factorization Machine for Sparse
    Prediction", IJCAI 2019): a factor estimating network reads every embedding of the row and rescales each
    field's first-order weight and embedding by an input-dependent factor before the FM:

        m_x = F * softmax(P MLP([v_1, ..., v_F]))                  [B, F]
        y = w_0 + sum_i m_{x,i} w_{x_i} + sum_{i<j} <m_{x,i} v_i, m_{x,j} v_j>

    The factor network reads the embedded fields only (raw dense features in ``"vector"`` mode enter the
    unscaled linear term), as in DeepCTR's IFM. Defaults are DeepCTR's (factor MLP 256-128, ReLU, no dropout,
    no batch norm); BARS has no IFM configuration.

    Shapes: embeddings [B, F, D]; factors [B, F]; per-field first-order terms [B, F]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (256, 128),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.fen = FactorEstimatingNetwork(self.embedding.num_fields, embed_dim, hidden_units, activation, dropout,
                                           batch_norm)
        self.ifm = InputAwareFM()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        terms, rest = field_linear_terms(self.embedding, batch)  # [B, F], [B, 1]
        return self.ifm(emb, self.fen(emb), terms, rest)  # [B, 1]
