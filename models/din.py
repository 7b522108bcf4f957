from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.mlp import MLP
from layers.sequence import LocalActivationUnit
from models.behaviour import BehaviourModel
from models.registry import register


@register
class DIN(BehaviourModel):
    r"""DIN (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018): the user's
    interest is a sum of the history weighted by the local activation unit, a different vector for every
    candidate (eq. 3), fed to the DNN with the other fields:

        v_U(A) = sum_j a(e_j, v_A) e_j,   a(e_j, v_A) = MLP([v_A, e_j, v_A - e_j, v_A ⊙ e_j])   (not normalized)
        y      = MLP([e_1, ..., e_F, s, v_A ⊙ s, v_U(A), x_dense]),   s = sum_j e_j   (s, v_A ⊙ s: history_sum)

    ``v_A``: the candidate's fields concatenated (item ⊕ category), ``e_j``: the j-th behaviour likewise
    (:class:`models.behaviour.BehaviourModel`); one unit per behaviour sequence of the store.

    ``history_sum`` (default on) adds the sum-pooled history and its product with the candidate to the DNN's
    input, as the authors' code does (mouna99/dien ``Model_DIN``; the DIN repository points there): without
    them the DNN must learn the candidate-history match from a concatenation, which an MLP does poorly.

    Defaults: the paper's DNN (its MLP 192 x 200 x 80 x 2: hidden 200-80) with Dice and unnormalized
    weights; the unit's MLP 80-40 with Dice as the authors' code and DeepCTR. BARS AmazonElectronics_x1
    (DIN_amazonelectronics_x1_015) instead uses embedding 64, attention 512-256 Dice with softmax
    (``attention_softmax``), DNN 1024-512-256 Dice with BN, dropout 0.1, Adam lr 5e-4, embedding L2 0.005.

    Shapes: candidate [B, D_g]; history [B, L, D_g]; interest [B, D_g]; DNN input [B, other_dim + sum_g D_g];
    logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (200, 80), activation: str = "dice",
                 dropout: float = 0.0, batch_norm: bool = False, attention_units: Sequence[int] = (80, 40),
                 attention_activation: str = "dice", attention_softmax: bool = False,
                 history_sum: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std, history_sum=history_sum)
        self.attention = nn.ModuleList(LocalActivationUnit(d, attention_units, attention_activation, attention_softmax)
                                       for d in self.behaviour_dims)
        self.dnn = MLP(self.other_dim + sum(self.behaviour_dims), hidden_units, activation, dropout, batch_norm,
                       output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, behaviours = self.embed(batch)  # [B, other_dim]; per sequence: [B, D_g], [B, L, D_g], [B, L]
        interests = [unit(candidate, history, mask) for unit, (candidate, history, mask)
                     in zip(self.attention, behaviours)]  # [B, D_g] each
        return self.dnn(torch.cat([x, *interests], dim=1))  # [B, 1]
