from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from layers.product import InnerProduct
from models.base import CTRModel
from models.registry import register


@register
class DLRM(CTRModel):
    """DLRM (Naumov et al., "Deep Learning Recommendation Model for Personalization and Recommendation Systems",
    arXiv:1906.00091, 2019), the model TorchRec ships as its reference (``torchrec.models.dlrm``): dense features
    go through a bottom MLP to one more D-vector, every pair of vectors is crossed by a dot product, and a top MLP
    reads the dense vector with the dots:

        z   = MLP_bottom(x_dense)                                   [D], every layer ReLU (the last one too)
        V   = [z, e_1, ..., e_F]                                    (without z when there is no raw dense vector)
        p   = (<v_i, v_j>)_{i<j}                                    F'(F'-1)/2 dots, :class:`layers.product.InnerProduct`
        y   = MLP_top([z, p])                                       last layer linear -> 1 logit

    Dense fields: in ``dense_mode="vector"`` they feed the bottom MLP (the paper's design); a store without dense
    fields, or ``dense_mode="embed"`` (dense fields already embedded as fields ``x_j v_j``), has no bottom MLP and
    the dots run over the field embeddings only.

    BARS publishes no Criteo_x4_001 DLRM run; defaults follow the paper's reference code for Criteo Kaggle
    (facebookresearch/dlrm, ``--arch-mlp-bot 13-512-256-64-16 --arch-mlp-top 512-256-1``, embedding 16): bottom
    512-256-64 -> D, top 512-256 -> 1, ReLU, no dropout, no batch norm.

    Shapes: x_dense [B, F_dense] -> z [B, D]; V [B, F', D], F' = F + 1 with a bottom MLP; p [B, F'(F'-1)/2];
    top input [B, D + F'(F'-1)/2] (or [B, F(F-1)/2]); logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, bottom_units: Sequence[int] = (512, 256, 64),
                 top_units: Sequence[int] = (512, 256), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        dense_dim = self.embedding.dense_dim
        self.bottom = MLP(dense_dim, [*bottom_units, embed_dim], activation, 0.0, batch_norm) if dense_dim else None
        num_vectors = self.embedding.num_fields + (1 if dense_dim else 0)
        if num_vectors < 2:
            raise ValueError(f"DLRM crosses pairs of vectors and needs at least 2, this schema gives {num_vectors}")
        self.interaction = InnerProduct(num_vectors)
        top_dim = self.interaction.num_pairs + (embed_dim if dense_dim else 0)
        self.top = MLP(top_dim, top_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        if self.bottom is None:
            return self.top(self.interaction(emb))  # [B, P] -> [B, 1]
        z = self.bottom(batch["dense"])  # [B, D]
        dots = self.interaction(torch.cat([z.unsqueeze(1), emb], dim=1))  # [B, F + 1, D] -> [B, P]
        return self.top(torch.cat([z, dots], dim=1))  # [B, D + P] -> [B, 1]
