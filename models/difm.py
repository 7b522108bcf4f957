from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.factorization import DualFactorEstimatingNetwork, InputAwareFM, field_linear_terms
from models.base import CTRModel
from models.registry import register


@register
class DIFM(CTRModel):
    """Dual Input-aware Factorization Machine (Lu, Yu, Chang, Wang, Li and Yuan, "A Dual Input-aware
    Factorization Machine for CTR Prediction", IJCAI 2020): IFM whose factors come from two networks, a
    vector-wise one (multi-head self-attention with a residual connection) and a bit-wise one (an MLP):

        m_x = P_vec flatten(SelfAttention([v_1..v_F])) + P_bit MLP([v_1..v_F])      [B, F]
        y = w_0 + sum_i m_{x,i} w_{x_i} + sum_{i<j} <m_{x,i} v_i, m_{x,j} v_j>

    See :class:`layers.factorization.DualFactorEstimatingNetwork`; the attention has ``num_heads`` heads of
    width ``embed_dim / num_heads`` (so ``embed_dim`` must be divisible by it). Defaults are DeepCTR's (4 heads,
    residual, scaled scores, MLP 256-128, ReLU, no dropout, no batch norm); BARS has no DIFM configuration.

    Shapes: embeddings [B, F, D]; attention output [B, F, D]; factors [B, F]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, num_heads: int = 4, use_residual: bool = True,
                 use_scale: bool = True, hidden_units: Sequence[int] = (256, 128), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.fen = DualFactorEstimatingNetwork(self.embedding.num_fields, embed_dim, num_heads, use_residual,
                                               use_scale, hidden_units, activation, dropout, batch_norm)
        self.ifm = InputAwareFM()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        terms, rest = field_linear_terms(self.embedding, batch)  # [B, F], [B, 1]
        return self.ifm(emb, self.fen(emb), terms, rest)  # [B, 1]
