from __future__ import annotations

import torch
from torch import nn

from dataset.schema import Schema
from layers.graph import AttentionalScoring, FiGNNLayer
from models.base import CTRModel
from models.registry import register


@register
class FiGNN(CTRModel):
    """FiGNN (Li, Cui, Wu, Zhang and Wang, "Fi-GNN: Modeling Feature Interactions via Graph Neural Networks
    for CTR Prediction", CIKM 2019): the fields are the nodes of a fully connected graph with attentional
    edge weights, a gated graph neural network propagates their states, an attentional layer scores them
    (:mod:`layers.graph`):

        A_ij = softmax_{j != i} LeakyReLU(w^T [e_i ; e_j])
        h^0 = e;  h^t = GRU(W_in sum_j A_ij W_out^j h_j^{t-1} + b_p, h^{t-1}) + e,   t = 1..T
        logit = sum_i sigmoid(W_2 vec(h^T))_i * w_1^T h_i^T          (+ <w_dense, x_dense> in "vector" mode)

    As in FuxiCTR (whose run BARS reports), the initial node states are the embeddings themselves (the
    paper first passes them through a multi-head self-attention layer). In ``dense_mode="vector"`` the raw
    dense vector adds a linear term to the logit (the graph holds the embedded fields only).

    Defaults follow the BARS Criteo_x4_001 FiGNN config (FiGNN_criteo_x4_006_097e8622): 4 propagation
    steps, GRU update, residual, one weight set per step (also embedding L2 1e-5, batch 10000, lr 1e-3).

    Shapes: embeddings and node states [B, F, D]; edge weights [B, F, F]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, gnn_layers: int = 4, use_gru: bool = True,
                 use_residual: bool = True, reuse_graph_layer: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        num_fields = self.embedding.num_fields
        self.gnn = FiGNNLayer(num_fields, embed_dim, gnn_layers, use_gru, use_residual, reuse_graph_layer)
        self.scoring = AttentionalScoring(num_fields, embed_dim)
        dense_dim = self.embedding.dense_dim
        self.dense_fc = nn.Linear(dense_dim, 1, bias=False) if dense_dim else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.gnn(self.embedding(batch))  # [B, F, D]
        logit = self.scoring(h)  # [B, 1]
        return logit + self.dense_fc(batch["dense"]) if self.dense_fc is not None else logit
