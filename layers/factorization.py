"""Factorization-machine variants over field embeddings [B, F, D]: field-weighted pairs (FwFM), field-pair
matrices (FEFM), input-aware field factors (IFM, DIFM), field-wise bi-interaction over field groups (FLEN), and
the mixture of logistic regressions of MLR.

Pairs are all ``i < j`` in :func:`layers.interaction.pair_indices` order; ``P = F(F-1)/2``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from layers.attention import InteractingLayer
from layers.embedding import FeatureEmbedding
from layers.interaction import FactorizationMachine, PairwiseProduct, bilinear_pairs, pair_indices
from layers.mlp import MLP
from layers.product import InnerProduct, xavier_normal_stack


def field_linear_terms(embedding: FeatureEmbedding, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-order term of :meth:`FeatureEmbedding.linear`, split by field: ``w[x_i]`` of every embedded
    field in ``embedding(batch)`` order (sparse, pooled sequences, dense ``x_j w_j`` in ``"embed"`` mode) ->
    [B, F], and what belongs to no embedded field (the bias, plus ``<w_dense, x_dense>`` in ``"vector"`` mode)
    -> [B, 1]. ``terms.sum(1, keepdim=True) + rest == embedding.linear(batch)``; IFM and DIFM reweight the
    terms field by field."""
    terms = embedding.weight(batch["sparse"] + embedding.offsets).squeeze(-1)  # [B, F_sparse]
    if embedding.num_sequences:
        seq = embedding.pool(embedding.weight(batch["seq"] + embedding.seq_offsets), batch)  # [B, S, 1]
        terms = torch.cat([terms, seq.squeeze(-1)], dim=1)
    rest = embedding.bias.expand(terms.shape[0], 1)  # [B, 1]
    if embedding.dense_weight is not None:
        dense = batch["dense"] * embedding.dense_weight  # x_j w_j: [B, F_dense]
        if embedding.dense_table is not None:  # "embed": dense fields are fields
            terms = torch.cat([terms, dense], dim=1)
        else:
            rest = rest + dense.sum(dim=1, keepdim=True)
    return terms, rest


class FieldWeightedFM(nn.Module):
    """Pairwise term of FwFM (Pan et al., "Field-weighted Factorization Machines for Click-Through Rate
    Prediction in Display Advertising", WWW 2018): one learned strength per field pair,

        phi_FwFM = sum_{i<j} r_{F_i, F_j} <v_i, v_j>

    ``r`` [P] starts at 1, i.e. the layer starts as FM's pairwise term.

    Shape: ``[B, F, D]`` -> ``[B, 1]``.
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.inner = InnerProduct(num_fields)
        self.r = nn.Parameter(torch.ones(self.inner.num_pairs))  # [P]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.inner(emb) @ self.r.unsqueeze(1)  # [B, P] @ [P, 1] -> [B, 1]


class FieldEmbeddedProduct(PairwiseProduct):
    """Field-pair interactions of FEFM (Pande, "Field-Embedded Factorization Machines for Click-through Rate
    Prediction", arXiv 2009.09931, 2020): each field pair owns a symmetric matrix ``U_ij + U_ij^T`` [D, D]
    (the paper's reparameterization of its symmetric ``W_{F(i), F(j)}``),

        r_ij = v_i^T (U_ij + U_ij^T) v_j                   one "interaction embedding" entry per pair

    FEFM's pairwise term is ``sum_{i<j} r_ij``; DeepFEFM also feeds ``r`` [P] to its DNN. ``U`` is Xavier-normal
    initialized, one [D, D] matrix per pair.

    Shape: ``[B, F, D]`` -> ``[B, P]``.
    """

    def __init__(self, num_fields: int, embed_dim: int) -> None:
        super().__init__(num_fields)
        self.U = xavier_normal_stack(self.num_pairs, embed_dim, embed_dim)  # [P, D, D]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """One ``[B, D] @ [D, n*D]`` matmul per left field (:func:`bilinear_pairs`) instead of a gathered
        [B, P, D] copy of both members, whose indexing backward made this layer ~3x slower on CPU at Criteo's
        39 fields."""
        return bilinear_pairs(emb, self.U + self.U.transpose(1, 2), reduce=True)  # v_i^T (U_ij + U_ij^T) v_j: [B, P]


class InputAwareFM(nn.Module):
    """FM with input-aware field factors ``m_x`` [B, F], the output of IFM (Yu et al., "An Input-aware
    Factorization Machine for Sparse Prediction", IJCAI 2019) and DIFM:

        w_{x,i} = m_{x,i} w_i,   v_{x,i} = m_{x,i} v_i
        y = w_0 + sum_i w_{x,i} + sum_{i<j} <v_{x,i}, v_{x,j}>

    Inputs: embeddings ``[B, F, D]``, factors ``[B, F]``, the per-field first-order terms ``[B, F]`` and the
    rest of the linear term ``[B, 1]`` (:func:`field_linear_terms`). Output ``[B, 1]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fm = FactorizationMachine()

    def forward(self, emb: torch.Tensor, factors: torch.Tensor, linear_terms: torch.Tensor,
                linear_rest: torch.Tensor) -> torch.Tensor:
        linear = linear_rest + (factors * linear_terms).sum(dim=1, keepdim=True)  # [B, 1]
        return linear + self.fm(emb * factors.unsqueeze(-1))  # [B, 1]


class FactorEstimatingNetwork(nn.Module):
    """IFM's factor estimating network (Yu et al., IJCAI 2019):

        u = MLP([v_1, ..., v_F])                      [B, H]
        m_x = F * softmax(P u)                        [B, F], P: [F, H] without bias; sum_i m_{x,i} = F

    Shape: ``[B, F, D]`` -> ``[B, F]``.
    """

    def __init__(self, num_fields: int, embed_dim: int, hidden_units: Sequence[int] = (256, 128),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.num_fields = num_fields
        self.mlp = MLP(num_fields * embed_dim, hidden_units, activation, dropout, batch_norm)
        self.P = nn.Linear(self.mlp.output_dim, num_fields, bias=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        scores = self.P(self.mlp(emb.flatten(start_dim=1)))  # m'_x: [B, F]
        return self.num_fields * torch.softmax(scores, dim=1)


class DualFactorEstimatingNetwork(nn.Module):
    """DIFM's dual-FEN (Lu et al., "A Dual Input-aware Factorization Machine for CTR Prediction", IJCAI 2020):
    a vector-wise part (multi-head self-attention with a residual connection, AutoInt's
    :class:`layers.attention.InteractingLayer`) and a bit-wise part (an MLP), each mapped to F factors:

        o = InteractingLayer([v_1, ..., v_F])          [B, F, D]   (heads of width D / num_heads)
        m_vec = P_vec flatten(o)                       [B, F],     P_vec: [F, F*D] without bias
        m_bit = P_bit MLP(flatten(v))                  [B, F],     P_bit: [F, H] without bias
        m_x = m_vec + m_bit

    Shape: ``[B, F, D]`` -> ``[B, F]``.
    """

    def __init__(self, num_fields: int, embed_dim: int, num_heads: int = 4, use_residual: bool = True,
                 use_scale: bool = True, hidden_units: Sequence[int] = (256, 128), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"DIFM --num_heads must be >= 1 and divide embed_dim={embed_dim}, got {num_heads}")
        self.attention = InteractingLayer(embed_dim, embed_dim // num_heads, num_heads, use_residual, use_scale)
        self.P_vec = nn.Linear(num_fields * embed_dim, num_fields, bias=False)
        self.mlp = MLP(num_fields * embed_dim, hidden_units, activation, dropout, batch_norm)
        self.P_bit = nn.Linear(self.mlp.output_dim, num_fields, bias=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        m_vec = self.P_vec(self.attention(emb).flatten(start_dim=1))  # [B, F]
        m_bit = self.P_bit(self.mlp(emb.flatten(start_dim=1)))  # [B, F]
        return m_vec + m_bit


class FieldWiseBiInteraction(nn.Module):
    """FLEN's field-wise bi-interaction (Chen et al., "FLEN: Leveraging Field for Scalable CTR Prediction",
    DLP-KDD 2020, arXiv 1911.04690, sec. 3.2) over M groups of fields (user / item / context, ...):

        e_m   = sum_{i in group m} v_i                                   [B, M, D]   group ("field") vectors
        h_MF  = sum_{m<n} r_{mn} (e_m ⊙ e_n)                              [B, D]      between groups
        h_FM  = sum_m r_{mm} sum_{i<j in group m} (v_i ⊙ v_j)             [B, D]      within each group

    and returns ``h_MF + h_FM``. ``r`` starts at 1 (DeepCTR starts the within-group weights at 0.5 of a sum
    without FM's 1/2, i.e. the same). A field may belong to one group at most; fields in no group are ignored.

    Shape: ``[B, F, D]`` -> ``[B, D]``.
    """

    def __init__(self, num_fields: int, groups: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(groups) < 2 or any(not g for g in groups):
            raise ValueError(f"FLEN needs at least 2 non-empty field groups, got {[list(g) for g in groups]}")
        flat = [i for g in groups for i in g]
        if len(set(flat)) != len(flat) or not all(0 <= i < num_fields for i in flat):
            raise ValueError(f"FLEN field groups must be disjoint field indices in 0..{num_fields - 1}, got {groups}")
        member = torch.zeros(len(groups), num_fields)
        for m, group in enumerate(groups):
            member[m, list(group)] = 1.0
        self.register_buffer("member", member, persistent=False)  # [M, F] one-hot rows
        rows, cols = pair_indices(len(groups))
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.r_between = nn.Parameter(torch.ones(rows.numel()))  # r_{mn}: [M(M-1)/2]
        self.r_within = nn.Parameter(torch.ones(len(groups)))  # r_{mm}: [M]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        group_sum = torch.einsum("mf,bfd->bmd", self.member, emb)  # e_m: [B, M, D]
        group_sq = torch.einsum("mf,bfd->bmd", self.member, emb * emb)  # [B, M, D]
        within = 0.5 * (group_sum * group_sum - group_sq)  # sum_{i<j in m} v_i ⊙ v_j: [B, M, D]
        between = group_sum[:, self.rows] * group_sum[:, self.cols]  # [B, M(M-1)/2, D]
        h_mf = torch.einsum("p,bpd->bd", self.r_between, between)
        h_fm = torch.einsum("m,bmd->bd", self.r_within, within)
        return h_mf + h_fm  # [B, D]


def mixed_logistic_logit(gate_scores: torch.Tensor, learner_logits: torch.Tensor) -> torch.Tensor:
    """The logit of MLR's mixture (Gai et al., "Learning Piece-wise Linear Models from Large Scale Data for Ad
    Click Prediction", arXiv 1704.05194, 2017, with softmax gating and sigmoid learners):

        p = sum_j softmax(u)_j sigmoid(z_j)         u = gate scores, z = learner logits, both [B, m]
        logit(p) = log p - log(1 - p)
                 = logsumexp_j(log softmax(u)_j + log sigmoid(z_j)) - logsumexp_j(log softmax(u)_j + log sigmoid(-z_j))

    (``1 - p = sum_j softmax(u)_j sigmoid(-z_j)``), computed in log space so that BCE-with-logits on it is the
    mixture's log-loss without ever rounding p to 0 or 1.

    Shape: ``[B, m]``, ``[B, m]`` -> ``[B, 1]``.
    """
    log_gate = torch.log_softmax(gate_scores, dim=1)  # [B, m]
    log_p = torch.logsumexp(log_gate + F.logsigmoid(learner_logits), dim=1, keepdim=True)
    log_q = torch.logsumexp(log_gate + F.logsigmoid(-learner_logits), dim=1, keepdim=True)
    return log_p - log_q  # [B, 1]
