from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.gating import FeatureSelection, InteractionAggregation
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class FinalMLP(CTRModel):
    """FinalMLP (Mao, Zhu, Su, Cai, Li, Dong, "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction",
    AAAI 2023): two MLP streams over the same input, each behind its own feature gate, fused bilinearly:

        x = [e_1, ..., e_F, x_dense]
        x_1, x_2 = g_1 ⊙ x, g_2 ⊙ x,   g_k = 2 sigmoid(MLP_k(b_k))        feature_selection (else x_1 = x_2 = x)
        o_1 = MLP_1(x_1),  o_2 = MLP_2(x_2)
        y = b + w_1^T o_1 + w_2^T o_2 + sum_h o_{1,h}^T W_h o_{2,h}       fusion_heads heads

    See :class:`layers.gating.FeatureSelection` and :class:`layers.gating.InteractionAggregation`.

    Defaults follow the BARS Criteo_x4_001 FinalMLP config (FinalMLP_criteo_x4_001_002_53a37ddd): stream 1
    1000x5 ReLU with dropout 0.2, stream 2 one layer of 500 with dropout 0.1, no batch norm, 50 fusion heads, and
    feature selection off (use_fs false; its gate MLP would be one hidden layer of 1000). The two streams share
    ``activation`` and ``batch_norm`` (both ReLU / off in every BARS config).

    Shapes: x [B, d], d = embedding.output_dim; o_1 [B, hidden_units[-1]], o_2 [B, hidden_units2[-1]];
    logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000),
                 hidden_units2: Sequence[int] = (500,), activation: str = "relu", dropout: float = 0.2,
                 dropout2: float = 0.1, batch_norm: bool = False, fusion_heads: int = 50,
                 feature_selection: bool = False, fs_hidden_units: Sequence[int] = (1000,)) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if not hidden_units or not hidden_units2:
            raise ValueError("FinalMLP needs at least one layer in each stream: hidden_units and hidden_units2 "
                             "must not be empty")
        input_dim = self.embedding.output_dim
        self.select = FeatureSelection(input_dim, embed_dim, fs_hidden_units) if feature_selection else None
        self.mlp1 = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
        self.mlp2 = MLP(input_dim, hidden_units2, activation, dropout2, batch_norm)
        self.fusion = InteractionAggregation(self.mlp1.output_dim, self.mlp2.output_dim, fusion_heads)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, d]
        x1, x2 = self.select(x) if self.select is not None else (x, x)  # [B, d] each
        return self.fusion(self.mlp1(x1), self.mlp2(x2))  # [B, 1]
