from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.interaction import FactorizationMachine
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class DeepFM(CTRModel):
    """DeepFM (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction",
    IJCAI 2017): an FM and a DNN share one embedding and their outputs are summed (eq. 1):

        y = y_FM + y_DNN,   y_FM = <w, x> + sum_{i<j} <V_i, V_j> x_i x_j,   y_DNN = MLP(concat(e_1..e_F))

    Defaults: the paper's Criteo network (hidden 400-400-400, ReLU), without its dropout 0.5 (set --dropout).
    The BARS Criteo_x4_001 configuration (1000 x 5, dropout 0.2, embedding L2) is the preset
    DeepFM_criteo_x4_001 in models/presets.py.

    Shapes: embeddings [B, F, D]; FM [B, 1]; DNN input [B, F*D (+ dense)]; output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (400, 400, 400),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.fm = FactorizationMachine()
        self.dnn = MLP(self.embedding.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        y_fm = self.embedding.linear(batch) + self.fm(emb)  # [B, 1]
        y_dnn = self.dnn(self.embedding.dnn_input(emb, batch))  # [B, 1]
        return y_fm + y_dnn
