from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.interaction import CIN
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class xDeepFM(CTRModel):
    """xDeepFM (Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender
    Systems", KDD 2018): a linear term, a Compressed Interaction Network and a DNN, summed:

        y = w_linear^T a + w_cin^T p^+ + MLP([e_1, ..., e_F, x_dense])

    where ``p^+`` is the sum-pooled output of every CIN layer (:class:`layers.interaction.CIN`). Defaults
    follow the BARS Criteo_x4_001 xDeepFM config: CIN 64-64-64 without split-half (FuxiCTR's CIN),
    DNN 1000x5, ReLU, dropout 0.2, no BN.

    Shapes: embeddings [B, F, D]; CIN output [B, sum of layer sizes]; DNN input [B, F*D (+ dense)];
    logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, cin_layer_sizes: Sequence[int] = (64, 64, 64),
                 cin_split_half: bool = False, hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000),
                 activation: str = "relu", dropout: float = 0.2, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.cin = CIN(self.embedding.num_fields, cin_layer_sizes, cin_split_half)
        self.cin_fc = nn.Linear(self.cin.output_dim, 1)
        self.dnn = MLP(self.embedding.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        y_cin = self.cin_fc(self.cin(emb))  # [B, 1]
        y_dnn = self.dnn(self.embedding.dnn_input(emb, batch))  # [B, 1]
        return self.embedding.linear(batch) + y_cin + y_dnn
