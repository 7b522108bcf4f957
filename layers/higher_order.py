"""Learned-order interaction layers over field embeddings [B, F, D]: AFN's logarithmic neurons and
EulerNet's Euler interaction layer. Both turn products of features into sums in log space, where the
order of each feature in a product becomes a learned coefficient."""
from __future__ import annotations

import torch
from torch import nn

EULER_EPS = 1e-8  # added to |z|^2 before its log (the authors' code): a zero vector has a finite log-modulus


class LogarithmicTransform(nn.Module):
    """Logarithmic neurons of AFN (Cheng, Shen and Huang, "Adaptive Factorization Network: Learning
    Adaptive-Order Feature Interactions", AAAI 2020):

        y_{j,d} = exp( sum_i w_{j,i} ln |e_{i,d}| ) = prod_i |e_{i,d}|^{w_{j,i}}       j = 1..N neurons

    so neuron ``j`` is a cross feature whose order in field ``i`` is the learned ``w_{j,i}`` (any real number).

    The logarithm needs positive inputs: like the paper (absolute values, zeros replaced by a small
    positive number) and FuxiCTR, ``|e|`` is clamped below at ``eps`` (FuxiCTR's 1e-5; the paper suggests
    1e-7). With ``batch_norm`` (the paper and FuxiCTR), ``ln |e|`` is batch-normalized per field before the
    weights and ``y`` per neuron after the exponential, which keeps ``exp`` in range.

    Shape: ``[B, F, D]`` -> ``[B, N, D]``.
    """

    def __init__(self, num_fields: int, num_neurons: int, batch_norm: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        if num_neurons < 1 or eps <= 0:
            raise ValueError(f"logarithmic_neurons must be >= 1 and eps > 0, got {num_neurons} and {eps}")
        self.eps = eps
        self.weight = nn.Linear(num_fields, num_neurons, bias=False)  # w: [N, F]
        self.log_norm = nn.BatchNorm1d(num_fields) if batch_norm else nn.Identity()
        self.exp_norm = nn.BatchNorm1d(num_neurons) if batch_norm else nn.Identity()

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """The neurons come out of the matmul as [B, D, N]; ``exp`` and the per-neuron batch norm run on that
        contiguous layout seen as ``[B*D, N]`` rows, which has the statistics of ``BatchNorm1d`` over
        ``[B, N, D]`` (mean and variance over B and D per neuron) at a fraction of the cost: on the transposed
        view, batch norm's CPU forward + backward took ~9x as long (AFN's 1200 neurons, batch 4096)."""
        batch, _, dim = emb.shape
        log_emb = self.log_norm(emb.abs().clamp(min=self.eps).log())  # ln|e|: [B, F, D]
        mixed = self.weight(log_emb.transpose(1, 2))  # sum_i w_ji ln|e_i|: [B, D, N]
        crosses = self.exp_norm(mixed.exp().reshape(batch * dim, -1))  # [B*D, N]
        return crosses.view(batch, dim, -1).transpose(1, 2).contiguous()  # [B, N, D]


def euler_order_init(in_vectors: int, out_vectors: int) -> torch.Tensor:
    """Starting order matrix ``alpha`` [N_in, N_out] (the authors' init): the identity when the sizes match,
    else a near one-hot column per output (softmax over inputs of N(0, 1) / 0.01)."""
    if in_vectors == out_vectors:
        return torch.eye(in_vectors)
    return torch.softmax(torch.randn(in_vectors, out_vectors) / 0.01, dim=0)


class EulerInteraction(nn.Module):
    """One Euler interaction layer of EulerNet (Tian, Bai, Zhao, Wen and Cao, "EulerNet: Adaptive Feature
    Interaction Learning via Euler's Formula for CTR Prediction", SIGIR 2023).

    Input and output are complex vectors ``z_j = r_j + i p_j`` (``N_in`` in, ``N_out`` out, each of width D).

    Explicit part: in polar form ``z_j = lambda_j e^{i theta_j}`` a product of powers is linear in the
    log-modulus and the phase, so for every output ``k`` and dimension ``d``

        log lambda_{j,d} = 1/2 ln(r_{j,d}^2 + p_{j,d}^2 + 1e-8),   theta_{j,d} = atan2(p_{j,d}, r_{j,d})
        prod_j z_{j,d}^{alpha_{j,k}} :  L_{k,d} = sum_j alpha_{j,k} log lambda_{j,d} + delta_{k,d}
                                        T_{k,d} = sum_j alpha_{j,k} theta_{j,d} + delta'_{k,d}
        r^ex_{k,d} = exp(L_{k,d}) cos T_{k,d},   p^ex_{k,d} = exp(L_{k,d}) sin T_{k,d}

    with learned orders ``alpha`` [N_in, N_out] and biases ``delta, delta'`` [N_out, D].

    Implicit part: one linear map shared by the real and the imaginary parts,

        r^im = ReLU(W vec(r) + b),   p^im = ReLU(W vec(p) + b),   W: N_in*D -> N_out*D

    Output ``r' = r^ex + r^im``, ``p' = p^ex + p^im``, then LayerNorm over D of each (``layer_norm``).
    ``ex_dropout`` drops log-moduli and phases, ``im_dropout`` the inputs of ``W`` (the authors' code).

    Shape: ``([B, N_in, D], [B, N_in, D])`` -> ``([B, N_out, D], [B, N_out, D])``.
    """

    def __init__(self, in_vectors: int, out_vectors: int, embed_dim: int, layer_norm: bool = False,
                 ex_dropout: float = 0.0, im_dropout: float = 0.0) -> None:
        super().__init__()
        if in_vectors < 1 or out_vectors < 1:
            raise ValueError(f"euler_units must all be >= 1, got {out_vectors} after {in_vectors}")
        self.out_vectors, self.embed_dim = out_vectors, embed_dim
        self.orders = nn.Parameter(euler_order_init(in_vectors, out_vectors))  # alpha: [N_in, N_out]
        self.bias_log = nn.Parameter(torch.randn(out_vectors, embed_dim) * 0.01)  # delta
        self.bias_phase = nn.Parameter(torch.randn(out_vectors, embed_dim) * 0.01)  # delta'
        self.implicit = nn.Linear(in_vectors * embed_dim, out_vectors * embed_dim)
        self.ex_dropout, self.im_dropout = nn.Dropout(ex_dropout), nn.Dropout(im_dropout)
        self.norm_r = nn.LayerNorm(embed_dim) if layer_norm else nn.Identity()
        self.norm_p = nn.LayerNorm(embed_dim) if layer_norm else nn.Identity()

    def explicit(self, r: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned-order products in rectangular form -> two [B, N_out, D]."""
        log_mod = 0.5 * torch.log(r * r + p * p + EULER_EPS)  # [B, N_in, D]
        phase = torch.atan2(p, r)
        log_mod, phase = self.ex_dropout(log_mod), self.ex_dropout(phase)
        log_out = torch.einsum("bjd,jk->bkd", log_mod, self.orders) + self.bias_log  # [B, N_out, D]
        phase_out = torch.einsum("bjd,jk->bkd", phase, self.orders) + self.bias_phase
        modulus = log_out.exp()
        return modulus * torch.cos(phase_out), modulus * torch.sin(phase_out)

    def implicit_part(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W vec(x) + b): [B, N_in, D] -> [B, N_out, D]."""
        out = torch.relu(self.implicit(self.im_dropout(x.flatten(start_dim=1))))
        return out.view(x.shape[0], self.out_vectors, self.embed_dim)

    def forward(self, z: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        r, p = z
        r_ex, p_ex = self.explicit(r, p)
        return self.norm_r(r_ex + self.implicit_part(r)), self.norm_p(p_ex + self.implicit_part(p))
