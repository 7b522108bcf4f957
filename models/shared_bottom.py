from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from layers.multitask import Towers
from models.base import CTRModel
from models.registry import register


@register
class SharedBottom(CTRModel):
    """Shared-Bottom multi-task model: hard parameter sharing (Caruana, "Multitask Learning", Machine
    Learning 28, 1997), the baseline of MMoE (Ma et al., KDD 2018, eq. 1):

        y_k = h^k(f(x)),   f = shared MLP bottom over concat(e_1..e_F),   h^k = tower MLP of task k

    Defaults follow FuxiCTR's SharedBottom config (bottom 512-256-128, towers 128-64, ReLU, no dropout,
    no BN); the papers leave them to tuning.

    Shapes: embeddings [B, F, D]; bottom input [B, F*D (+ dense)]; bottom output [B, H]; logits [B, T],
    one column per label in ``schema.labels`` order.
    """

    multitask = True

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, bottom_units: Sequence[int] = (512, 256, 128),
                 tower_units: Sequence[int] = (128, 64), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.bottom = MLP(self.embedding.output_dim, bottom_units, activation, dropout, batch_norm)
        self.towers = Towers(self.bottom.output_dim, self.num_tasks, tower_units, activation, dropout, batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, F*D (+ dense)]
        return self.towers(self.bottom(x))  # [B, H] -> [B, T]
