from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.factorization import FieldWiseBiInteraction
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register

FieldGroups = list[tuple[str, list[int]]]


def embedded_field_names(schema: Schema, dense_mode: str) -> list[str]:
    """Names of the fields of ``FeatureEmbedding(schema, dense_mode=...)(batch)`` [B, F, D], in its order."""
    names = [*schema.sparse_fields, *(s.name for s in schema.sequence_fields)]
    return names + list(schema.dense_fields) if dense_mode == "embed" else names


def default_field_groups(schema: Schema, dense_mode: str) -> FieldGroups:
    """FLEN's user / item / context groups, read from the schema:

    * user: the ``user_field`` and every behaviour history (a sequence field that shares its vocabulary with
      a sparse field, ``schema.histories()``);
    * item: the candidates of those histories (``item_id``, ``cate_id``);
    * context: every other embedded field (other sparse and sequence fields, dense fields in ``"embed"`` mode).

    Empty groups are dropped. With fewer than 2 groups left (a store without ``user_field`` and histories,
    such as Criteo, whose fields are anonymous), the fallback splits the fields in schema order into
    ``min(3, F)`` contiguous groups of near-equal size, named ``part1``, ``part2``, ``part3``.
    """
    names = embedded_field_names(schema, dense_mode)
    histories = schema.histories()
    user = ([schema.user_field] if schema.user_field else []) + [h for _, h in histories]
    item = [c for c, _ in histories if c not in user]
    item = list(dict.fromkeys(item))
    context = [n for n in names if n not in user and n not in item]
    groups = [(g, [names.index(n) for n in fields]) for g, fields in
              (("user", user), ("item", item), ("context", context)) if fields]
    if len(groups) >= 2:
        return groups
    parts = min(3, len(names))
    bounds = [round(k * len(names) / parts) for k in range(parts + 1)]
    return [(f"part{k + 1}", list(range(bounds[k], bounds[k + 1]))) for k in range(parts)]


def parse_field_groups(spec: str, schema: Schema, dense_mode: str) -> FieldGroups:
    """``"user:user_id,hist_item_id;item:item_id,cate_id"`` -> [(name, field indices)]. Embedded fields that
    no group names form one more group, ``other``. Unknown or repeated fields and empty groups are errors."""
    names = embedded_field_names(schema, dense_mode)
    groups: FieldGroups = []
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        group, sep, fields = part.partition(":")
        members = [f.strip() for f in fields.split(",") if f.strip()]
        if not sep or not group.strip() or not members:
            raise ValueError(f"FLEN --field_groups: {part!r} is not 'name:field,field,...'; "
                             "example: 'user:f1,f2;item:f3;context:f4'")
        unknown = [f for f in members if f not in names]
        if unknown:
            raise ValueError(f"FLEN --field_groups: unknown field(s) {unknown}; embedded fields of this store are "
                             f"{', '.join(names)} (dense fields count only with dense_mode='embed')")
        repeated = sorted(seen.intersection(members)) or sorted({f for f in members if members.count(f) > 1})
        if repeated:
            raise ValueError(f"FLEN --field_groups: field(s) {repeated} are in more than one group")
        seen.update(members)
        groups.append((group.strip(), [names.index(f) for f in members]))
    rest = [i for i, n in enumerate(names) if n not in seen]
    if rest:
        groups.append(("other", rest))
    return groups


@register
class FLEN(CTRModel):
    """FLEN (Chen, Zhan, Ci, Yang, Lin and Liu, "FLEN: Leveraging Field for Scalable CTR Prediction",
    DLP-KDD 2020, arXiv 1911.04690): fields are grouped (user / item / context); the field-wise bi-interaction
    crosses the group sums (MF) and the fields inside each group (FM), next to a DNN over all fields:

        h_FwBI = ReLU(W_FwBI [y_LR, h_MF + h_FM])                   [B, D + 1], W_FwBI: [D+1, D+1], no bias
        h_L    = MLP([v_1, ..., v_F, x_dense])                       [B, H]
        y      = w_F^T [h_FwBI, h_L]                                 [B, 1], no bias

    where ``y_LR`` is the first-order term and ``h_MF``, ``h_FM`` are
    :class:`layers.factorization.FieldWiseBiInteraction` (the layout of FuxiCTR's FLEN, the code behind the BARS
    result). The paper's DiceFactor dropout is not implemented (use ``dropout`` for the DNN).

    Field groups: ``field_groups=""`` derives user / item / context from the schema
    (:func:`default_field_groups`; anonymous stores such as Criteo fall back to three contiguous thirds);
    ``field_groups="user:f1,f2;item:f3;context:f4"`` sets them (fields named nowhere form a group ``other``).

    Defaults: the BARS FLEN_avazu_x4_001 configuration (DNN 2000x4, ReLU, no dropout, no batch norm, embedding
    L2 1e-9); BARS has no Criteo_x4_001 FLEN run.

    Shapes: embeddings [B, F, D]; group sums [B, M, D]; h_MF + h_FM [B, D]; h_FwBI [B, D + 1]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, field_groups: str = "",
                 hidden_units: Sequence[int] = (2000, 2000, 2000, 2000), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        groups = (parse_field_groups(field_groups, schema, dense_mode) if field_groups.strip()
                  else default_field_groups(schema, dense_mode))
        self.group_names = [name for name, _ in groups]
        self.fwbi = FieldWiseBiInteraction(self.embedding.num_fields, [fields for _, fields in groups])
        self.W_FwBI = nn.Linear(embed_dim + 1, embed_dim + 1, bias=False)
        self.dnn = MLP(self.embedding.output_dim, hidden_units, activation, dropout, batch_norm)
        self.w_F = nn.Linear(embed_dim + 1 + self.dnn.output_dim, 1, bias=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        h_fwbi = torch.relu(self.W_FwBI(torch.cat([self.embedding.linear(batch), self.fwbi(emb)], dim=1)))  # [B, D+1]
        h_l = self.dnn(self.embedding.dnn_input(emb, batch))  # [B, H]
        return self.w_F(torch.cat([h_fwbi, h_l], dim=1))  # [B, 1]
