from __future__ import annotations

import torch
from torch import nn

from dataset.schema import Schema
from layers.factorization import mixed_logistic_logit
from models.base import CTRModel
from models.registry import register


@register
class MLR(CTRModel):
    """Mixed Logistic Regression, the piece-wise linear model of Gai, Zhu, Li, Liu and Wang ("Learning Piece-wise
    Linear Models from Large Scale Data for Ad Click Prediction", arXiv 1704.05194, 2017): ``m`` linear
    regions gate ``m`` logistic regressions,

        p(y=1 | x) = sum_{j=1..m} softmax_j(u_1^T x, ..., u_m^T x) * sigmoid(w_j^T x)

    and :meth:`forward` returns ``logit(p)`` (computed in log space by
    :func:`layers.factorization.mixed_logistic_logit`), so BCE-with-logits on it is the paper's log-loss.

    Each feature's row of the shared embedding table holds its ``2m`` weights ``[u_1..u_m, w_1..w_m]``: the
    table is ``2 * region_num`` wide and ``embed_dim`` has no effect (as in LR). Sequence fields contribute
    their pooled rows; dense fields their ``x_j v_j`` rows in ``"embed"`` mode, or a linear map of the raw
    vector in ``"vector"`` mode. Each gate and learner has a bias.

    Default ``region_num=4`` is DeepCTR's; the paper settles on m = 12 for its own experiments. BARS has no MLR
    configuration.

    Shapes: per-field weights [B, F, 2m]; gate scores and learner logits [B, m] each; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, region_num: int = 4) -> None:
        if region_num < 2:
            raise ValueError(f"MLR --region_num must be >= 2 (1 region is LR), got {region_num}")
        super().__init__(schema, 2 * region_num, dense_mode, embed_init_std)
        self.region_num = region_num
        self.bias = nn.Parameter(torch.zeros(2 * region_num))  # [2m]
        dense_dim = self.embedding.dense_dim
        self.dense = nn.Linear(dense_dim, 2 * region_num, bias=False) if dense_dim else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.embedding(batch).sum(dim=1) + self.bias  # [B, F, 2m] -> [B, 2m]
        if self.dense is not None:
            scores = scores + self.dense(batch["dense"])
        gate, learner = scores.split(self.region_num, dim=1)  # u^T x, w^T x: [B, m] each
        return mixed_logistic_logit(gate, learner)  # [B, 1]
