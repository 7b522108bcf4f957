from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.cross import CrossNetMix, CrossNetV2
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register

STRUCTURES = ("parallel", "stacked", "crossnet_only")


@register
class DCNv2(CTRModel):
    """DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
    Learning to Rank Systems", WWW 2021):

        x_0 = [e_1, ..., e_F, x_dense]
        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                     (low_rank = 0: full-rank CrossNetV2)
        x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l                    (low_rank = r > 0: DCN-Mix, num_experts experts)
        structure "parallel":      y = w^T [x_L, MLP(x_0)] + b
        structure "stacked":       y = w^T MLP(x_L) + b
        structure "crossnet_only": y = w^T x_L + b

    Defaults follow the best BARS Criteo_x4_001 DCNv2 config (DCNv2_criteo_x4_001_005): parallel, 3 cross
    layers, full rank (use_low_rank_mixture: false; its mixture settings are low_rank 32, 4 experts),
    DNN 1000x5, ReLU, dropout 0.1, batch norm. BARS uses 500x3 for the DNN of the stacked structure.

    Shapes: x_0 and x_L [B, d] with d = embedding.output_dim; DNN output [B, hidden_units[-1]]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, num_cross_layers: int = 3, structure: str = "parallel",
                 low_rank: int = 0, num_experts: int = 4,
                 hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000), activation: str = "relu",
                 dropout: float = 0.1, batch_norm: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if structure not in STRUCTURES:
            raise ValueError(f"DCNv2 structure must be one of {STRUCTURES}, got {structure!r}")
        if low_rank < 0 or num_experts < 1:
            raise ValueError(f"DCNv2 needs low_rank >= 0 (0 = full rank) and num_experts >= 1, "
                             f"got low_rank={low_rank}, num_experts={num_experts}")
        input_dim = self.embedding.output_dim
        self.structure = structure
        self.cross = (CrossNetMix(input_dim, num_cross_layers, low_rank, num_experts) if low_rank
                      else CrossNetV2(input_dim, num_cross_layers))
        self.dnn = None
        head_dim = input_dim
        if structure != "crossnet_only":
            self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
            head_dim = self.dnn.output_dim + (input_dim if structure == "parallel" else 0)
        self.fc = nn.Linear(head_dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, d]
        out = self.cross(x0)  # x_L: [B, d]
        if self.structure == "parallel":
            out = torch.cat([out, self.dnn(x0)], dim=1)  # [B, d + hidden_units[-1]]
        elif self.structure == "stacked":
            out = self.dnn(out)  # [B, hidden_units[-1]]
        return self.fc(out)  # [B, 1]
