from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.higher_order import EulerInteraction
from models.base import CTRModel
from models.registry import register


@register
class EulerNet(CTRModel):
    """EulerNet (Tian, Bai, Zhao, Wen and Cao, "EulerNet: Adaptive Feature Interaction Learning via Euler's
    Formula for CTR Prediction", SIGIR 2023): each embedding becomes a complex vector by Euler's formula,
    stacked Euler interaction layers learn explicit interactions of arbitrary order (linear in the
    log-modulus and phase) plus implicit ones (:class:`layers.higher_order.EulerInteraction`):

        z_j = mu_j e^{i e_j} = mu_j cos(e_j) + i mu_j sin(e_j)        mu [F] learned, starts at 1
        (r^l, p^l) = EulerInteraction_l(r^{l-1}, p^{l-1}),  l = 1..L,  N_l = euler_units[l-1] vectors
        logit = w^T vec(r^L + p^L) + b                   (+ <w_dense, x_dense> in "vector" mode)

    BARS publishes no EulerNet run; the defaults follow the authors' FuxiCTR model-zoo Criteo run
    (EulerNet_criteo.log, Criteo with the x4 split, test AUC 0.814693): two layers of 20 vectors
    (``shape: [20, 20]``; its model_config.yaml lists [39, 39]), dropout 0.1 on both parts, layer norm
    (also embedding L2 1e-5, batch 10000, lr 1e-3).

    Shapes: embeddings [B, F, D]; layer l: two [B, N_l, D]; output layer input [B, N_L*D (+ dense)]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, euler_units: Sequence[int] = (20, 20), ex_dropout: float = 0.1,
                 im_dropout: float = 0.1, layer_norm: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if not euler_units:
            raise ValueError("EulerNet euler_units must list at least one layer size, got none")
        sizes = [self.embedding.num_fields, *euler_units]
        self.mu = nn.Parameter(torch.ones(self.embedding.num_fields, 1))  # [F, 1]
        self.layers = nn.Sequential(*(EulerInteraction(n_in, n_out, embed_dim, layer_norm, ex_dropout, im_dropout)
                                      for n_in, n_out in zip(sizes[:-1], sizes[1:])))
        self.fc = nn.Linear(sizes[-1] * embed_dim + self.embedding.dense_dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        r, p = self.layers((self.mu * torch.cos(emb), self.mu * torch.sin(emb)))  # two [B, N_L, D]
        return self.fc(self.embedding.dnn_input(r + p, batch))  # [B, N_L*D (+ dense)] -> [B, 1]
