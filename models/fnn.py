from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class FNN(CTRModel):
    """FNN (Zhang et al., "Deep Learning over Multi-field Categorical Data: A Case Study on User Response
    Prediction", ECIR 2016): a DNN over the concatenated field embeddings,

        z = concat(e_1 .. e_F),   y = MLP(z)

    The paper initializes the embeddings from a pre-trained FM; that pre-training stage is out of scope
    here: embeddings are trained end to end from the shared random init (the usual "DNN" baseline).

    Defaults follow the BARS Criteo_x4_001 DNN config (hidden 1000 x 5, ReLU, dropout 0.2, no BN).

    Shapes: embeddings [B, F, D]; DNN input [B, F*D (+ dense)]; output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000),
                 activation: str = "relu", dropout: float = 0.2, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.dnn = MLP(self.embedding.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        return self.dnn(self.embedding.dnn_input(emb, batch))  # [B, 1]
