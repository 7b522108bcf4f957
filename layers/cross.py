"""Cross networks of DCN, DCNv2 and DCN-Mix, side by side. Each maps ``x_0`` [B, d] -> ``x_L`` [B, d]."""
from __future__ import annotations

import torch
from torch import nn


def _glorot_normal_(weight: torch.Tensor) -> None:
    """Xavier/Glorot normal init of a stack of matrices: fans are the last two dims (``[..., fan_out, fan_in]``)."""
    nn.init.normal_(weight, std=(2.0 / (weight.shape[-1] + weight.shape[-2])) ** 0.5)


class CrossNet(nn.Module):
    r"""Cross network of DCN (Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017, eq. 3):

        x_{l+1} = x_0 * (x_l^T w_l) + b_l + x_l,        w_l, b_l: [d]

    Each layer adds one degree of crossing with ``O(d)`` parameters (a rank-1 weight per layer).

    Args:
        input_dim: d, width of ``x_0``.
        num_layers: L, number of cross layers.

    Shape: ``[B, d]`` -> ``[B, d]``.

    Example:
        >>> x0 = torch.randn(3, 10)
        >>> CrossNet(input_dim=10, num_layers=2)(x0).shape
        torch.Size([3, 10])
    """

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_layers, input_dim))  # row l is w_l
        self.bias = nn.Parameter(torch.zeros(num_layers, input_dim))
        nn.init.normal_(self.weight, std=(2.0 / (input_dim + 1)) ** 0.5)  # Glorot normal of each [d, 1] w_l

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias):
            x = x0 * (x @ w).unsqueeze(1) + b + x  # [B, d]
        return x


class CrossNetV2(nn.Module):
    r"""Full-rank cross network of DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical
    Lessons for Web-scale Learning to Rank Systems", WWW 2021, the cross layer equation):

        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,          W_l: [d, d], b_l: [d]

    Args:
        input_dim: d, width of ``x_0``.
        num_layers: L, number of cross layers.

    Shape: ``[B, d]`` -> ``[B, d]``.

    Example:
        >>> x0 = torch.randn(3, 10)
        >>> CrossNetV2(input_dim=10, num_layers=2)(x0).shape
        torch.Size([3, 10])
    """

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for linear in self.layers:
            x = x0 * linear(x) + x  # [B, d]
        return x


class CrossNetMix(nn.Module):
    r"""Mixture of low-rank cross experts, DCN-Mix (Wang et al., WWW 2021, the mixture-of-low-rank-experts
    cross layer; layout as in FuxiCTR's ``CrossNetMix``):

        E_i(x_l) = x_0 ⊙ (U_l^i g(C_l^i g(V_l^{iT} x_l)) + b_l)     expert i, g = tanh
        G(x_l)   = softmax(W_g x_l)                                 gates over K experts, W_g: [K, d]
        x_{l+1}  = sum_i G_i(x_l) E_i(x_l) + x_l

    with ``U_l^i, V_l^i``: [d, r] and ``C_l^i``: [r, r]. The gate ``W_g`` is shared by all layers, as
    ``G_i`` carries no layer index in the paper. With one expert the gate is 1 and a layer reduces to
    ``x_0 ⊙ (U g(C g(V^T x_l)) + b) + x_l``.

    Args:
        input_dim: d, width of ``x_0``.
        num_layers: L, number of cross layers.
        low_rank: r, rank of each expert.
        num_experts: K.

    Shape: ``[B, d]`` -> ``[B, d]``.

    Example:
        >>> x0 = torch.randn(3, 10)
        >>> CrossNetMix(input_dim=10, num_layers=2, low_rank=4, num_experts=3)(x0).shape
        torch.Size([3, 10])
    """

    def __init__(self, input_dim: int, num_layers: int, low_rank: int = 32, num_experts: int = 4) -> None:
        super().__init__()
        self.U = nn.Parameter(torch.empty(num_layers, num_experts, input_dim, low_rank))
        self.V = nn.Parameter(torch.empty(num_layers, num_experts, input_dim, low_rank))
        self.C = nn.Parameter(torch.empty(num_layers, num_experts, low_rank, low_rank))
        self.bias = nn.Parameter(torch.zeros(num_layers, input_dim))
        self.gate = nn.Linear(input_dim, num_experts, bias=False)
        for weight in (self.U, self.V, self.C):
            _glorot_normal_(weight)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for U, V, C, b in zip(self.U, self.V, self.C, self.bias):
            low = torch.tanh(torch.einsum("bd,kdr->bkr", x, V))  # g(V^T x_l): [B, K, r]
            low = torch.tanh(torch.einsum("bkr,ksr->bks", low, C))  # g(C g(.)): [B, K, r]
            experts = x0.unsqueeze(1) * (torch.einsum("bkr,kdr->bkd", low, U) + b)  # E_i(x_l): [B, K, d]
            gates = torch.softmax(self.gate(x), dim=1)  # [B, K]
            x = torch.einsum("bk,bkd->bd", gates, experts) + x  # [B, d]
        return x
