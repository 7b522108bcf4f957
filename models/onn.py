from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.field_aware import FieldAwareEmbedding
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class ONN(CTRModel):
    """Operation-aware Neural Network (Yang et al., "Operation-aware Neural Networks for User Response
    Prediction", Neural Networks 2020, arXiv 2019): every feature has one embedding per operation, a *copy*
    embedding ``v_{i, f_i}`` and, for the inner product with each other field ``j``, an operation-aware
    embedding ``v_{i, f_j}``; all F of them come from one :class:`layers.field_aware.FieldAwareEmbedding`
    (FuxiCTR's ONNv2 layout):

        p_{ij} = <v_{i, f_j}, v_{j, f_i}>                                for every pair i < j
        y = MLP([v_{1, f_1}, ..., v_{F, f_F}, x_dense, p_{12}, ..., p_{F-1,F}])

    Defaults follow the BARS Criteo_x4_001 ONN config: DNN 1000x3, ReLU, dropout 0.4, no BN; that config
    uses ``embed_dim=8`` (the table is [sum(vocab), F*D], so D drives memory).

    Shapes: field-aware embeddings [B, F, F, D]; copy embeddings [B, F, D]; products [B, F(F-1)/2];
    DNN input [B, F*D (+ dense) + F(F-1)/2]; logits [B, 1].
    """

    embedding_cls = FieldAwareEmbedding

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (1000, 1000, 1000),
                 activation: str = "relu", dropout: float = 0.4, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.dnn = MLP(self.embedding.output_dim + self.embedding.num_pairs, hidden_units, activation, dropout,
                       batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        field_emb = self.embedding(batch)  # [B, F, F, D]
        copy = self.embedding.dnn_input(self.embedding.own_field(field_emb), batch)  # [B, F*D (+ dense)]
        products = self.embedding.inner_products(field_emb)  # [B, P]
        return self.dnn(torch.cat([copy, products], dim=1))  # [B, 1]
