"""The one embedding module every model shares."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import POOLINGS, Schema

DENSE_MODES = ("vector", "embed")


def field_offsets(vocab_sizes: Sequence[int]) -> torch.Tensor:
    """Start row of each block in a concatenated table: ``[0, v0, v0 + v1, ...]`` -> int64 [len]."""
    sizes = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.long)
    return torch.cumsum(sizes, dim=0)


class RowTable(nn.Embedding):
    """``nn.Embedding`` whose lookup on the CPU is ``index_select``: the same rows forward, and a backward that
    sums the rows' gradients into a zeroed [V, D] with ``index_add_``, in index order, where
    ``embedding_dense_backward`` scans every index once per block of rows. On one thread, the lookup and
    backward of a DeepFM batch (4,096 x 39 ids, a table of 87k rows, like bench_train.py's store) took 3.2 ms
    instead of 21 ms for the first-order table (D = 1) and 39 instead of 62 ms for D = 16 (README, "Training
    throughput", for the whole step). On CUDA it is
    ``nn.Embedding``'s own lookup: its sort-based backward is deterministic where ``index_add_``'s atomic
    adds are not. Parameters, state dict and ``isinstance(m, nn.Embedding)`` are ``nn.Embedding``'s.

    Shape: ids ``[*]`` (int64) -> ``[*, D]``.
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight.is_cuda or self.padding_idx is not None or self.max_norm is not None or self.sparse:
            return super().forward(ids)
        return self.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, self.embedding_dim)


class FeatureEmbedding(nn.Module):
    """Every vocabulary's embeddings in one concatenated table, the first-order term, sequence pooling
    and the dense block.

    Vocabulary ``v`` owns rows ``start[v] .. start[v] + size[v] - 1`` of one table ``E`` [sum(sizes), D];
    a field reads the rows of the vocabulary it names, so fields that share a vocabulary share rows
    (``item_id`` and its history ``hist_item_id``). All sparse fields are looked up with one
    ``embedding`` call (pytorch-fm style), all sequence positions with one more.

    Sequence fields (``batch["seq"]`` [B, L], lengths ``batch["seq_len"]`` [B, S]) come out two ways:

    * pooled, as one more field each, after the sparse fields: ``seq_pooling`` (a run's choice, default
      ``mean``) over the valid elements ``e_1..e_n`` (``n`` = the length; padding never counts), times
      their stored weights ``w_l`` if the field is weighted (DeepCTR's ``weight_name``; 1 otherwise):
      ``sum = sum_l w_l e_l``, ``mean = sum / n``, ``max = max_l w_l e_l`` elementwise; an empty sequence
      pools to 0. Every model consumes these as if they were categorical fields;
    * raw, :meth:`sequence`: ``[B, L_s, D]`` with its mask, for attention models.

    Dense features are handled one of two ways (``dense_mode``):

    * ``"vector"``: kept as a raw vector ``x_dense`` [B, F_dense] that :meth:`dnn_input` appends to the
      flattened embeddings (what DNN-based models feed their MLP); interaction layers see the id fields only.
    * ``"embed"``: each dense field ``j`` gets a vector ``v_j`` and is embedded as ``x_j * v_j``, so it
      takes part in every interaction as one more field (the last ones).

    First order (:meth:`linear`): ``b + sum_i w[x_i] + sum_s pool_s(w[seq_s]) + <w_dense, x_dense>`` -> [B, 1].

    Gradients are dense by default: they all-reduce under NCCL and gloo alike and work with every torch
    optimizer (Adam, AdamW, Adagrad, SGD, ...), but every optimizer step then reads and writes every row.
    :meth:`sparse_gradients` makes the two tables' gradients sparse (only the rows a batch touches: train.py
    ``--sparse_embed``), for the optimizers that take them (Adagrad, SGD).

    Attributes:
        num_fields: F, number of embedded fields (sparse, pooled sequences, dense ones in ``"embed"`` mode).
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
                 init_std: float = 1e-4, seq_pooling: str = "mean") -> None:
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"dense_mode must be one of {DENSE_MODES}, got {dense_mode!r}")
        self.embed_dim = embed_dim
        self.dense_mode = dense_mode
        self.seq_pooling = seq_pooling
        self.num_sparse = schema.num_sparse
        self.num_dense = schema.num_dense
        self.num_sequences = schema.num_sequences
        self.seq_slices = schema.seq_slices
        vocabs = schema.vocabs
        start = dict(zip(vocabs, field_offsets(list(vocabs.values())).tolist()))
        self.register_buffer("offsets", torch.tensor([start[v] for v in schema.sparse_vocabs], dtype=torch.long),
                             persistent=False)  # [F_sparse]
        self.field_sizes = [vocabs[v] for v in schema.sparse_vocabs]  # vocabulary size of each sparse field
        self._init_sequences(schema, start)
        total = sum(vocabs.values())
        self.table = RowTable(total, embed_dim)
        self.weight = RowTable(total, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.table.weight, std=init_std)
        nn.init.zeros_(self.weight.weight)
        embed_dense = self.num_dense > 0 and dense_mode == "embed"
        self.dense_table = nn.Parameter(torch.randn(self.num_dense, embed_dim) * init_std) if embed_dense else None
        self.dense_weight = nn.Parameter(torch.zeros(self.num_dense)) if self.num_dense else None
        self.num_fields = self.count_fields(schema, dense_mode)
        self.dense_dim = 0 if embed_dense else self.num_dense
        self.output_dim = self.num_fields * embed_dim + self.dense_dim

    @staticmethod
    def count_fields(schema: Schema, dense_mode: str) -> int:
        """F: sparse fields, pooled sequence fields, and the dense ones in ``"embed"`` mode."""
        return schema.num_sparse + schema.num_sequences + (schema.num_dense if dense_mode == "embed" else 0)

    def _init_sequences(self, schema: Schema, start: dict[str, int]) -> None:
        """Per position of ``batch["seq"]`` [L]: its table offset, its field, its index inside the field, and
        its column of ``batch["seq_weight"]`` (-1: unweighted)."""
        lens = [s.max_len for s in schema.sequence_fields]
        weight_col, col = [], 0
        for s in schema.sequence_fields:
            weight_col += list(range(col, col + s.max_len)) if s.weighted else [-1] * s.max_len
            col += s.max_len if s.weighted else 0
        buffers = {"seq_offsets": [start[s.vocab] for s in schema.sequence_fields for _ in range(s.max_len)],
                   "seq_field": [i for i, n in enumerate(lens) for _ in range(n)],
                   "seq_position": [p for n in lens for p in range(n)],
                   "seq_weight_col": weight_col}
        for name, values in buffers.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)
        self.weighted = col > 0
        self._subsets: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # see seq_subset

    @property
    def seq_pooling(self) -> str:
        return self._seq_pooling

    @seq_pooling.setter
    def seq_pooling(self, mode: str) -> None:
        if mode not in POOLINGS:
            raise ValueError(f"seq_pooling must be one of {POOLINGS}, got {mode!r}")
        self._seq_pooling = mode

    # -- lookups --------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> field embeddings [B, F, D]: sparse fields, pooled sequence fields, embedded dense fields."""
        return self.fields(batch, None)

    def fields(self, batch: dict[str, torch.Tensor], pooled: Sequence[str] | None = ()) -> torch.Tensor:
        """Like :meth:`forward`, but only the sequence fields named in ``pooled`` (None: all of them) are pooled
        into fields: -> [B, F_sparse + S' (+ F_dense in ``"embed"`` mode), D], pooled fields in schema order.
        For models that attend over some sequences (behaviour histories) and feed the others to their DNN."""
        emb = self.table(batch["sparse"] + self.offsets)  # [B, F_sparse, D]
        if pooled is None and self.num_sequences:  # every position: no column selection
            values = self.table(batch["seq"] + self.seq_offsets)  # [B, L, D]
            emb = torch.cat([emb, self.pool(values, batch)], dim=1)  # [B, F_sparse + S, D]
        elif pooled:
            cols = self.seq_subset(pooled)[0]  # [L']
            values = self.table(batch["seq"][:, cols] + self.seq_offsets[cols])  # [B, L', D]
            emb = torch.cat([emb, self.pool(values, batch, pooled)], dim=1)  # [B, F_sparse + S', D]
        if self.dense_table is not None:
            dense = batch["dense"].unsqueeze(-1) * self.dense_table  # [B, F_dense, 1] * [F_dense, D]
            emb = torch.cat([emb, dense], dim=1)
        return emb

    def seq_subset(self, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Index tensors of some sequence fields (schema order, whatever the order of ``names``), made once
        per device: their columns of ``batch["seq"]`` [L'], the field of each column renumbered 0..S'-1 [L'],
        and their field numbers in the schema [S']."""
        key = (tuple(sorted(names)), self.seq_position.device)
        if key not in self._subsets:
            unknown = set(names) - set(self.seq_slices)
            if unknown:
                raise ValueError(f"unknown sequence field(s) {sorted(unknown)}; this schema has "
                                 f"{list(self.seq_slices)}")
            kept = [i for i, name in enumerate(self.seq_slices) if name in names]
            slices = list(self.seq_slices.values())
            cols = [c for i in kept for c in range(slices[i].start, slices[i].stop)]
            field = [j for j, i in enumerate(kept) for _ in range(slices[i].stop - slices[i].start)]
            self._subsets[key] = tuple(torch.tensor(x, dtype=torch.long, device=key[1]) for x in (cols, field, kept))
        return self._subsets[key]

    def sequence(self, batch: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw embeddings of one sequence field and its mask: -> [B, L_s, D], bool [B, L_s] (True: a
        valid element). Padded positions hold the embedding of id 0: use the mask."""
        cols = self.seq_slices[name]
        emb = self.table(batch["seq"][:, cols] + self.seq_offsets[cols])  # [B, L_s, D]
        return emb, self.seq_mask(batch)[:, cols]

    def seq_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """bool [B, L]: position ``l`` of its field is inside that row's length."""
        return self.seq_position < batch["seq_len"][:, self.seq_field]

    def pool(self, values: torch.Tensor, batch: dict[str, torch.Tensor],
             names: Sequence[str] | None = None) -> torch.Tensor:
        """Per-position vectors of every sequence field [B, L, K] -> one per field [B, S, K], pooled over the
        valid elements by :attr:`seq_pooling`, weighted by ``batch["seq_weight"]`` where a field is weighted.
        With ``names``, ``values`` holds only the positions of those fields (``batch["seq"][:, cols]``, ``cols``
        from :meth:`seq_subset`) [B, L', K], pooled -> [B, S', K] in schema order."""
        mask = self.seq_mask(batch)  # [B, L]
        field, weight_col, lengths = self.seq_field, self.seq_weight_col, batch["seq_len"]
        if names is not None:
            cols, field, kept = self.seq_subset(names)
            mask, weight_col, lengths = mask[:, cols], weight_col[cols], lengths[:, kept]
        weight = mask.to(values.dtype)
        if self.weighted:
            stored = batch["seq_weight"][:, weight_col.clamp(min=0)].to(values.dtype)  # [B, L]
            weight = weight * torch.where(weight_col >= 0, stored, torch.ones_like(stored))
        values = values * weight.unsqueeze(-1)  # padding -> 0
        b, _, k = values.shape
        num_fields = lengths.shape[1]
        index = field.view(1, -1, 1).expand_as(values)
        if self.seq_pooling == "max":
            values = values.masked_fill(~mask.unsqueeze(-1), float("-inf"))
            pooled = values.new_full((b, num_fields, k), float("-inf"))
            pooled = pooled.scatter_reduce(1, index, values, "amax")
            return pooled.masked_fill(lengths.unsqueeze(-1) == 0, 0.0)  # empty sequences -> 0
        pooled = values.new_zeros((b, num_fields, k)).scatter_add(1, index, values)  # [B, S, K]
        if self.seq_pooling == "mean":
            pooled = pooled / lengths.clamp(min=1).unsqueeze(-1).to(values.dtype)
        return pooled

    def linear(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """First-order term -> [B, 1]."""
        out = self.weight(batch["sparse"] + self.offsets).sum(dim=1) + self.bias  # [B, 1]
        if self.num_sequences:
            out = out + self.pool(self.weight(batch["seq"] + self.seq_offsets), batch).sum(dim=1)  # [B, S, 1]
        if self.dense_weight is not None:
            out = out + batch["dense"] @ self.dense_weight.unsqueeze(1)
        return out

    def dnn_input(self, emb: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flattened embeddings [B, F, D] plus the raw dense vector in ``"vector"`` mode -> [B, output_dim]."""
        flat = emb.flatten(start_dim=1)
        return torch.cat([flat, batch["dense"]], dim=1) if self.dense_dim else flat

    def l2_penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared L2 norm of the embedding rows this batch touches (sparse ids and valid sequence
        elements), averaged over the batch -> scalar.

        The trainer adds ``embed_l2 * l2_penalty(batch)`` to the loss: regularizing only the rows in use
        is what makes L2 on a 10^7-row table affordable (the usual CTR practice, e.g. DeepCTR/FuxiCTR's
        batch-aware regularization).
        """
        ids = batch["sparse"] + self.offsets
        penalty = self.table(ids).pow(2).sum() + self.weight(ids).pow(2).sum()
        if self.num_sequences:
            seq = batch["seq"] + self.seq_offsets
            mask = self.seq_mask(batch).unsqueeze(-1)
            penalty = penalty + (self.table(seq).pow(2) * mask).sum() + (self.weight(seq).pow(2) * mask).sum()
        return penalty / batch["sparse"].shape[0]

    def l2_table_penalty(self) -> torch.Tensor:
        """Half the squared L2 norm of every table, whatever the batch -> scalar:
        ``1/2 (||E||^2 + ||w||^2 + ||V_dense||^2 + ||w_dense||^2)`` (the bias is not a table).

        FuxiCTR's ``embedding_regularizer`` (``lambda / p * ||W||_p^p`` per embedding parameter, p = 2 for a
        float lambda; fuxictr/pytorch/models/base_model.py ``add_regularization`` in v1.x, rank_model.py
        ``regularization_loss`` in v2.x): the trainer adds ``embed_l2 * l2_table_penalty()`` to the loss with
        ``--embed_l2_mode table``. Every row decays every step, touched or not.
        """
        squares = [p.pow(2).sum() for name, p in self.named_parameters() if name != "bias"]
        return 0.5 * torch.stack(squares).sum()

    # -- rows of given ids: embeddings in and out ------------------------------------------------------

    def field_rows(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows of :attr:`table` that hold sparse field ``field``'s ids: int64 [n] -> int64 [n]."""
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.field_sizes[field]):
            raise ValueError(f"ids of sparse field {field} must be in [0, {self.field_sizes[field]})")
        return ids.to(self.offsets.device) + self.offsets[field]

    def field_vectors(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of sparse field ``field``'s ids: int64 [n] -> [n, D] (a detached copy)."""
        return self.table.weight.detach()[self.field_rows(field, ids)].clone()

    @torch.no_grad()
    def load_field_vectors(self, field: int, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Put ``vectors`` [n, D] in the rows of sparse field ``field``'s ids [n] (pretrained init); every
        other row keeps its value. Fields sharing the vocabulary read the same rows."""
        if vectors.shape != (ids.numel(), self.embed_dim):
            raise ValueError(f"expected vectors of shape ({ids.numel()}, {self.embed_dim}), got {tuple(vectors.shape)}")
        weight = self.table.weight
        weight[self.field_rows(field, ids)] = vectors.to(weight.device, weight.dtype)

    def sparse_gradients(self, enabled: bool = True) -> None:
        """Give :attr:`table` and :attr:`weight` sparse gradients (``nn.Embedding(sparse=True)``): a backward
        pass yields the touched rows only, ``[V, D]`` as a sparse COO tensor, and an optimizer that takes
        them (Adagrad, SGD) updates those rows only. The lookup is then ``nn.Embedding``'s on every device."""
        self.table.sparse = self.weight.sparse = enabled

    def freeze_fields(self, fields: Sequence[int]) -> None:
        """Keep every row of these sparse fields' vocabularies fixed: a hook zeroes those rows of
        :attr:`table`'s gradient, so whatever the loss (L2 terms included) they get no gradient, Adam's
        moments of them stay 0 and the rows stay bit-identical. A vocabulary shared by several fields is
        frozen for all of them (the rows are the same). The first-order table is not frozen."""
        rows = [torch.arange(self.field_sizes[f]) + int(self.offsets[f]) for f in fields]
        if not rows:
            return
        frozen = torch.unique(torch.cat(rows)).to(self.table.weight.device)  # [R]

        def zero_frozen(grad: torch.Tensor) -> torch.Tensor:
            if grad.is_sparse:  # --sparse_embed: drop the frozen rows' entries
                grad = grad.coalesce()
                keep = ~torch.isin(grad.indices()[0], frozen)  # [nnz]
                return torch.sparse_coo_tensor(grad.indices()[:, keep], grad.values()[keep], grad.shape)
            return grad.index_fill(0, frozen, 0.0)

        self.table.weight.register_hook(zero_frozen)
