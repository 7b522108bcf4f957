from __future__ import annotations

import torch
from torch import nn

from dataset.schema import Schema
from layers.factorization import FieldWeightedFM
from models.base import CTRModel
from models.registry import register

LINEAR_TYPES = ("LW", "FiLV")


@register
class FwFM(CTRModel):
    """Field-weighted Factorization Machine (Pan et al., "Field-weighted Factorization Machines for Click-Through
    Rate Prediction in Display Advertising", WWW 2018): FM whose every pair is weighted by the strength of its
    field pair,

        y = w_0 + linear(x) + sum_{i<j} r_{F_i, F_j} <v_i, v_j>

    with the paper's linear terms ``linear_type``:

    * ``"LW"``: one weight per feature, ``sum_i w_{x_i}`` (plain first order; what BARS FwFM_criteo_x4_001 uses);
    * ``"FiLV"``: one vector per field, ``sum_i <v_i, w_{F_i}>`` (+ ``<w_dense, x_dense>`` in ``"vector"``
      mode), FuxiCTR's default.

    The paper's third variant, FeLV (a second D-wide vector per feature), is not offered: it needs a second
    embedding table of the shared embedding's size.

    Defaults: FiLV as in FuxiCTR's FwFM; BARS Criteo_x4_001 runs LW with embed_dim 16 and one L2 of 5e-6 on
    embeddings and weights alike (FuxiCTR's FwFM `regularizer`).
    Pure interaction model: ``dense_mode="embed"`` lets dense fields join the pairwise term.

    Shapes: embeddings [B, F, D]; pair products [B, P]; linear and pairwise terms [B, 1]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, linear_type: str = "FiLV") -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if linear_type not in LINEAR_TYPES:
            raise ValueError(f"FwFM --linear_type must be one of {LINEAR_TYPES}, got {linear_type!r}")
        self.linear_type = linear_type
        self.fwfm = FieldWeightedFM(self.embedding.num_fields)
        # FiLV: w_{F_i} for every field, w_dense and w_0 in one linear map of the flattened embeddings
        self.field_linear = nn.Linear(self.embedding.output_dim, 1) if linear_type == "FiLV" else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        if self.field_linear is None:
            linear = self.embedding.linear(batch)  # LW: [B, 1]
        else:
            linear = self.field_linear(self.embedding.dnn_input(emb, batch))  # FiLV: [B, 1]
        return linear + self.fwfm(emb)  # [B, 1]
