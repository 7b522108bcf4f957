from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.interaction import FactorizationMachine
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class NFM(CTRModel):
    """NFM (He & Chua, "Neural Factorization Machines for Sparse Predictive Analytics", SIGIR 2017,
    sec. 3.1): FM's pairwise term replaced by an MLP over the Bi-Interaction pooling,

        f_BI(V) = sum_{i<j} v_i ⊙ v_j = 1/2 [ (sum_i v_i)^2 - sum_i v_i^2 ]      -> [B, D]
        y       = w_0 + sum_i w_i x_i + h^T MLP(BN(f_BI(V)))

    With ``hidden_units=()`` the MLP is the projection ``h`` alone (NFM-0, an FM with a learned
    weighting of the D dimensions). BN on the Bi-Interaction output follows the paper (it lets the
    tiny initial embeddings reach the MLP at unit scale); in ``dense_mode="vector"`` dense features
    enter through the linear term only, use ``"embed"`` to let them interact.

    Hidden sizes, activation, dropout and MLP BN follow the BARS Criteo_x4_001 NFM config
    (1000 x 3, ReLU, no dropout, no BN in the MLP).

    Shapes: embeddings [B, F, D]; f_BI [B, D]; linear [B, 1]; output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (1000, 1000, 1000),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
                 bi_batch_norm: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.bi_interaction = FactorizationMachine(reduce_sum=False)
        self.bi_norm = nn.BatchNorm1d(embed_dim) if bi_batch_norm else nn.Identity()
        self.dnn = MLP(embed_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        pooled = self.bi_norm(self.bi_interaction(emb))  # [B, D]
        return self.embedding.linear(batch) + self.dnn(pooled)  # [B, 1]
