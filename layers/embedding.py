"""The one embedding module every model shares."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema

DENSE_MODES = ("vector", "embed")


def field_offsets(vocab_sizes: Sequence[int]) -> torch.Tensor:
    """Start row of each field in a concatenated table: ``[0, v0, v0 + v1, ...]`` -> int64 [F]."""
    sizes = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.long)
    return torch.cumsum(sizes, dim=0)


class FeatureEmbedding(nn.Module):
    """All sparse-field embeddings in one concatenated table, the first-order term, and the dense block.

    Sparse field ``i`` owns rows ``offsets[i] .. offsets[i] + vocab_sizes[i] - 1`` of one table
    ``E`` [sum(vocab), D], so all fields are looked up with a single ``embedding`` call (pytorch-fm style).
    Dense features are handled one of two ways (``dense_mode``):

    * ``"vector"``: kept as a raw vector ``x_dense`` [B, F_dense] that :meth:`dnn_input` appends to the
      flattened embeddings (what DNN-based models feed their MLP); interaction layers see sparse fields only.
    * ``"embed"``: each dense field ``j`` gets a vector ``v_j`` and is embedded as ``x_j * v_j``, so it
      takes part in every interaction as one more field.

    First order (:meth:`linear`): ``b + sum_i w[offsets[i] + x_i] + <w_dense, x_dense>`` -> [B, 1].

    Gradients are dense (``sparse=False``): they all-reduce under NCCL and gloo alike and work with
    every torch optimizer (Adam, AdamW, Adagrad, SGD, ...).

    Attributes:
        num_fields: F, number of embedded fields (sparse, plus dense ones in ``"embed"`` mode).
        embed_dim: D.
        dense_dim: width of the raw dense vector that :meth:`dnn_input` appends (0 in ``"embed"`` mode).
        output_dim: ``F * D + dense_dim``, the width of :meth:`dnn_input`.

    Example:
        >>> schema = Schema(("C1", "C2"), (10, 20), dense_fields=("I1",))
        >>> emb = FeatureEmbedding(schema, embed_dim=4)
        >>> batch = {"sparse": torch.tensor([[1, 2]]), "dense": torch.tensor([[0.5]])}
        >>> emb(batch).shape, emb.linear(batch).shape, emb.dnn_input(emb(batch), batch).shape
        (torch.Size([1, 2, 4]), torch.Size([1, 1]), torch.Size([1, 9]))
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 init_std: float = 1e-4) -> None:
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"dense_mode must be one of {DENSE_MODES}, got {dense_mode!r}")
        self.embed_dim = embed_dim
        self.dense_mode = dense_mode
        self.num_sparse = schema.num_sparse
        self.num_dense = schema.num_dense
        total = sum(schema.vocab_sizes)
        self.register_buffer("offsets", field_offsets(schema.vocab_sizes), persistent=False)
        self.table = nn.Embedding(total, embed_dim)
        self.weight = nn.Embedding(total, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.table.weight, std=init_std)
        nn.init.zeros_(self.weight.weight)
        embed_dense = self.num_dense > 0 and dense_mode == "embed"
        self.dense_table = nn.Parameter(torch.randn(self.num_dense, embed_dim) * init_std) if embed_dense else None
        self.dense_weight = nn.Parameter(torch.zeros(self.num_dense)) if self.num_dense else None
        self.num_fields = self.num_sparse + (self.num_dense if embed_dense else 0)
        self.dense_dim = 0 if embed_dense else self.num_dense
        self.output_dim = self.num_fields * embed_dim + self.dense_dim

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> field embeddings [B, F, D]."""
        emb = self.table(batch["sparse"] + self.offsets)  # [B, F_sparse, D]
        if self.dense_table is not None:
            dense = batch["dense"].unsqueeze(-1) * self.dense_table  # [B, F_dense, 1] * [F_dense, D]
            emb = torch.cat([emb, dense], dim=1)
        return emb

    def linear(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """First-order term -> [B, 1]."""
        out = self.weight(batch["sparse"] + self.offsets).sum(dim=1) + self.bias  # [B, 1]
        if self.dense_weight is not None:
            out = out + batch["dense"] @ self.dense_weight.unsqueeze(1)
        return out

    def dnn_input(self, emb: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flattened embeddings [B, F, D] plus the raw dense vector in ``"vector"`` mode -> [B, output_dim]."""
        flat = emb.flatten(start_dim=1)
        return torch.cat([flat, batch["dense"]], dim=1) if self.dense_dim else flat

    def l2_penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared L2 norm of the embedding rows this batch touches, averaged over the batch -> scalar.

        The trainer adds ``embed_l2 * l2_penalty(batch)`` to the loss: regularizing only the rows in use
        is what makes L2 on a 10^7-row table affordable (the usual CTR practice, e.g. DeepCTR/FuxiCTR's
        batch-aware regularization).
        """
        ids = batch["sparse"] + self.offsets
        penalty = self.table(ids).pow(2).sum() + self.weight(ids).pow(2).sum()
        return penalty / batch["sparse"].shape[0]
