"""Feature-interaction layers over field embeddings [B, F, D]."""
from __future__ import annotations

import torch
from torch import nn


class FactorizationMachine(nn.Module):
    """Second-order FM term (Rendle, ICDM 2010, eq. 5), computed in O(F*D):

        sum_{i<j} <v_i, v_j> = 1/2 * sum_d [ (sum_i v_{i,d})^2 - sum_i v_{i,d}^2 ]

    The embeddings already carry the feature values (``x_i * v_i``), so this is the full pairwise term.

    Shape: ``[B, F, D]`` -> ``[B, 1]`` (``reduce_sum=True``) or the bi-interaction vector ``[B, D]``.
    """

    def __init__(self, reduce_sum: bool = True) -> None:
        super().__init__()
        self.reduce_sum = reduce_sum

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)  # [B, D]
        sum_of_square = emb.pow(2).sum(dim=1)  # [B, D]
        out = 0.5 * (square_of_sum - sum_of_square)  # [B, D]
        return out.sum(dim=1, keepdim=True) if self.reduce_sum else out
