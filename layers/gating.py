"""Gates, masks and factorized layers of the recent MLP-centred CTR models, side by side:

* FinalMLP's feature selection (:class:`FeatureSelection`) and multi-head bilinear fusion
  (:class:`InteractionAggregation`);
* FINAL's factorized interaction layer and block (:class:`FactorizedInteraction`, :class:`FinalBlock`) and
  FinalNet's field gate (:class:`FieldGate`);
* MaskNet's instance-guided mask block (:class:`MaskBlock`);
* GDCN's gated cross network (:class:`GatedCrossNet`);
* EDCN's bridge and regulation modules (:class:`Bridge`, :class:`Regulation`).

Each layer states its formula and shapes. Parameters with a formula-specific init are initialized here (and are
plain parameters, so the registry's Xavier init of ``nn.Linear`` layers leaves them alone).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from layers.activation import get_activation
from layers.mlp import MLP

RESIDUAL_TYPES = ("concat", "sum")
BRIDGE_TYPES = ("hadamard_product", "pointwise_addition", "concatenation", "attention_pooling")


# -- FinalMLP (Mao et al., "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction", AAAI 2023) ---------------


class FeatureSelection(nn.Module):
    r"""FinalMLP's stream-specific feature gating (sec. "Stream-Specific Feature Selection"), context-free form:

        g_k = 2 * sigmoid(MLP_k(b_k)),      x_k = g_k ⊙ x,      k = 1, 2

    ``b_k`` [D] is a learned vector standing in for the conditioning features (the paper's and FuxiCTR's
    default when no context fields are named; it starts at 0, so both gates start at 1). ``MLP_k``: ReLU hidden
    layers ``hidden_units``, then a linear layer to ``d`` units. As in FuxiCTR, with ``b_k = 0`` and the
    registry's zero biases every hidden ReLU starts at 0 and gets no gradient, so the gates learn through the
    output layer's bias: ``g_k = 2 sigmoid(c_k)``, one learned scale per unit.

    Args:
        input_dim: d, width of the flattened input ``x``.
        context_dim: D, width of ``b_k``.
        hidden_units: hidden layers of each gate MLP.

    Shape: ``[B, d]`` -> two ``[B, d]``.
    """

    def __init__(self, input_dim: int, context_dim: int, hidden_units: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.zeros(2, context_dim))  # b_1, b_2
        self.gates = nn.ModuleList(MLP(context_dim, hidden_units, "relu", output_dim=input_dim) for _ in range(2))

    def weights(self) -> torch.Tensor:
        """The two gates ``g_1, g_2`` -> [2, d] (the same for every row: the gates see no row features)."""
        return torch.stack([2 * torch.sigmoid(gate(b)) for gate, b in zip(self.gates, self.context)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.weights()  # [2, d]
        return x * g[0], x * g[1]  # [B, d] each


class InteractionAggregation(nn.Module):
    r"""FinalMLP's multi-head bilinear fusion of the two stream outputs ``o_1`` [d_1] and ``o_2`` [d_2]
    (sec. "Multi-Head Bilinear Fusion"):

        y = b + w_1^T o_1 + w_2^T o_2 + sum_{h=1..H} o_{1,h}^T W_h o_{2,h}

    where ``o_{k,h}`` is the ``h``-th of ``H`` equal chunks of ``o_k`` and ``W_h`` [d_1/H, d_2/H]. One head is
    full bilinear fusion; ``H = d_1 = d_2`` would be an element-wise product. ``W`` is Xavier-normal
    initialized as one ``[H * d_1/H * d_2/H, 1]`` matrix (FuxiCTR's layout).

    Args:
        dim1, dim2: d_1, d_2; both must be divisible by ``num_heads``.
        num_heads: H.

    Shape: ``[B, d_1]``, ``[B, d_2]`` -> ``[B, 1]``.
    """

    def __init__(self, dim1: int, dim2: int, num_heads: int = 1) -> None:
        super().__init__()
        if num_heads < 1 or dim1 % num_heads or dim2 % num_heads:
            raise ValueError(f"fusion_heads must be >= 1 and divide both stream widths ({dim1}, {dim2}), "
                             f"got {num_heads}")
        self.num_heads = num_heads
        self.linear1 = nn.Linear(dim1, 1)  # w_1, b
        self.linear2 = nn.Linear(dim2, 1, bias=False)  # w_2
        h1, h2 = dim1 // num_heads, dim2 // num_heads
        self.weight = nn.Parameter(torch.randn(num_heads, h1, h2) * (2.0 / (num_heads * h1 * h2 + 1)) ** 0.5)

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        heads1 = o1.view(o1.shape[0], self.num_heads, -1)  # [B, H, d_1/H]
        heads2 = o2.view(o2.shape[0], self.num_heads, -1)  # [B, H, d_2/H]
        bilinear = torch.einsum("bhi,hij,bhj->b", heads1, self.weight, heads2).unsqueeze(1)  # [B, 1]
        return self.linear1(o1) + self.linear2(o2) + bilinear


# -- FINAL (Zhu et al., "FINAL: Factorized Interaction Layer for CTR Prediction", SIGIR 2023) -----------------------


class FactorizedInteraction(nn.Module):
    r"""The factorized interaction layer of FINAL: one linear map gives two halves ``a`` and ``c``, whose product
    is a quadratic (FM-like, factorized) interaction of the input:

        [a, c] = W x + b
        residual "concat": h = [a, a ⊙ c]      (W: [d_out, d_in], a, c: [d_out / 2])
        residual "sum":    h = a + a ⊙ c        (W: [2 d_out, d_in], a, c: [d_out])

    Stacking L such layers gives interactions up to degree 2^L.

    Args:
        input_dim: d_in.
        output_dim: d_out (even for ``"concat"``).
        residual_type: ``"concat"`` or ``"sum"``.

    Shape: ``[B, d_in]`` -> ``[B, d_out]``.
    """

    def __init__(self, input_dim: int, output_dim: int, residual_type: str = "concat") -> None:
        super().__init__()
        if residual_type not in RESIDUAL_TYPES:
            raise ValueError(f"residual_type must be one of {RESIDUAL_TYPES}, got {residual_type!r}")
        if residual_type == "concat" and output_dim % 2:
            raise ValueError(f"FINAL layers with residual_type 'concat' need even widths, got {output_dim}")
        self.residual_type = residual_type
        self.linear = nn.Linear(input_dim, output_dim * 2 if residual_type == "sum" else output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, c = self.linear(x).chunk(2, dim=-1)
        return torch.cat([a, a * c], dim=-1) if self.residual_type == "concat" else a + a * c


class FinalBlock(MLP):
    """A FINAL block: the MLP block with each linear layer replaced by a :class:`FactorizedInteraction`,
    ``FINAL -> [BatchNorm] -> activation -> [Dropout]`` per layer.

    Shape: ``[B, input_dim]`` -> ``[B, hidden_units[-1]]``.
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = True, residual_type: str = "concat") -> None:
        if not hidden_units:
            raise ValueError("a FINAL block needs at least one layer; hidden_units is empty")
        super().__init__(input_dim, hidden_units, activation, dropout, batch_norm,
                         linear=lambda i, o: FactorizedInteraction(i, o, residual_type))


class FieldGate(nn.Module):
    r"""FinalNet's field gate: each field's gate is a linear function of every field, applied per embedding
    dimension, and the gated fields are appended to the originals:

        G = W E + b,  out = [E, E ⊙ G]         E, G: [F, D] (per row), W: [F, F], b: [F] (broadcast over D)

    ``W`` starts at 0 and ``b`` at 1 (FuxiCTR's init), so every gate starts at 1.

    Shape: ``[B, F, D]`` -> ``[B, 2F, D]``.
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_fields, num_fields))
        self.bias = nn.Parameter(torch.ones(num_fields))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        gates = torch.einsum("fg,bgd->bfd", self.weight, emb) + self.bias.unsqueeze(-1)  # [B, F, D]
        return torch.cat([emb, emb * gates], dim=1)  # [B, 2F, D]


# -- MaskNet (Wang et al., "MaskNet: Introducing Feature-Wise Multiplication to CTR Ranking Models by
#    Instance-Guided Mask", DLP-KDD 2021) --------------------------------------------------------------------------


class MaskBlock(nn.Module):
    r"""MaskBlock (sec. 3.2-3.3): an instance-guided mask computed from the embeddings re-weights the block's input
    element-wise before a hidden layer:

        V_mask = W_2 ReLU(W_1 V_emb + b_1) + b_2             aggregation width int(reduction_ratio * d_h)
        V_out  = Dropout(act(LN(W_h (V_mask ⊙ V_hidden))))    W_h: [d_out, d_h], no bias; LN if layer_norm

    Args:
        emb_dim: width of ``V_emb`` (the flattened embeddings).
        hidden_dim: d_h, width of ``V_hidden`` and of the mask.
        output_dim: d_out.
        reduction_ratio: aggregation width over mask width (FuxiCTR's convention).

    Shape: ``[B, emb_dim]``, ``[B, d_h]`` -> ``[B, d_out]``.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, output_dim: int, reduction_ratio: float = 1.0,
                 activation: str = "relu", dropout: float = 0.0, layer_norm: bool = True) -> None:
        super().__init__()
        agg_dim = int(hidden_dim * reduction_ratio)
        if agg_dim < 1:
            raise ValueError(f"reduction_ratio {reduction_ratio} leaves no aggregation units for a mask of width "
                             f"{hidden_dim}; use a larger reduction_ratio")
        self.mask = MLP(emb_dim, [agg_dim], "relu", output_dim=hidden_dim)
        layers: list[nn.Module] = [nn.Linear(hidden_dim, output_dim, bias=False)]
        if layer_norm:
            layers.append(nn.LayerNorm(output_dim))
        layers.append(get_activation(activation, output_dim))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*layers)

    def forward(self, v_emb: torch.Tensor, v_hidden: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.mask(v_emb) * v_hidden)


# -- GDCN (Wang et al., "Towards Deeper, Lighter and Interpretable Cross Network for CTR Prediction", CIKM 2023) ----


class GatedCrossNet(nn.Module):
    r"""Gated cross network of GDCN (eq. 1): a DCN-V2 cross layer whose crossing is filtered by an information gate

        c_{l+1} = c_0 ⊙ (W_l^c c_l + b_l) ⊙ sigmoid(W_l^g c_l) + c_l         W_l^c, W_l^g: [d, d], b_l: [d]

    ``b_l`` is drawn from U(0, 1), as in the authors' code.

    Args:
        input_dim: d, width of ``c_0``.
        num_layers: L.

    Shape: ``[B, d]`` -> ``[B, d]``.
    """

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_cross_layers must be >= 1, got {num_layers}")
        self.cross = nn.ModuleList(nn.Linear(input_dim, input_dim, bias=False) for _ in range(num_layers))
        self.gate = nn.ModuleList(nn.Linear(input_dim, input_dim, bias=False) for _ in range(num_layers))
        self.bias = nn.Parameter(torch.rand(num_layers, input_dim))

    def forward(self, c0: torch.Tensor) -> torch.Tensor:
        c = c0
        for cross, gate, b in zip(self.cross, self.gate, self.bias):
            c = c0 * (cross(c) + b) * torch.sigmoid(gate(c)) + c  # [B, d]
        return c


# -- EDCN (Chen et al., "Enhancing Explicit and Implicit Feature Interactions via Information Sharing for Parallel
#    Deep CTR Models", CIKM 2021) ----------------------------------------------------------------------------------


class Bridge(nn.Module):
    r"""EDCN's bridge module (sec. 3.2): fuses the cross and deep layer outputs ``x``, ``h`` [d] into ``f`` [d]:

        "hadamard_product":   f = x ⊙ h
        "pointwise_addition": f = x + h
        "concatenation":      f = ReLU(W [x, h] + b)                           W: [d, 2d]
        "attention_pooling":  f = a_x ⊙ x + a_h ⊙ h,  a_v = softmax(W'_v ReLU(W_v v + b_v))   (v = x, h)

    Shape: ``[B, d]``, ``[B, d]`` -> ``[B, d]``.
    """

    def __init__(self, dim: int, bridge_type: str = "hadamard_product") -> None:
        super().__init__()
        if bridge_type not in BRIDGE_TYPES:
            raise ValueError(f"bridge_type must be one of {BRIDGE_TYPES}, got {bridge_type!r}")
        self.bridge_type = bridge_type
        if bridge_type == "concatenation":
            self.fuse = MLP(2 * dim, [dim], "relu")
        elif bridge_type == "attention_pooling":
            self.attention = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Softmax(dim=-1))
                for _ in range(2))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.bridge_type == "hadamard_product":
            return x * h
        if self.bridge_type == "pointwise_addition":
            return x + h
        if self.bridge_type == "concatenation":
            return self.fuse(torch.cat([x, h], dim=-1))
        return self.attention[0](x) * x + self.attention[1](h) * h


class Regulation(nn.Module):
    r"""EDCN's regulation module (sec. 3.3): two field-wise softmax gates split one input into a cross-tower and a
    deep-tower input:

        g^k = softmax(w^k / tau) over the G field groups,   x^k = g^k_{field(j)} x_j   (k = cross, deep)

    A field group is one embedding ``[D]`` or one raw dense value; ``w^k`` starts at 1 (uniform gates). With
    ``batch_norm`` each output is batch-normalized, as in FuxiCTR.

    Args:
        group_widths: width of each field group, in input order (``[D] * F + [1] * dense_dim``).
        temperature: tau > 0.

    Shape: ``[B, d]`` -> two ``[B, d]``, ``d = sum(group_widths)``.
    """

    def __init__(self, group_widths: Sequence[int], temperature: float = 1.0, batch_norm: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        group = torch.repeat_interleave(torch.arange(len(group_widths)), torch.tensor(list(group_widths)))
        self.register_buffer("group", group, persistent=False)  # [d]: field group of each unit
        self.weight = nn.Parameter(torch.ones(2, len(group_widths)))  # w^cross, w^deep
        dim = int(group.numel())
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim) if batch_norm else nn.Identity() for _ in range(2))

    def gates(self) -> torch.Tensor:
        """Per-unit gates of the two towers -> [2, d]."""
        return torch.softmax(self.weight / self.temperature, dim=-1)[:, self.group]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gates()  # [2, d]
        return self.norms[0](x * g[0]), self.norms[1](x * g[1])
