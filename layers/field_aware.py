"""Field-aware embeddings (FFM, ONN): one vector per (feature, field), in one concatenated table."""
from __future__ import annotations

import torch

from dataset.schema import Schema
from layers.embedding import FeatureEmbedding
from layers.interaction import pair_indices


class FieldAwareEmbedding(FeatureEmbedding):
    r"""Field-aware embeddings of FFM (Juan et al., "Field-aware Factorization Machines for CTR Prediction",
    RecSys 2016, eq. 3) and their pairwise inner products:

        phi_FFM = sum_{i<j} <v_{i, f_j}, v_{j, f_i}>

    where ``v_{i, f_j}`` [D] is the vector the feature of field ``i`` uses against field ``j``. Every feature
    owns ``F`` such vectors, stored side by side as one row of a single table ``[sum(vocab), F*D]`` looked
    up with the schema offsets: this *is* a :class:`layers.embedding.FeatureEmbedding` of width ``F*D``, so
    a model installs it as ``self.embedding`` and keeps ``linear``, ``l2_penalty`` and ``dnn_input``.
    Dense fields follow ``dense_mode`` as there (``"embed"``: one more field, ``x_j * v_j``).

    The diagonal ``v_{i, f_i}`` never enters FFM; ONN (Yang et al., "Operation-aware Neural Networks for
    User Response Prediction", Neural Networks 2020, arXiv 2019) uses it as the *copy* embedding and the
    off-diagonal vectors as its operation-aware embeddings for the inner products (FuxiCTR's ONNv2 layout).

    Attributes (as in FeatureEmbedding): ``num_fields`` F, ``embed_dim`` D (one vector), ``dense_dim``,
    ``output_dim = F*D + dense_dim``, the width of ``dnn_input`` applied to :meth:`own_field` vectors.

    Shape: :meth:`forward` batch -> ``[B, F, F, D]`` (``[:, i, j]`` = ``v_{i, f_j}``); :meth:`inner_products`
    that -> ``[B, P]`` with ``P = F(F-1)/2`` in :func:`layers.interaction.pair_indices` order;
    :meth:`own_field` that -> ``[B, F, D]``.

    Example:
        >>> schema = Schema(("C1", "C2", "C3"), (10, 20, 5))
        >>> ffm = FieldAwareEmbedding(schema, embed_dim=4)
        >>> emb = ffm({"sparse": torch.tensor([[1, 2, 3]]), "dense": torch.zeros(1, 0)})
        >>> emb.shape, ffm.inner_products(emb).shape, ffm.own_field(emb).shape
        (torch.Size([1, 3, 3, 4]), torch.Size([1, 3]), torch.Size([1, 3, 4]))
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 init_std: float = 1e-4) -> None:
        num_fields = self.count_fields(schema, dense_mode)
        super().__init__(schema, num_fields * embed_dim, dense_mode, init_std)
        self.embed_dim = embed_dim
        self.output_dim = self.num_fields * embed_dim + self.dense_dim
        rows, cols = pair_indices(self.num_fields)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def num_pairs(self) -> int:
        return self.rows.numel()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> field-aware embeddings [B, F, F, D]."""
        emb = super().forward(batch)  # [B, F, F*D]
        return emb.view(emb.shape[0], self.num_fields, self.num_fields, self.embed_dim)

    def inner_products(self, field_emb: torch.Tensor) -> torch.Tensor:
        """``<v_{i, f_j}, v_{j, f_i}>`` for every pair i < j: [B, F, F, D] -> [B, P]."""
        return (field_emb[:, self.rows, self.cols] * field_emb[:, self.cols, self.rows]).sum(dim=-1)

    def own_field(self, field_emb: torch.Tensor) -> torch.Tensor:
        """The diagonal ``v_{i, f_i}`` of every field: [B, F, F, D] -> [B, F, D]."""
        return field_emb.diagonal(dim1=1, dim2=2).transpose(1, 2)
