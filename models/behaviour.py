"""What the behaviour-sequence models (DIN, DIEN, BST, DSIN) share: their candidate and history fields, found
in the schema, embedded; and every other field, for their DNN."""
from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from models.base import CTRModel

SEQUENCE_STORES = ("`python preprocess.py amazon --input ../shared/data/amazon/Beauty.txt` (Amazon Beauty) and "
                   "`python preprocess.py synthetic_behaviour` (generated behaviours with sessions)")


def behaviour_groups(schema: Schema) -> list[tuple[list[str], list[str]]]:
    """The behaviour sequences of a store, each as (candidate sparse fields, their history sequence fields):
    the pairs of ``schema.histories()`` (a sequence field that shares its vocabulary with a sparse field),
    grouped by ``max_len``, since the fields of one behaviour (``hist_item_id``, ``hist_cate_id``) are cut to
    the same length."""
    groups: dict[int, tuple[list[str], list[str]]] = {}
    max_len = {s.name: s.max_len for s in schema.sequence_fields}
    for candidate, history in schema.histories():
        candidates, histories = groups.setdefault(max_len[history], ([], []))
        candidates.append(candidate)
        histories.append(history)
    return list(groups.values())


class BehaviourModel(CTRModel):
    """Base of the models that attend over behaviour histories (``needs_sequences``: the generic model tests
    build them on a sequence store).

    For every behaviour sequence ``g`` of the store (:func:`behaviour_groups`; Amazon has one: item and
    category) the candidate and each behaviour are their fields' embeddings concatenated along D, as the
    papers do (item ⊕ category): candidate ``e_a`` [B, D_g], history ``e_b`` [B, L_g, D_g] with its mask
    [B, L_g] (that of the group's first field: the fields of one behaviour share their lengths),
    ``D_g = fields * D``. Every other input goes to the DNN as in DeepCTR's DIN: all sparse fields (the
    candidate's too), the pooled sequence fields that are no history (genres, attributes), the dense fields;
    with ``history_sum`` also, per behaviour sequence, what the authors' code feeds DIN's and DIEN's DNN
    (mouna99/dien, ``Model_DIN``, ``Model_DIN_V2_Gru_Vec_attGru_Neg``): the sum-pooled history
    ``s_g = sum_j e_b[j]`` over the valid steps and its product with the candidate ``e_a ⊙ s_g``. In all
    ``other_dim`` wide.

    A store without histories is a ValueError that names the stores that have them.
    """

    needs_sequences = True

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector", embed_init_std: float = 1e-4,
                 consumed: Sequence[str] = (), history_sum: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.groups = behaviour_groups(schema)
        if not self.groups:
            names = [s.name for s in schema.sequence_fields]
            raise ValueError(f"{type(self).__name__} attends over behaviour histories: sequence fields that share a "
                             f"vocabulary with a sparse field (hist_item_id -> item_id), and this store has none "
                             f"(sequence fields: {names or 'none'}). Stores that have them: {SEQUENCE_STORES}")
        used = {h for _, histories in self.groups for h in histories} | set(consumed)
        self.pooled = [s.name for s in schema.sequence_fields if s.name not in used]
        for g, (candidates, _) in enumerate(self.groups):
            index = torch.tensor([schema.sparse_fields.index(c) for c in candidates], dtype=torch.long)
            self.register_buffer(f"candidates_{g}", index, persistent=False)
        self.behaviour_dims = [len(histories) * embed_dim for _, histories in self.groups]  # D_g
        max_len = {s.name: s.max_len for s in schema.sequence_fields}
        self.behaviour_lens = [max_len[histories[0]] for _, histories in self.groups]  # L_g
        fields = schema.num_sparse + len(self.pooled) + (schema.num_dense if dense_mode == "embed" else 0)
        self.history_sum = history_sum
        self.other_dim = (fields * embed_dim + self.embedding.dense_dim
                          + (2 * sum(self.behaviour_dims) if history_sum else 0))

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """-> the other fields flattened [B, other_dim] (with ``history_sum``, each sequence's ``[s_g, e_a ⊙ s_g]``
        last), and per behaviour sequence (candidate [B, D_g], history [B, L_g, D_g], mask bool [B, L_g])."""
        emb = self.embedding.fields(batch, self.pooled)  # [B, F', D]: sparse fields first
        behaviours = []
        for g, (_, histories) in enumerate(self.groups):
            candidate = emb[:, getattr(self, f"candidates_{g}")].flatten(start_dim=1)  # [B, D_g]
            seqs = [self.embedding.sequence(batch, name) for name in histories]  # ([B, L_g, D], [B, L_g]) each
            behaviours.append((candidate, torch.cat([s for s, _ in seqs], dim=-1), seqs[0][1]))
        x = self.embedding.dnn_input(emb, batch)  # [B, other fields * D + dense]
        if self.history_sum:
            sums = [(history * mask.unsqueeze(-1).to(history.dtype)).sum(dim=1) for _, history, mask in behaviours]
            x = torch.cat([x, *(t for (candidate, _, _), s in zip(behaviours, sums) for t in (s, candidate * s))],
                          dim=1)  # [B, other_dim]
        return x, behaviours
