from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from layers.product import SENET, BilinearInteraction
from models.base import CTRModel
from models.registry import register


@register
class FiBiNET(CTRModel):
    """FiBiNET (Huang et al., "FiBiNET: Combining Feature Importance and Bilinear feature Interaction
    for Click-Through Rate Prediction", RecSys 2019, sec. 3):

        V = SENET(E)                                   re-weighted embeddings, E = [e_1 .. e_F]
        p = Bilinear_p(E),  q = Bilinear_q(V)          p_ij = (e_i W_ij) ⊙ e_j, both [B, P, D]
        y = w_0 + sum_i w_i x_i + MLP(concat(p, q))

    The two Bilinear-Interaction layers have their own weights, one per branch as drawn in the paper's
    Figure 1; see :class:`layers.product.BilinearInteraction` for the three ``bilinear_type`` forms.

    Defaults follow the BARS Criteo_x4_001 FiBiNET config (bilinear_type field_interaction,
    reduction_ratio 3, hidden 2000 x 3, ReLU, no dropout, no BN).

    Shapes: embeddings [B, F, D]; p, q [B, F(F-1)/2, D]; DNN input [B, F(F-1)*D (+ dense)];
    output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, bilinear_type: str = "field_interaction",
                 reduction_ratio: int = 3, hidden_units: Sequence[int] = (2000, 2000, 2000),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        num_fields = self.embedding.num_fields
        self.senet = SENET(num_fields, reduction_ratio)
        self.bilinear_p = BilinearInteraction(num_fields, embed_dim, bilinear_type)
        self.bilinear_q = BilinearInteraction(num_fields, embed_dim, bilinear_type)
        input_dim = 2 * self.bilinear_p.num_pairs * embed_dim + self.embedding.dense_dim
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        p = self.bilinear_p(emb)  # [B, P, D]
        q = self.bilinear_q(self.senet(emb))  # [B, P, D]
        combined = self.embedding.dnn_input(torch.cat([p, q], dim=1), batch)  # [B, 2*P*D (+ dense)]
        return self.embedding.linear(batch) + self.dnn(combined)  # [B, 1]
