"""Convolutions over the field axis of the embedding matrix: CCPM's wide convolution with flexible
p-max pooling and FGCNN's feature generation. Inputs are field embeddings [B, F, D] seen as a one-channel
image [B, 1, F, D]; every kernel is (height, 1): it slides along the fields, one embedding dimension at a
time, with weights shared across dimensions (as in FuxiCTR and DeepCTR)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from layers.activation import get_activation

CONV_ACTIVATIONS = ("tanh", "relu", "sigmoid", "leaky_relu", "identity")  # elementwise on [B, C, H, D]


def check_conv_activation(activation: str) -> None:
    if activation.lower() not in CONV_ACTIVATIONS:
        raise ValueError(f"conv activation must be one of {CONV_ACTIVATIONS}, got {activation!r}")


def kmax_pooling(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The ``k`` largest values along ``dim``, kept in their original order (Kalchbrenner et al., "A
    Convolutional Neural Network for Modelling Sentences", ACL 2014): ``[.., n, ..]`` -> ``[.., k, ..]``."""
    index = x.topk(k, dim=dim).indices.sort(dim=dim).values
    return x.gather(dim, index)


def flexible_p(layer: int, num_layers: int, num_fields: int) -> int:
    """CCPM's pooled height after layer ``i`` of ``l`` (Liu et al., CIKM 2015):
    ``p_i = (1 - (i / l)^(l - i)) * n`` for ``i < l``, ``p_l = 3``; floored at 3 (FuxiCTR)."""
    if layer == num_layers:
        return 3
    return max(3, int((1 - (layer / num_layers) ** (num_layers - layer)) * num_fields))


class CCPMConv(nn.Module):
    """Convolutional layers of CCPM (Liu, Yu, Wu and Wang, "A Convolutional Click Prediction Model",
    CIKM 2015): per layer ``i`` (kernel height ``w_i``, ``C_i`` channels)

        wide convolution:      r = Conv_{w_i}(zero-pad w_i - 1 fields on both sides of s)   height h + w_i - 1
        flexible p-max pooling: keep the p_i largest values of every (channel, dimension) column, in order
        activation:             s' = tanh(r_pooled)

    with ``p_i`` from :func:`flexible_p`, capped at the height the layer receives.

    Shape: ``[B, F, D]`` -> ``[B, C_l, p_l, D]``; :attr:`output_dim` = ``C_l * p_l * D``.
    """

    def __init__(self, num_fields: int, embed_dim: int, channels: Sequence[int] = (3,),
                 kernel_heights: Sequence[int] = (3,), activation: str = "tanh") -> None:
        super().__init__()
        if not channels or len(channels) != len(kernel_heights):
            raise ValueError(f"channels and kernel_heights need one entry per conv layer (>= 1 layer), "
                             f"got {list(channels)} and {list(kernel_heights)}")
        if min(channels) < 1 or min(kernel_heights) < 1:
            raise ValueError(f"channels and kernel_heights must be >= 1, got {list(channels)}, {list(kernel_heights)}")
        check_conv_activation(activation)
        self.convs = nn.ModuleList()
        self.activations = nn.ModuleList()
        self.pooled: list[int] = []
        height, in_channels = num_fields, 1
        for i, (out_channels, width) in enumerate(zip(channels, kernel_heights), start=1):
            self.convs.append(nn.Conv2d(in_channels, out_channels, (width, 1), padding=(width - 1, 0)))
            height = min(flexible_p(i, len(channels), num_fields), height + width - 1)
            self.pooled.append(height)
            self.activations.append(get_activation(activation, out_channels))
            in_channels = out_channels
        self.output_dim = in_channels * height * embed_dim

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = emb.unsqueeze(1)  # [B, 1, F, D]
        for conv, p, act in zip(self.convs, self.pooled, self.activations):
            x = act(kmax_pooling(conv(x), p, dim=2))  # [B, C_i, p_i, D]
        return x


class FeatureGeneration(nn.Module):
    """Feature generation of FGCNN (Liu, Tang, Chen, Yu, Guo and Zhang, "Feature Generation by
    Convolutional Neural Network for Click-Through Rate Prediction", WWW 2019): per layer ``i``

        C^i = tanh([BN] Conv_{k}(S^{i-1}))      same-height convolution, ``channels[i]`` maps
        S^i = MaxPool_{(p, 1)}(C^i)             height h_i = ceil(h_{i-1} / p) (the last window may be short)
        R^i = tanh(W^i vec(S^i) + b^i)          recombination -> h_i * r new features of width D

    ``S^0`` is the embedding matrix; the new features of every layer are concatenated.

    Shape: ``[B, F, D]`` -> ``[B, F_new, D]`` with :attr:`num_new_fields` = ``sum_i h_i * r``.
    """

    def __init__(self, num_fields: int, embed_dim: int, channels: Sequence[int] = (3,), kernel_height: int = 3,
                 pooling_size: int = 2, recombined_channels: int = 2, activation: str = "tanh",
                 batch_norm: bool = True) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must list >= 1 conv layer of >= 1 channels, got {list(channels)}")
        if min(kernel_height, pooling_size, recombined_channels) < 1:
            raise ValueError(f"kernel_heights, pooling_sizes and recombined_channels must be >= 1, got "
                             f"{kernel_height}, {pooling_size}, {recombined_channels}")
        check_conv_activation(activation)
        self.embed_dim = embed_dim
        self.convs = nn.ModuleList()
        self.recombine = nn.ModuleList()
        height, in_channels, self.num_new_fields = num_fields, 1, 0
        for out_channels in channels:
            self.convs.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, (kernel_height, 1), padding="same"),
                *([nn.BatchNorm2d(out_channels)] if batch_norm else []),
                get_activation(activation, out_channels),
                nn.MaxPool2d((pooling_size, 1), ceil_mode=True)))
            height = math.ceil(height / pooling_size)
            self.recombine.append(nn.Sequential(
                nn.Linear(out_channels * height * embed_dim, recombined_channels * height * embed_dim),
                get_activation(activation, recombined_channels * height * embed_dim)))
            self.num_new_fields += recombined_channels * height
            in_channels = out_channels

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x, new = emb.unsqueeze(1), []  # [B, 1, F, D]
        for conv, recombine in zip(self.convs, self.recombine):
            x = conv(x)  # S^i: [B, C_i, h_i, D]
            new.append(recombine(x.flatten(start_dim=1)).view(emb.shape[0], -1, self.embed_dim))  # [B, h_i r, D]
        return torch.cat(new, dim=1)  # [B, F_new, D]
