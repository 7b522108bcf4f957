"""Multi-task building blocks: expert banks, softmax gates, MMoE / CGC mixtures and per-task towers.

Shapes use B = batch, n = experts in a bank, H = expert output width, T = tasks.

References:
    MMoE: Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
          Mixture-of-Experts", KDD 2018 (eqs. 6-8).
    CGC / PLE: Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
          Model for Personalized Recommendations", RecSys 2020 (eqs. 2-7).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from layers.activation import get_activation
from layers.mlp import MLP


def mix(experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs: ``sum_i w_i * e_i``; experts [B, n, H], weights [B, n] -> [B, H]."""
    return torch.bmm(weights.unsqueeze(1), experts).squeeze(1)


def product_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logit(sigmoid(a) * sigmoid(b))``, exact and finite for all finite logits (any shape, elementwise).

    With ``p = sigmoid(a) sigmoid(b) = 1 / ((1 + e^-a)(1 + e^-b))``, ``1 - p`` has numerator
    ``e^-a + e^-b + e^-(a+b)`` over the same denominator, so

        logit(p) = log p - log(1 - p) = -log(e^-a + e^-b + e^-(a+b)) = -logsumexp(-a, -b, -a - b).

    This is the log-space ``log p - log1p(-p)`` without ever forming ``p`` (no cancellation as
    ``p -> 1``), and since the logsumexp is at least its term ``-a``, ``logit(p) <= a`` holds exactly
    in floating point: pCTCVR never exceeds pCTR.
    """
    terms = torch.stack([-a, -b, -(a + b)])  # [3, ...]
    return -torch.logsumexp(terms, dim=0)


class ParallelLinear(nn.Module):
    """``n`` independent affine maps ``y_i = x_i W_i + b_i`` computed as one batched matmul.

    Shape: ``[B, in]`` (one input shared by all ``n`` maps) or ``[B, n, in]`` (one input each) -> ``[B, n, out]``.
    Each ``W_i`` [in, out] gets its own Xavier-normal init (the init ``nn.Linear`` layers get from
    ``models.registry.build_model``); biases start at zero.
    """

    def __init__(self, num: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num, out_dim))
        self.init_dense(nn.init.xavier_normal_)

    def init_dense(self, init: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``init`` to each ``W_i`` on its own (as to ``n`` separate Linear layers); zero the biases."""
        for w in self.weight.data:
            init(w)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.einsum("bi,nio->bno", x, self.weight) + self.bias
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias


class Experts(nn.Module):
    """A bank of ``n`` identically shaped MLP experts ``f_1 .. f_n`` over one shared input, run batched.

    Each layer is ``Linear -> [BatchNorm] -> activation -> [Dropout]`` per expert, exactly as
    :class:`layers.mlp.MLP` with the same arguments, but all experts share one :class:`ParallelLinear`
    (one batched matmul instead of ``n`` small ones). Normalization, activation and dropout act per unit,
    so running them on the ``[B, n * units]`` view keeps every expert independent.

    Shape: ``[B, input_dim]`` -> ``[B, n, hidden_units[-1]]``.
    """

    def __init__(self, input_dim: int, num_experts: int, hidden_units: Sequence[int], activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        if num_experts < 1 or not hidden_units:
            raise ValueError(f"Experts need num_experts >= 1 and at least one hidden layer; got "
                             f"num_experts={num_experts}, hidden_units={tuple(hidden_units)} "
                             f"(set e.g. --num_experts 8 --expert_units 256,128)")
        self.num_experts = num_experts
        self.linears = nn.ModuleList()
        self.blocks = nn.ModuleList()
        dim = input_dim
        for units in hidden_units:
            self.linears.append(ParallelLinear(num_experts, dim, units))
            width = num_experts * units
            block: list[nn.Module] = [nn.BatchNorm1d(width)] if batch_norm else []
            block.append(get_activation(activation, width))
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            self.blocks.append(nn.Sequential(*block))
            dim = units
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # [B, in], then [B, n, units]
        for linear, block in zip(self.linears, self.blocks):
            h = linear(h)  # [B, n, units]
            h = block(h.flatten(start_dim=1)).view_as(h)
        return h


class Gate(nn.Module):
    """Softmax gate over ``n`` experts: ``g(x) = softmax(W_g x)`` (MMoE eq. 8, PLE eq. 3), or
    ``softmax(MLP(x))`` when ``hidden_units`` is non-empty.

    Shape: ``[B, input_dim]`` -> weights ``[B, n]``, non-negative, summing to 1 over experts.
    """

    def __init__(self, input_dim: int, num_experts: int, hidden_units: Sequence[int] = (),
                 activation: str = "relu") -> None:
        super().__init__()
        self.net = MLP(input_dim, hidden_units, activation, output_dim=num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


class MultiGateMixture(nn.Module):
    """The MMoE block (Ma et al., KDD 2018): ``n`` shared experts and one softmax gate per task,

        f^k(x) = sum_i g^k(x)_i f_i(x)   (eq. 7),   g^k(x) = softmax(W_gk x)   (eq. 8).

    Shape: ``[B, input_dim]`` -> (mixtures ``[T, B, H]``, gate weights ``[T, B, n]``).
    """

    def __init__(self, input_dim: int, num_tasks: int, num_experts: int, expert_units: Sequence[int],
                 gate_units: Sequence[int] = (), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.experts = Experts(input_dim, num_experts, expert_units, activation, dropout, batch_norm)
        self.gates = nn.ModuleList(Gate(input_dim, num_experts, gate_units, activation) for _ in range(num_tasks))
        self.output_dim = self.experts.output_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.experts(x)  # [B, n, H]
        gates = torch.stack([gate(x) for gate in self.gates])  # [T, B, n]
        mixtures = torch.stack([mix(experts, g) for g in gates])  # [T, B, H]
        return mixtures, gates


class ExtractionOutput(NamedTuple):
    """What one :class:`CGC` level returns.

    outputs: ``[T, B, H]`` task representations, plus the shared one as row ``T`` (``[T + 1, B, H]``)
        when the level has a shared gate.
    task_gates: ``[T, B, m_k + m_s]``, task ``k``'s weights over its own experts, then the shared ones.
    shared_gate: ``[B, T * m_k + m_s]`` weights over every expert (task 0's, ..., task T-1's, shared),
        or ``None`` on a level without a shared gate.
    """

    outputs: torch.Tensor
    task_gates: torch.Tensor
    shared_gate: torch.Tensor | None


class CGC(nn.Module):
    """Customized Gate Control, one extraction level of PLE (Tang et al., RecSys 2020).

    Task ``k`` owns ``m_k`` experts ``E_(k,.)``; ``m_s`` experts ``E_(s,.)`` are shared. Task ``k``'s gate
    mixes its own and the shared experts (eqs. 2-4):

        g^k(x) = w^k(x) S^k(x),  w^k(x) = softmax(W_g^k x),  S^k(x) = [E_(k,1..m_k)(x), E_(s,1..m_s)(x)]

    In a stacked PLE (eq. 6) level ``j`` feeds task ``k``'s experts and gate with ``g^(k, j-1)``, and a
    shared gate over *all* experts builds the shared input ``g^(s, j)`` of the next level; the last level
    has no shared gate (``shared_gate=False``).

    Input: ``[B, input_dim]`` (first level: every expert and gate sees ``x``) or ``[T + 1, B, input_dim]``
    (the previous level's outputs: tasks ``0..T-1``, then shared). Output: :class:`ExtractionOutput`.
    """

    def __init__(self, input_dim: int, num_tasks: int, num_specific: int, num_shared: int,
                 expert_units: Sequence[int], gate_units: Sequence[int] = (), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, shared_gate: bool = False) -> None:
        super().__init__()
        if num_tasks < 1 or num_specific < 1 or num_shared < 1:
            raise ValueError(f"CGC needs >= 1 task, >= 1 specific and >= 1 shared expert; got num_tasks={num_tasks}, "
                             f"num_specific={num_specific}, num_shared={num_shared} "
                             f"(set --num_specific_experts / --num_shared_experts)")
        self.num_tasks = num_tasks
        self.specific = nn.ModuleList(
            Experts(input_dim, num_specific, expert_units, activation, dropout, batch_norm) for _ in range(num_tasks))
        self.shared = Experts(input_dim, num_shared, expert_units, activation, dropout, batch_norm)
        self.task_gates = nn.ModuleList(
            Gate(input_dim, num_specific + num_shared, gate_units, activation) for _ in range(num_tasks))
        self.shared_gate = (Gate(input_dim, num_tasks * num_specific + num_shared, gate_units, activation)
                            if shared_gate else None)
        self.output_dim = self.shared.output_dim

    def forward(self, x: torch.Tensor) -> ExtractionOutput:
        inputs = x.expand(self.num_tasks + 1, *x.shape) if x.dim() == 2 else x  # [T + 1, B, in]
        specific = [experts(inputs[k]) for k, experts in enumerate(self.specific)]  # T x [B, m_k, H]
        shared = self.shared(inputs[-1])  # [B, m_s, H]
        task_gates = torch.stack([gate(inputs[k]) for k, gate in enumerate(self.task_gates)])  # [T, B, m_k + m_s]
        outputs = [mix(torch.cat([specific[k], shared], dim=1), task_gates[k]) for k in range(self.num_tasks)]
        shared_gate = None
        if self.shared_gate is not None:
            shared_gate = self.shared_gate(inputs[-1])  # [B, T * m_k + m_s]
            outputs.append(mix(torch.cat([*specific, shared], dim=1), shared_gate))
        return ExtractionOutput(torch.stack(outputs), task_gates, shared_gate)


class Towers(nn.Module):
    """One MLP tower per task, each ending in a single logit: ``y_k = h^k(x_k)`` (MMoE eq. 6).

    Shape: ``[T, B, input_dim]`` (one input per tower) or ``[B, input_dim]`` (shared by every tower)
    -> logits ``[B, T]``, column ``k`` from tower ``k``.
    """

    def __init__(self, input_dim: int, num_tasks: int, hidden_units: Sequence[int] = (), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            MLP(input_dim, hidden_units, activation, dropout, batch_norm, output_dim=1) for _ in range(num_tasks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.expand(len(self.towers), *x.shape) if x.dim() == 2 else x  # [T, B, in]
        return torch.cat([tower(inputs[k]) for k, tower in enumerate(self.towers)], dim=1)
