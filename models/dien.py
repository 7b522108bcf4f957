from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.mlp import MLP
from layers.sequence import AttentionalGRU, InterestExtractor, auxiliary_loss, target_attention
from models.behaviour import BehaviourModel
from models.registry import register


@register
class DIEN(BehaviourModel):
    r"""DIEN (Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019): a
    GRU extracts an interest state per behaviour, supervised by the auxiliary loss; the candidate's attention
    on those states steers an attentional GRU whose final state is the interest fed to the DNN:

        h_t  = GRU(e_b[t], h_{t-1})                                interest extractor
        a_t  = exp(h_t W e_a) / sum_j exp(h_j W e_a)               over the valid steps (attention="bilinear")
        h'_t = AUGRU(h_t, h'_{t-1}, a_t)                           interest evolving (gru_type)
        y    = MLP([e_1, ..., e_F, s, e_a ⊙ s, h'_T, x_dense])         s = sum_t e_b[t]   (history_sum)
        L    = L_target + alpha * L_aux                            alpha = aux_loss_weight

    Layers: :class:`layers.sequence.InterestExtractor`, :func:`~layers.sequence.auxiliary_loss` (in-batch
    negatives), :class:`~layers.sequence.AttentionalGRU`. ``attention="din"`` scores with the local activation
    unit instead (softmax-normalized, ``attention_units`` / ``attention_activation``).

    Loss: :meth:`loss` adds ``alpha * L_aux`` to the task loss, from the states :meth:`forward` kept (as
    TwoTower does, so that under DDP the auxiliary loss uses the forward that DDP ran: call
    ``ddp_model.module.loss(batch, logits)`` right after ``logits = ddp_model(batch)``). Its negatives come
    from the rank's own batch.

    ``history_sum`` (default on): the sum-pooled history and its product with the candidate join the DNN's
    input, as in the authors' code (mouna99/dien, ``Model_DIN_V2_Gru_Vec_attGru_Neg``).

    Defaults: the paper's AUGRU and bilinear attention; alpha 1 (the authors' code adds the auxiliary loss
    unweighted, the paper leaves alpha open); DNN 200-80 with Dice as DIN here. BARS AmazonElectronics_x1
    (DIEN_amazonelectronics_x1_022) instead uses embedding 64, ``attention="din"`` with Dice 256-128,
    aux_loss_alpha 0, DNN 1024-512-256 ReLU with BN, dropout 0.1, Adam lr 5e-4, embedding L2 0.005.

    Shapes: candidate [B, D_g]; history and states [B, L, D_g]; attention [B, L]; h'_T [B, D_g];
    DNN input [B, other_dim + sum_g D_g]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (200, 80), activation: str = "dice",
                 dropout: float = 0.0, batch_norm: bool = False,
                 gru_type: Literal["AUGRU", "AGRU", "AIGRU"] = "AUGRU",
                 attention: Literal["bilinear", "din"] = "bilinear", attention_units: Sequence[int] = (80, 40),
                 attention_activation: str = "dice", aux_loss_weight: float = 1.0,
                 history_sum: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std, history_sum=history_sum)
        dims = self.behaviour_dims
        self.extractors = nn.ModuleList(InterestExtractor(d) for d in dims)
        self.attention = nn.ModuleList(target_attention(attention, d, attention_units, attention_activation)
                                       for d in dims)
        self.evolving = nn.ModuleList(AttentionalGRU(d, d, gru_type) for d in dims)
        self.dnn = MLP(self.other_dim + sum(dims), hidden_units, activation, dropout, batch_norm, output_dim=1)
        self.aux_loss_weight = aux_loss_weight
        self._aux_inputs: list[tuple[torch.Tensor, ...]] | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, behaviours = self.embed(batch)  # [B, other_dim]; per sequence: [B, D_g], [B, L, D_g], [B, L]
        finals, kept = [], []
        for extract, attend, evolve, (candidate, history, mask) in zip(self.extractors, self.attention,
                                                                        self.evolving, behaviours):
            states = extract(history, mask)  # [B, L, D_g]
            finals.append(evolve(states, attend.weights(candidate, states, mask), mask))  # [B, D_g]
            kept.append((states, history, mask))
        self._aux_inputs = kept
        return self.dnn(torch.cat([x, *finals], dim=1))  # [B, 1]

    def loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Task loss of ``logits = self(batch)`` plus ``aux_loss_weight`` times the auxiliary loss -> scalar."""
        kept, self._aux_inputs = self._aux_inputs, None
        loss = super().loss(batch, logits)
        if not self.aux_loss_weight:
            return loss
        if kept is None or kept[0][0].shape[0] != logits.shape[0]:
            raise RuntimeError("DIEN.loss needs the interest states of the forward pass that produced `logits`: "
                               "call logits = model(batch) right before model.loss(batch, logits)")
        return loss + self.aux_loss_weight * sum(auxiliary_loss(*inputs) for inputs in kept)
