from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dataset.schema import Schema
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


def assign_fields(schema: Schema, user_fields: Sequence[str],
                  item_fields: Sequence[str]) -> tuple[list[int], list[int]]:
    """Column indices of the user-tower and item-tower sparse fields.

    Both empty: the first half of ``schema.sparse_fields`` is user, the rest item. One empty: it gets
    every field the other does not name. Unknown names, overlapping towers and an item tower without
    fields are errors.
    """
    names = schema.sparse_fields
    unknown = [name for name in (*user_fields, *item_fields) if name not in names]
    if unknown:
        raise ValueError(f"TwoTower: unknown field(s) {unknown} in --user_fields/--item_fields; "
                         f"valid sparse fields of this store: {', '.join(names)}")
    if not user_fields and not item_fields:
        half = len(names) // 2
        user, item = names[:half], names[half:]
    else:
        user = tuple(user_fields) or tuple(n for n in names if n not in item_fields)
        item = tuple(item_fields) or tuple(n for n in names if n not in user_fields)
    overlap = sorted(set(user) & set(item))
    if overlap:
        raise ValueError(f"TwoTower: field(s) {overlap} are in both user_fields and item_fields; "
                         "give each field to one tower only (--user_fields / --item_fields)")
    if not item:
        raise ValueError("TwoTower: the item tower has no fields; name some with --item_fields")
    return [names.index(n) for n in user], [names.index(n) for n in item]


@register
class TwoTower(CTRModel):
    """Two-tower model (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
    Recommendations", RecSys 2019; Huang et al., "Learning Deep Structured Semantic Models for
    Web Search using Clickthrough Data" (DSSM), CIKM 2013):

        u = normalize(MLP_user(concat(e_f : f in user fields) [, x_dense]))    [B, K]
        v = normalize(MLP_item(concat(e_f : f in item fields)))               [B, K]
        s(x, y) = <u, v> / tau                                               logit [B, 1]

    Dense features belong to the user tower (raw vector in ``dense_mode="vector"``, embedded fields in
    ``"embed"``). The towers end with a linear layer to ``tower_dim`` (K) before the L2 normalization.

    Loss (:meth:`loss`, called by the trainer instead of BCE): with ``in_batch_negatives=False`` plain
    BCE-with-logits on ``s``. With ``in_batch_negatives=True`` the paper's batch softmax
    (reward r_i = label; without its logQ sampling-bias correction, which needs item frequencies):

        L = -1/|Pos| sum_{i in Pos} log( exp(s(x_i, y_i)) / sum_{j in batch} exp(s(x_i, y_j)) )

    where Pos are the rows with label 1 and every item of the batch is a candidate; a batch without
    positives falls back to BCE. Under DDP the candidates are the rank's local batch. The logits then
    rank items (AUC is meaningful) but are not calibrated probabilities.

    DDP: :meth:`loss` uses the ``u``, ``v`` that :meth:`forward` kept on ``self`` (call it as
    ``ddp_model.module.loss(batch, logits)`` right after ``logits = ddp_model(batch)``). Running the
    towers again outside DDP's forward would use each parameter twice in one backward and break DDP's
    gradient all-reduce.

    Defaults: there is no BARS Criteo config for this retrieval model; towers 256-128 -> 64, ReLU,
    tau = 0.05 (the paper tunes tau; values near 0.05 are common for cosine-similarity towers).

    Shapes: embeddings [B, F, D]; towers [B, K]; output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, user_fields: tuple[str, ...] = (),
                 item_fields: tuple[str, ...] = (), hidden_units: Sequence[int] = (256, 128),
                 tower_dim: int = 64, activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
                 temperature: float = 0.05, in_batch_negatives: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if temperature <= 0:
            raise ValueError(f"TwoTower --temperature must be > 0, got {temperature}")
        user_idx, item_idx = assign_fields(schema, user_fields, item_fields)
        user_idx += list(range(schema.num_sparse, self.embedding.num_fields))  # pooled histories, embedded dense
        user_dim = len(user_idx) * embed_dim + self.embedding.dense_dim
        if user_dim == 0:
            raise ValueError("TwoTower: the user tower has no inputs (no user fields, no dense fields); "
                             "name some with --user_fields")
        self.register_buffer("user_idx", torch.tensor(user_idx, dtype=torch.long), persistent=False)
        self.register_buffer("item_idx", torch.tensor(item_idx, dtype=torch.long), persistent=False)
        self.user_tower = MLP(user_dim, hidden_units, activation, dropout, batch_norm, output_dim=tower_dim)
        self.item_tower = MLP(len(item_idx) * embed_dim, hidden_units, activation, dropout, batch_norm,
                              output_dim=tower_dim)
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self._towers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _user(self, emb: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = emb[:, self.user_idx].flatten(start_dim=1)  # [B, F_user * D]
        if self.embedding.dense_dim:
            x = torch.cat([x, batch["dense"]], dim=1)
        return F.normalize(self.user_tower(x), dim=-1)  # [B, K]

    def _item(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_tower(emb[:, self.item_idx].flatten(start_dim=1)), dim=-1)  # [B, K]

    def user_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalized user vectors ``u`` -> [B, K], for retrieval indexes."""
        return self._user(self.embedding(batch), batch)

    def item_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalized item vectors ``v`` -> [B, K], for retrieval indexes."""
        return self._item(self.embedding(batch))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        u, v = self._user(emb, batch), self._item(emb)  # [B, K] each
        self._towers = (u, v)
        return (u * v).sum(dim=1, keepdim=True) / self.temperature  # [B, 1]

    def loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Training loss of ``logits = self(batch)`` -> scalar (see the class docstring)."""
        towers, self._towers = self._towers, None
        label = batch["label"][:, :1]  # [B, 1]
        positive = label[:, 0] > 0.5  # [B]
        if not self.in_batch_negatives or not positive.any():
            return super().loss(batch, logits)
        if towers is None or towers[0].shape[0] != logits.shape[0]:
            raise RuntimeError("TwoTower.loss needs the tower outputs of the forward pass that produced "
                               "`logits`: call logits = model(batch) right before model.loss(batch, logits)")
        u, v = towers
        scores = u[positive] @ v.T / self.temperature  # [N_pos, B]: row i's candidates are all items
        return F.cross_entropy(scores, positive.nonzero().squeeze(1))  # target: the row's own item
