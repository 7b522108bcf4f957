from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from layers.product import InnerProduct, OuterProduct
from models.base import CTRModel
from models.registry import register

PRODUCT_TYPES = ("inner", "outer")


@register
class PNN(CTRModel):
    """PNN (Qu et al., "Product-based Neural Networks for User Response Prediction", ICDM 2016):
    a product layer between the embeddings and the DNN,

        l_z = W_z ⊙ z,  z = concat(f_1 .. f_F)                      linear signals
        l_p = W_p ⊙ p,  p = [g(f_i, f_j)]_{i<j}                     quadratic signals
        l_1 = relu(l_z + l_p + b_1),  y = MLP(l_1)

    ``l_z + l_p + b_1`` is one linear layer over ``concat(z, p)``, so the model is an MLP over that
    concatenation. ``product_type="inner"`` (IPNN): ``g = <f_i, f_j>``; ``"outer"`` (OPNN):
    ``g = f_i^T K_ij f_j``, the outer product contracted with a learned kernel of ``kernel_type``
    mat / vec / num (see :class:`layers.product.OuterProduct`; ``kernel_type`` is unused for inner).

    Defaults follow the BARS Criteo_x4_001 IPNN config (hidden 1000-1000, ReLU, dropout 0.2, no BN).

    Shapes: embeddings [B, F, D]; products [B, F(F-1)/2]; DNN input [B, F*D (+ dense) + F(F-1)/2];
    output logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, product_type: str = "inner", kernel_type: str = "mat",
                 hidden_units: Sequence[int] = (1000, 1000), activation: str = "relu", dropout: float = 0.2,
                 batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if product_type not in PRODUCT_TYPES:
            raise ValueError(f"PNN product_type must be one of {PRODUCT_TYPES}, got {product_type!r}")
        num_fields = self.embedding.num_fields
        self.product = (InnerProduct(num_fields) if product_type == "inner"
                        else OuterProduct(num_fields, embed_dim, kernel_type))
        input_dim = self.embedding.output_dim + self.product.num_pairs
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        z = self.embedding.dnn_input(emb, batch)  # [B, F*D (+ dense)]
        p = self.product(emb)  # [B, P]
        return self.dnn(torch.cat([z, p], dim=1))  # [B, 1]
