"""Fields as the nodes of a graph (FiGNN): attentional edge weights, gated graph propagation and the
attentional scoring of the node states. Inputs are field embeddings [B, F, D]."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layers.product import xavier_normal_stack


class FieldGraphAttention(nn.Module):
    """Edge weights of the feature graph of Fi-GNN (Li, Cui, Wu, Zhang and Wang, "Fi-GNN: Modeling
    Feature Interactions via Graph Neural Networks for CTR Prediction", CIKM 2019), a fully
    connected graph without self-loops:

        A_{ij} = exp(LeakyReLU(w^T [e_i ; e_j])) / sum_{k != i} exp(LeakyReLU(w^T [e_i ; e_k])),  A_{ii} = 0

    ``w`` [2D] has no bias, LeakyReLU slope 0.01 (FuxiCTR). ``w^T [e_i ; e_j]`` is ``u^T e_i + v^T e_j``, so
    the F x F scores come from two [B, F] projections.

    Shape: ``[B, F, D]`` -> ``A`` ``[B, F, F]`` (row ``i``: the weights node ``i`` gives its neighbours).
    """

    def __init__(self, num_fields: int, embed_dim: int) -> None:
        super().__init__()
        if num_fields < 2:
            raise ValueError(f"FiGNN's feature graph needs at least 2 fields (nodes), got {num_fields}")
        self.score = nn.Linear(2 * embed_dim, 1, bias=False)  # w = [u ; v]
        self.register_buffer("self_loop", torch.eye(num_fields, dtype=torch.bool), persistent=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        u, v = self.score.weight[0].chunk(2)  # [D] each
        scores = (emb @ u).unsqueeze(2) + (emb @ v).unsqueeze(1)  # [B, F, 1] + [B, 1, F]
        scores = F.leaky_relu(scores, 0.01).masked_fill(self.self_loop, float("-inf"))
        return scores.softmax(dim=-1)  # [B, F, F]


class GraphPropagation(nn.Module):
    """One state aggregation of Fi-GNN ("edge-wise transformation"): node ``j`` sends
    ``W_out^j h_j``, node ``i`` weighs what it receives by ``A`` and transforms it with ``W_in^i``:

        a_i = W_in^i sum_{j != i} A_{ij} W_out^j h_j + b_p

    ``W_in, W_out`` [F, D, D] (one matrix per node), Xavier-normal initialized; ``b_p`` [D] starts at 0.

    Shape: ``A`` [B, F, F], ``h`` [B, F, D] -> ``a`` [B, F, D].
    """

    def __init__(self, num_fields: int, embed_dim: int) -> None:
        super().__init__()
        self.w_out = xavier_normal_stack(num_fields, embed_dim, embed_dim)  # [F, D, D]
        self.w_in = xavier_normal_stack(num_fields, embed_dim, embed_dim)
        self.bias = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, graph: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        sent = torch.einsum("fde,bfe->bfd", self.w_out, h)  # W_out^j h_j: [B, F, D]
        received = graph @ sent  # sum_j A_ij (.): [B, F, D]
        return torch.einsum("fde,bfe->bfd", self.w_in, received) + self.bias


class FiGNNLayer(nn.Module):
    """The gated graph network of Fi-GNN: ``T`` propagation steps over the attention graph of
    the input embeddings ``h^0 = e``,

        a^t = GraphPropagation_t(A, h^{t-1})
        h^t = GRU(a^t, h^{t-1})           (use_gru; else h^t = a^t + h^{t-1})
        h^t = h^t + e                     (use_residual)

    The GRU cell is shared by every node and step (the paper's state update); the propagation weights are
    one set per step, or one set reused by every step (``reuse_graph_layer``).

    Shape: ``[B, F, D]`` -> ``[B, F, D]``.
    """

    def __init__(self, num_fields: int, embed_dim: int, num_layers: int = 3, use_gru: bool = True,
                 use_residual: bool = True, reuse_graph_layer: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"gnn_layers must be >= 1, got {num_layers}")
        self.num_layers, self.use_residual = num_layers, use_residual
        self.graph = FieldGraphAttention(num_fields, embed_dim)
        self.propagation = nn.ModuleList(GraphPropagation(num_fields, embed_dim)
                                         for _ in range(1 if reuse_graph_layer else num_layers))
        self.gru = nn.GRUCell(embed_dim, embed_dim) if use_gru else None

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        graph = self.graph(emb)  # A: [B, F, F]
        h = emb
        for t in range(self.num_layers):
            a = self.propagation[t % len(self.propagation)](graph, h)  # [B, F, D]
            if self.gru is not None:
                h = self.gru(a.flatten(0, 1), h.flatten(0, 1)).view_as(h)  # every node is a GRU row
            else:
                h = a + h
            if self.use_residual:
                h = h + emb
        return h


class AttentionalScoring(nn.Module):
    """Attentional scoring layer of Fi-GNN: a score per node and an attention weight per node,

        y_i = w_1^T h_i,   (a_1 .. a_F) = sigmoid(W_2 [h_1 ; ... ; h_F]),   y = sum_i a_i y_i

    (FuxiCTR's form: both maps without bias, the weights computed from all node states together.)

    Shape: ``[B, F, D]`` -> ``[B, 1]``.
    """

    def __init__(self, num_fields: int, embed_dim: int) -> None:
        super().__init__()
        self.node_score = nn.Linear(embed_dim, 1, bias=False)  # w_1
        self.node_weight = nn.Linear(num_fields * embed_dim, num_fields, bias=False)  # W_2

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        scores = self.node_score(h).squeeze(-1)  # [B, F]
        weights = torch.sigmoid(self.node_weight(h.flatten(start_dim=1)))  # [B, F]
        return (weights * scores).sum(dim=1, keepdim=True)
