"""Feature-interaction layers over field embeddings [B, F, D]: FM, pairwise products, AFM pooling, CIN."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FactorizationMachine(nn.Module):
    """Second-order FM term (Rendle, ICDM 2010, eq. 5), computed in O(F*D):

        sum_{i<j} <v_i, v_j> = 1/2 * sum_d [ (sum_i v_{i,d})^2 - sum_i v_{i,d}^2 ]

    The embeddings already carry the feature values (``x_i * v_i``), so this is the full pairwise term.
    Its gradient is written out (:class:`_PairSum`): ``d out_d / d v_{i,d} = sum_j v_{j,d} - v_{i,d}``.

    Shape: ``[B, F, D]`` -> ``[B, 1]`` (``reduce_sum=True``) or the bi-interaction vector ``[B, D]``.
    """

    def __init__(self, reduce_sum: bool = True) -> None:
        super().__init__()
        self.reduce_sum = reduce_sum

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and emb.requires_grad and not torch.jit.is_tracing():
            out = _PairSum.apply(emb)  # [B, D]
        else:  # the same arithmetic; a traced graph (export) cannot hold a Python autograd function
            out = _PairSum.value(emb, emb.sum(dim=1))
        return out.sum(dim=1, keepdim=True) if self.reduce_sum else out


class _PairSum(torch.autograd.Function):
    """``1/2 [(sum_i v_i)^2 - sum_i v_i^2]`` per dimension, [B, F, D] -> [B, D], with the closed-form backward
    ``grad_v_i = g ⊙ (sum_j v_j - v_i)``: one pass over [B, F, D] where autograd's graph of the formula makes
    several (the squares' products, the broadcast sum, their addition). DeepFM on one thread, batch 4096, 39
    fields, D = 16: README, "Training throughput"."""

    @staticmethod
    def value(emb: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """[B, F, D], its sum over fields [B, D] -> [B, D]."""
        return 0.5 * (total * total - (emb * emb).sum(dim=1))

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, emb: torch.Tensor) -> torch.Tensor:
        total = emb.sum(dim=1)  # [B, D]
        ctx.save_for_backward(emb, total)
        return _PairSum.value(emb, total)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        emb, total = ctx.saved_tensors
        grad = grad.unsqueeze(1)  # [B, 1, D]
        return torch.addcmul(total.unsqueeze(1) * grad, emb, grad, value=-1.0)  # g (sum_j v_j) - g v_i: [B, F, D]


def pair_indices(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All field pairs ``i < j`` in row-major order ``(0,1), (0,2), ..., (F-2,F-1)`` -> two int64 [P].

    ``P = F * (F - 1) / 2``. Raises if there is no pair to form.
    """
    if num_fields < 2:
        raise ValueError(f"pairwise interactions need at least 2 fields, got {num_fields}; "
                         "add fields to the schema (or use dense_mode='embed' to count dense fields)")
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
    return rows, cols


class PairwiseProduct(nn.Module):
    """Element-wise products of every field pair: ``p_{ij} = v_i ⊙ v_j`` for ``i < j``.

    The pair indices are computed once and kept as (non-persistent) buffers, so they follow
    ``.to(device)`` and cost nothing per batch. The products themselves are formed by left field: the pairs
    ``(i, i+1) .. (i, F-1)`` are a contiguous block of the pair order, ``v_i ⊙ [v_{i+1} .. v_{F-1}]``, one
    broadcast product of two slices. Gathering ``emb[:, rows] * emb[:, cols]`` instead made two [B, P, D]
    copies whose indexing backward (a serial scatter-add) took ~1.6x as long forward + backward on CPU
    (Criteo's 39 fields, batch 4096; measured in the README's "Pair layers, before and after").

    Shape: ``[B, F, D]`` -> ``[B, P, D]`` with ``P = F(F-1)/2``, pairs in :func:`pair_indices` order.

    Example:
        >>> pp = PairwiseProduct(num_fields=4)
        >>> pp(torch.randn(8, 4, 16)).shape
        torch.Size([8, 6, 16])
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = pair_indices(num_fields)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def num_pairs(self) -> int:
        return self.rows.numel()

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return left_blocks_product(emb[:, :-1], emb)  # [B, P, D]


def left_blocks_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left[:, i] ⊙ right[:, j]`` for every pair ``i < j``, in :func:`pair_indices` order: one broadcast
    product per left field ``i`` with the slice ``right[:, i+1:]``, concatenated.

    Shapes: ``left`` ``[B, F-1 | F, D]`` (a last row is never used), ``right`` ``[B, F, D]`` -> ``[B, P, D]``.
    """
    num_fields = right.shape[1]
    return torch.cat([left[:, i:i + 1] * right[:, i + 1:] for i in range(num_fields - 1)], dim=1)


def pair_matrix_left(emb: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    """``v_i W_ij`` for every pair ``i < j``, one block per left field ``i``: ``[B, F-1-i, D]`` for
    ``j = i+1 .. F-1``.

    ``weight`` ``[P, D, D']`` holds one matrix per pair in :func:`pair_indices` order, so the block of field
    ``i`` is one ``[B, D] @ [D, n*D']`` matmul (``n = F-1-i``) rather than a gathered [B, P, D] copy of the
    left members and a batched matmul over it. Shape: ``[B, F, D]`` -> ``F-1`` tensors ``[B, F-1-i, D']``.
    """
    batch, num_fields, dim = emb.shape
    out_dim = weight.shape[-1]
    blocks, start = [], 0
    for i in range(num_fields - 1):
        n = num_fields - 1 - i
        matrix = weight[start:start + n].permute(1, 0, 2).reshape(dim, n * out_dim)  # [D, n*D']
        blocks.append((emb[:, i] @ matrix).view(batch, n, out_dim))  # [B, n, D']
        start += n
    return blocks


def bilinear_pairs(emb: torch.Tensor, weight: torch.Tensor, reduce: bool = False) -> torch.Tensor:
    """``(v_i W_ij) ⊙ v_j`` for every pair ``i < j`` in :func:`pair_indices` order, from
    :func:`pair_matrix_left`'s blocks; with ``reduce``, its sum over the dimension ``v_i^T W_ij v_j``.

    Shapes: ``emb`` ``[B, F, D]``, ``weight`` ``[P, D, D]`` -> ``[B, P, D]``, or ``[B, P]`` with ``reduce``.
    """
    terms = [left * emb[:, i + 1:] for i, left in enumerate(pair_matrix_left(emb, weight))]  # [B, n, D] each
    return torch.cat([term.sum(dim=-1) for term in terms] if reduce else terms, dim=1)


class AttentionalPooling(nn.Module):
    """Attention-based pooling of pairwise interactions, the core of AFM (Xiao et al., "Attentional
    Factorization Machines: Learning the Weight of Feature Interactions via Attention Networks",
    IJCAI 2017):

        a'_{ij} = h^T ReLU(W (v_i ⊙ v_j) + b)             attention network, W: [A, D], b: [A], h: [A]
        a_{ij}  = exp(a'_{ij}) / sum_{(k,l)} exp(a'_{kl})  softmax over all pairs
        f_Att   = sum_{i<j} a_{ij} (v_i ⊙ v_j)             -> [B, D]

    The embeddings carry the feature values (``x_i v_i``), as in the paper. Dropout is applied to
    ``f_Att``, as in the authors' code; the model maps ``f_Att`` to a logit with ``p^T f_Att``.

    Shape: ``[B, F, D]`` -> ``[B, D]``; :meth:`attend` also returns the weights ``a`` [B, P].

    Example:
        >>> pool = AttentionalPooling(num_fields=5, embed_dim=16, attention_dim=8)
        >>> out, weights = pool.attend(torch.randn(4, 5, 16))
        >>> out.shape, weights.shape
        (torch.Size([4, 16]), torch.Size([4, 10]))
    """

    def __init__(self, num_fields: int, embed_dim: int, attention_dim: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.pairs = PairwiseProduct(num_fields)
        self.attention = nn.Sequential(nn.Linear(embed_dim, attention_dim), nn.ReLU(),
                                       nn.Linear(attention_dim, 1, bias=False))
        self.dropout = nn.Dropout(dropout)

    def attend(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> pooled ``f_Att`` [B, D] and attention weights [B, P] (each row sums to 1)."""
        products = self.pairs(emb)  # [B, P, D]
        weights = torch.softmax(self.attention(products).squeeze(-1), dim=1)  # [B, P]
        pooled = torch.einsum("bp,bpd->bd", weights, products)  # [B, D]
        return self.dropout(pooled), weights

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.attend(emb)[0]


class CIN(nn.Module):
    """Compressed Interaction Network of xDeepFM (Lian et al., "xDeepFM: Combining Explicit and Implicit
    Feature Interactions for Recommender Systems", KDD 2018, eq. 6 and sum pooling):

        z^k_{h,j,*} = x^{k-1}_{h,*} ⊙ x^0_{j,*}                    [B, H_{k-1}, m, D]  (outer product on fields)
        x^k_{c,*}   = sum_{h,j} W^{k,c}_{h,j} z^k_{h,j,*}            [B, H_k, D]         (H_k filters = 1x1 Conv1d)
        p^k_c       = sum_d x^k_{c,d}                               sum pooling over the embedding dimension
        p^+         = [p^1, ..., p^T]                               direct connections to the output

    ``m`` is the number of fields and ``H_0 = m``. With ``split_half`` (as in the authors' code), each
    hidden layer but the last sends half of its maps to the output and the other half to the next layer.
    No bias and no activation: exactly eq. 6.

    Shape: ``[B, m, D]`` -> ``[B, output_dim]``, ``output_dim = sum_k H_k`` where ``split_half`` halves
    every ``H_k`` but the last.

    Example:
        >>> cin = CIN(num_fields=6, layer_sizes=(8, 8, 4), split_half=True)
        >>> cin.output_dim, cin(torch.randn(2, 6, 16)).shape
        (12, torch.Size([2, 12]))
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int] = (64, 64, 64), split_half: bool = True) -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("CIN needs at least one layer; give layer_sizes, e.g. (64, 64, 64)")
        if split_half and any(h % 2 for h in layer_sizes[:-1]):
            raise ValueError(f"CIN layer_sizes {tuple(layer_sizes)} must be even (all but the last) with "
                             "split_half=True; use even sizes or split_half=False")
        self.convs = nn.ModuleList()
        self.direct_sizes: list[int] = []
        prev = num_fields
        for k, size in enumerate(layer_sizes):
            self.convs.append(nn.Conv1d(prev * num_fields, size, kernel_size=1, bias=False))
            split = split_half and k < len(layer_sizes) - 1
            self.direct_sizes.append(size // 2 if split else size)
            prev = size // 2 if split else size
        self.output_dim = sum(self.direct_sizes)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """Each embedding dimension ``d`` of each sample is one row: ``z^k`` of that row is the outer product
        ``x^{k-1}_{*,d} x^0_{*,d}^T`` (a [B*D] batch of [H_{k-1}, 1] @ [1, m] products), and the 1x1 convolution
        is one [B*D, H_{k-1}*m] @ [H_{k-1}*m, H_k] matmul with the conv's weight. The same sums as an einsum to
        [B, H_{k-1}, m, D] and ``Conv1d``, which took 2-2.6x as long forward + backward on CPU (a 64-map layer at 39
        fields, batch 4096); the outer product's backward is two batched matrix-vector products."""
        batch, num_fields, dim = x0.shape
        rows = x0.transpose(1, 2).reshape(batch * dim, num_fields)  # x^0 per (sample, dim): [B*D, m]
        x0_row, hidden, pooled = rows.unsqueeze(1), rows.unsqueeze(2), []  # [B*D, 1, m], [B*D, H_0, 1]
        for conv, direct in zip(self.convs, self.direct_sizes):
            z = torch.bmm(hidden, x0_row).flatten(1)  # z^k: [B*D, H_{k-1} * m], column h * m + j
            x = nn.functional.linear(z, conv.weight[:, :, 0])  # [B*D, H_k]
            if direct < x.shape[1]:  # split_half: first half feeds the next layer, second half the output
                hidden, x = torch.split(x, [x.shape[1] - direct, direct], dim=1)
            else:
                hidden = x
            hidden = hidden.unsqueeze(2)  # [B*D, H_k', 1]
            pooled.append(x.reshape(batch, dim, -1).sum(dim=1))  # sum over d: [B, direct]
        return torch.cat(pooled, dim=1)  # [B, output_dim]
