from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.multitask import CGC, ExtractionOutput, Towers
from models.base import CTRModel
from models.registry import register


@register
class PLE(CTRModel):
    """Progressive Layered Extraction (Tang et al., "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020), eqs. 2-7:

        level j = 1..N (CGC):  g^(k,j) = w^(k,j)(g^(k,j-1)) S^(k,j),   S^(k,j) = [task-k experts, shared experts]
                               g^(s,j) = w^(s,j)(g^(s,j-1)) [all experts]        (levels j < N only)
        y_k = t^k(g^(k,N)),    g^(k,0) = g^(s,0) = concat(e_1..e_F)

    Each task's experts and gate read that task's previous-level output; the shared experts and the
    shared gate read the shared one. ``num_levels=1`` is CGC alone.

    Defaults: FuxiCTR's PLE config (8 shared + 1 specific expert per task, experts 512-256-128, towers
    128-64, ReLU), linear gates as in eq. 3, and 2 levels (FuxiCTR's 1 level is plain CGC; two are the
    smallest progressive stack).

    Shapes: embeddings [B, F, D]; level input [B, F*D (+ dense)], then [T+1, B, H]; last level [T, B, H];
    logits [B, T] in ``schema.labels`` order.
    """

    multitask = True

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, num_levels: int = 2, num_shared_experts: int = 8,
                 num_specific_experts: int = 1, expert_units: Sequence[int] = (512, 256, 128),
                 gate_units: Sequence[int] = (), tower_units: Sequence[int] = (128, 64), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if num_levels < 1 or not expert_units:
            raise ValueError(f"PLE needs num_levels >= 1 and at least one expert layer; got num_levels={num_levels}, "
                             f"expert_units={tuple(expert_units)} (set --num_levels / --expert_units)")
        width = expert_units[-1]
        self.levels = nn.ModuleList(
            CGC(self.embedding.output_dim if j == 0 else width, self.num_tasks, num_specific_experts,
                num_shared_experts, expert_units, gate_units, activation, dropout, batch_norm,
                shared_gate=j < num_levels - 1)
            for j in range(num_levels))
        self.towers = Towers(width, self.num_tasks, tower_units, activation, dropout, batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.towers(self.extract(batch)[-1].outputs)  # [T, B, H] -> [B, T]

    def extract(self, batch: dict[str, torch.Tensor]) -> list[ExtractionOutput]:
        """Every level's outputs and gate weights (see :class:`layers.multitask.ExtractionOutput`)."""
        h = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, F*D (+ dense)]
        levels = []
        for level in self.levels:
            levels.append(level(h))
            h = levels[-1].outputs  # [T + 1, B, H], or [T, B, H] after the last level
        return levels
