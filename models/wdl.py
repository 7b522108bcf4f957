from __future__ import annotations

import torch

from models.fnn import FNN
from models.registry import register


@register
class WDL(FNN):
    """Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016, eq. 3):
    a linear model and a DNN trained jointly, their logits summed,

        y = w_wide^T x + b  +  MLP(concat(e_1 .. e_F))

    The wide part is the shared first-order term (one weight per sparse id, plus dense weights), i.e.
    the paper's wide model without hand-crafted cross-product transformations.

    The deep part is :class:`models.fnn.FNN`'s DNN, with its hyperparameters; the defaults match the
    BARS Criteo_x4_001 WideDeep config too (hidden 1000 x 5, ReLU, dropout 0.2, no BN).

    Shapes: embeddings [B, F, D]; wide [B, 1]; DNN input [B, F*D (+ dense)]; output logits [B, 1].
    """

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        y_wide = self.embedding.linear(batch)  # [B, 1]
        y_deep = super().forward(batch)  # FNN's DNN over the embeddings: [B, 1]
        return y_wide + y_deep
