"""Activations usable in every MLP, chosen by name: relu, tanh, sigmoid, leaky_relu, prelu, dice, identity."""
from __future__ import annotations

import torch
from torch import nn


class Dice(nn.Module):
    """Data-adaptive activation from DIN (Zhou et al., KDD 2018, eq. 4).

    ``f(s) = p(s) * s + (1 - p(s)) * alpha * s`` with ``p(s) = sigmoid(BN(s))``; BN has no affine
    parameters, ``alpha`` is learned per unit and starts at 0 (so Dice starts as a soft ReLU).

    Shape: ``[B, N]`` -> ``[B, N]``.
    """

    def __init__(self, num_features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.bn(x))
        return p * x + (1 - p) * self.alpha * x


def get_activation(name: str, num_features: int) -> nn.Module:
    """A fresh activation module by name; ``num_features`` sizes the learned ones (PReLU, Dice)."""
    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "leaky_relu":
        return nn.LeakyReLU()
    if name == "prelu":
        return nn.PReLU(num_features)
    if name == "dice":
        return Dice(num_features)
    if name in ("identity", "linear", "none"):
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; choose relu, tanh, sigmoid, leaky_relu, prelu, dice or identity")
