from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.higher_order import LogarithmicTransform
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class AFN(CTRModel):
    """AFN (Cheng, Shen and Huang, "Adaptive Factorization Network: Learning Adaptive-Order Feature
    Interactions", AAAI 2020): a layer of logarithmic neurons learns cross features of arbitrary (real)
    order, an MLP learns from them (:class:`layers.higher_order.LogarithmicTransform`):

        y_j = exp( sum_i w_{j,i} ln |e_i| ) = prod_i |e_i|^{w_{j,i}}      elementwise, j = 1..N
        logit = MLP([y_1, ..., y_N, x_dense])

    ``|e|`` is clamped at 1e-5 before the log (the log needs positive inputs: the paper takes absolute
    values and replaces zeros by a small positive number; 1e-5 is FuxiCTR's); ``ln|e|`` and ``y`` are
    batch-normalized (paper, FuxiCTR). In ``dense_mode="vector"`` the raw dense vector joins the MLP input.

    Defaults follow the BARS Criteo_x4_001 AFN config (AFN_criteo_x4_012_d479cb4e): 1200 logarithmic
    neurons, MLP 1000x4, ReLU, dropout 0.2, batch norm (also embedding L2 1e-6, batch 10000, lr 1e-3).

    Shapes: embeddings [B, F, D]; logarithmic neurons [B, N, D]; MLP input [B, N*D (+ dense)]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, logarithmic_neurons: int = 1200,
                 hidden_units: Sequence[int] = (1000, 1000, 1000, 1000), activation: str = "relu",
                 dropout: float = 0.2, batch_norm: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.log_net = LogarithmicTransform(self.embedding.num_fields, logarithmic_neurons)
        afn_dim = logarithmic_neurons * embed_dim + self.embedding.dense_dim
        self.afn_mlp = MLP(afn_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def afn_logit(self, emb: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logarithmic neurons and their MLP: embeddings [B, F, D] -> [B, 1]."""
        crosses = self.log_net(emb)  # [B, N, D]
        return self.afn_mlp(self.embedding.dnn_input(crosses, batch))  # [B, N*D (+ dense)] -> [B, 1]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.afn_logit(self.embedding(batch), batch)  # [B, 1]


@register
class AFNPlus(AFN):
    """AFN+ (Cheng et al., AAAI 2020): AFN ensembled with a feed-forward DNN, the two logits
    weighted by a learned linear layer,

        logit = w_1 logit_AFN + w_2 MLP_dnn([e_1, ..., e_F, x_dense]) + b

    Both parts read the shared embedding (FuxiCTR, which BARS ran, gives the DNN its own embedding table; this
    repo has one embedding module per model). Defaults follow the BARS Criteo_x4_001 AFN+ config
    (AFN_criteo_x4_004_8fcb4074): the AFN defaults plus a DNN 1000x5 without dropout, batch norm in both
    MLPs (also embedding L2 1e-5, batch 10000, lr 1e-3).

    Shapes: as :class:`AFN`; DNN input [B, F*D (+ dense)]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, logarithmic_neurons: int = 1200,
                 hidden_units: Sequence[int] = (1000, 1000, 1000, 1000), activation: str = "relu",
                 dropout: float = 0.2, batch_norm: bool = True,
                 dnn_hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000), dnn_dropout: float = 0.0) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std, logarithmic_neurons, hidden_units,
                         activation, dropout, batch_norm)
        self.dnn = MLP(self.embedding.output_dim, dnn_hidden_units, activation, dnn_dropout, batch_norm, output_dim=1)
        self.ensemble = nn.Linear(2, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        y_dnn = self.dnn(self.embedding.dnn_input(emb, batch))  # [B, 1]
        return self.ensemble(torch.cat([self.afn_logit(emb, batch), y_dnn], dim=1))  # [B, 2] -> [B, 1]
