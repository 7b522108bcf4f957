from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.gating import GatedCrossNet
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register

STRUCTURES = ("parallel", "stacked")


@register
class GDCN(CTRModel):
    """GDCN (Wang, Gu, Li, Lu, Zhang, Gu, "Towards Deeper, Lighter and Interpretable Cross Network for CTR
    Prediction", CIKM 2023): a gated cross network (:class:`layers.gating.GatedCrossNet`) with a DNN, GDCN-P
    (parallel) or GDCN-S (stacked):

        c_0 = [e_1, ..., e_F, x_dense]
        c_{l+1} = c_0 ⊙ (W_l^c c_l + b_l) ⊙ sigmoid(W_l^g c_l) + c_l
        "parallel" (GDCN-P): y = w^T [c_L, DNN(c_0)] + b
        "stacked"  (GDCN-S): y = w^T DNN(c_L) + b

    BARS publishes no GDCN run; defaults follow FuxiCTR's GDCN config template (model_zoo/GDCN, GDCN_default):
    3 gated cross layers, DNN [1024, 512, 256], ReLU, no dropout, no batch norm; parallel, the structure of the
    paper's headline Criteo result. (The template's embedding size is 32; this repo's shared default stays 16.)
    The field-level dimension optimization (FDO) of the paper is not part of this model.

    Shapes: c_0, c_L [B, d], d = embedding.output_dim; DNN output [B, hidden_units[-1]]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, structure: str = "parallel", num_cross_layers: int = 3,
                 hidden_units: Sequence[int] = (1024, 512, 256), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if structure not in STRUCTURES:
            raise ValueError(f"GDCN structure must be one of {STRUCTURES}, got {structure!r}")
        d = self.embedding.output_dim
        self.structure = structure
        self.cross = GatedCrossNet(d, num_cross_layers)
        self.dnn = MLP(d, hidden_units, activation, dropout, batch_norm)
        self.fc = nn.Linear(self.dnn.output_dim + (d if structure == "parallel" else 0), 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c0 = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, d]
        if self.structure == "stacked":
            return self.fc(self.dnn(self.cross(c0)))  # [B, 1]
        return self.fc(torch.cat([self.cross(c0), self.dnn(c0)], dim=1))  # [B, d + hidden_units[-1]] -> [B, 1]
