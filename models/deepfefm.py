from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.factorization import FieldEmbeddedProduct
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class DeepFEFM(CTRModel):
    """DeepFEFM (Pande, "Field-Embedded Factorization Machines for Click-through Rate Prediction", arXiv
    2009.09931, 2020): FEFM's field-pair matrices give one interaction value per field pair, summed into the
    FEFM term and appended to the DNN input:

        r_ij = v_i^T (U_ij + U_ij^T) v_j                                  [B, P]
        y = w_0 + sum_i w_{x_i} + sum_{i<j} r_ij + MLP([v_1, ..., v_F, x_dense, r])

    Defaults are DeepCTR's DeepFEFM (DNN 256-128-64, ReLU, no dropout, no batch norm); BARS has no DeepFEFM
    configuration. ``hidden_units=()`` leaves a single linear layer on ``[v, x_dense, r]``.

    Shapes: embeddings [B, F, D]; interactions [B, P]; DNN input [B, F*D (+ dense) + P]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (256, 128, 64),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.fefm = FieldEmbeddedProduct(self.embedding.num_fields, embed_dim)
        self.dnn = MLP(self.embedding.output_dim + self.fefm.num_pairs, hidden_units, activation, dropout,
                       batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        r = self.fefm(emb)  # [B, P]
        y_fefm = self.embedding.linear(batch) + r.sum(dim=1, keepdim=True)  # [B, 1]
        y_dnn = self.dnn(torch.cat([self.embedding.dnn_input(emb, batch), r], dim=1))  # [B, 1]
        return y_fefm + y_dnn
