from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.cross import CrossNet
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class DCN(CTRModel):
    """Deep & Cross Network (Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017):
    a cross network (eq. 3) and a DNN run in parallel on the same input and are combined (eq. 5):

        x_0 = [e_1, ..., e_F, x_dense]
        x_{l+1} = x_0 * (x_l^T w_l) + b_l + x_l                  (cross network, L layers)
        h = MLP(x_0)
        y = w_out^T [x_L, h] + b_out

    Defaults follow the BARS Criteo_x4_001 DCN config: 4 cross layers, DNN 1000x5, ReLU, dropout 0.2, no BN.

    Shapes: x_0 [B, d] with d = embedding.output_dim; x_L [B, d]; h [B, hidden_units[-1]]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, num_cross_layers: int = 4,
                 hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000), activation: str = "relu",
                 dropout: float = 0.2, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        input_dim = self.embedding.output_dim
        self.cross = CrossNet(input_dim, num_cross_layers)
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
        self.fc = nn.Linear(input_dim + self.dnn.output_dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, d]
        return self.fc(torch.cat([self.cross(x0), self.dnn(x0)], dim=1))  # [B, 1]
