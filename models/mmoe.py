from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.multitask import MultiGateMixture, Towers
from models.base import CTRModel
from models.registry import register


@register
class MMoE(CTRModel):
    """Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task Learning with
    Multi-gate Mixture-of-Experts", KDD 2018), eqs. 6-8, over the shared embedding:

        y_k = h^k(f^k(x)),   f^k(x) = sum_{i=1..n} g^k(x)_i f_i(x),   g^k(x) = softmax(W_gk x)

    with ``x = concat(e_1..e_F)``, ``n`` experts ``f_i`` (MLPs), one gate ``g^k`` and one tower ``h^k``
    per task; T = ``schema.num_tasks`` (any T >= 1).

    Defaults: 8 experts as in the paper; its census-income sizes were tuned per run and not listed, so
    the expert and tower widths come from the census-income replication the shared census sample is taken
    from (drawbridge/keras-mmoe ``census_income_demo.py``: single-layer experts of 4 units, towers of 8
    ReLU units). Linear gates (``gate_units=()``) as in eq. 8. For Criteo-scale inputs, wider experts
    (FuxiCTR: ``--expert_units 512,256,128 --tower_units 128,64``) are the usual choice.

    Shapes: embeddings [B, F, D]; expert input [B, F*D (+ dense)]; experts [B, n, H]; gates [T, B, n];
    mixtures [T, B, H]; logits [B, T] in ``schema.labels`` order.
    """

    multitask = True

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, num_experts: int = 8, expert_units: Sequence[int] = (4,),
                 gate_units: Sequence[int] = (), tower_units: Sequence[int] = (8,), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.mmoe = MultiGateMixture(self.embedding.output_dim, self.num_tasks, num_experts, expert_units,
                                     gate_units, activation, dropout, batch_norm)
        self.towers = Towers(self.mmoe.output_dim, self.num_tasks, tower_units, activation, dropout, batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mixtures, _ = self.mmoe(self._input(batch))  # [T, B, H]
        return self.towers(mixtures)  # [B, T]

    def gate_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each task's softmax weights over the experts -> [T, B, n]."""
        return self.mmoe(self._input(batch))[1]

    def _input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding.dnn_input(self.embedding(batch), batch)  # [B, F*D (+ dense)]
