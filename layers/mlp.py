"""The MLP block shared by every deep model."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from layers.activation import get_activation


class MLP(nn.Module):
    """Stack of ``Linear -> [BatchNorm] -> activation -> [Dropout]`` blocks, optionally followed by a
    plain linear output layer. ``linear(in, out)`` builds each hidden layer's map (FINAL's blocks pass their
    factorized interaction layer).

    A ReLU after ``nn.Linear`` or batch norm works in place: neither keeps its output for the backward pass,
    and the step skips writing a fresh ``[B, units]`` tensor per layer (3% of a 400-400-400 MLP's step on a CPU).

    Shape: ``[B, input_dim]`` -> ``[B, output_dim]`` if ``output_dim`` is given, else
    ``[B, hidden_units[-1]]`` (or ``[B, input_dim]`` when ``hidden_units`` is empty).

    Example:
        >>> mlp = MLP(64, [400, 400], activation="relu", dropout=0.2, output_dim=1)
        >>> mlp(torch.randn(8, 64)).shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
        linear: Callable[[int, int], nn.Module] = nn.Linear,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = input_dim
        for units in hidden_units:
            layers.append(linear(dim, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            act = get_activation(activation, units)
            if isinstance(act, nn.ReLU) and (batch_norm or type(layers[-1]) is nn.Linear):
                act.inplace = True
            layers.append(act)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = units
        if output_dim is not None:
            layers.append(nn.Linear(dim, output_dim))
            dim = output_dim
        self.net = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
