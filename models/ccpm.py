from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.conv import CCPMConv
from models.base import CTRModel
from models.registry import register


@register
class CCPM(CTRModel):
    """CCPM (Liu, Yu, Wu and Wang, "A Convolutional Click Prediction Model", CIKM 2015): the embedding
    matrix is a sequence of F field vectors; stacked wide convolutions along the fields, each followed by
    flexible p-max pooling and tanh (:class:`layers.conv.CCPMConv`), feed one output layer:

        s^0 = [e_1, ..., e_F];   s^i = tanh(pmax_{p_i}(Conv_{w_i}(s^{i-1}))),   i = 1..l
        p_i = max(3, (1 - (i/l)^(l-i)) F) for i < l,   p_l = 3
        logit = w^T [vec(s^l), x_dense] + b

    In ``dense_mode="vector"`` the raw dense vector joins the output layer.

    Defaults follow the BARS Criteo_x4_001 CCPM config (CCPM_criteo_x4_008_9b98f944): channels 64-128-256,
    kernel heights 7-5-3, tanh (also embedding L2 1e-5, batch 10000, lr 1e-3).

    Shapes: embeddings [B, F, D]; layer i: [B, C_i, p_i, D]; output layer input [B, C_l*3*D (+ dense)];
    logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, channels: Sequence[int] = (64, 128, 256),
                 kernel_heights: Sequence[int] = (7, 5, 3), activation: str = "tanh") -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.conv = CCPMConv(self.embedding.num_fields, embed_dim, channels, kernel_heights, activation)
        self.fc = nn.Linear(self.conv.output_dim + self.embedding.dense_dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.conv(self.embedding(batch))  # [B, C_l, p_l, D]
        flat = out.flatten(start_dim=1)
        if self.embedding.dense_dim:
            flat = torch.cat([flat, batch["dense"]], dim=1)  # [B, C_l*p_l*D + dense]
        return self.fc(flat)  # [B, 1]
