from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.conv import FeatureGeneration
from layers.mlp import MLP
from layers.product import InnerProduct
from models.base import CTRModel
from models.registry import register


@register
class FGCNN(CTRModel):
    """FGCNN (Liu, Tang, Chen, Yu, Guo and Zhang, "Feature Generation by Convolutional Neural Network for
    Click-Through Rate Prediction", WWW 2019): a CNN with recombination layers generates new feature
    embeddings from the raw ones (:class:`layers.conv.FeatureGeneration`), then an IPNN classifier
    reads raw and generated features together:

        E' = [e_1, ..., e_F, g_1, ..., g_G],   (g_1..g_G) = FeatureGeneration(e_1..e_F)
        logit = MLP([vec(E'), x_dense, <f_i, f_j> for every pair i < j of E'])

    Both parts read the shared embedding (FuxiCTR, which BARS ran, gives feature generation its own table,
    ``share_embedding: false``; this repo has one embedding module per model).

    Defaults follow the BARS Criteo_x4_001 FGCNN config (FGCNN_criteo_x4_001_4832442e): conv channels
    38-40-42-44, kernel height 9, pooling 2, 3 recombined maps per layer, tanh, conv batch norm; DNN
    1000x3, ReLU, no dropout, no BN (also embedding L2 1e-5, batch 5000, lr 1e-3).

    Shapes: embeddings [B, F, D]; generated [B, G, D]; products [B, (F+G)(F+G-1)/2];
    DNN input [B, (F+G)*D (+ dense) + products]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, channels: Sequence[int] = (38, 40, 42, 44), kernel_heights: int = 9,
                 pooling_sizes: int = 2, recombined_channels: int = 3, conv_activation: str = "tanh",
                 conv_batch_norm: bool = True, hidden_units: Sequence[int] = (1000, 1000, 1000),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        num_fields = self.embedding.num_fields
        self.generation = FeatureGeneration(num_fields, embed_dim, channels, kernel_heights, pooling_sizes,
                                            recombined_channels, conv_activation, conv_batch_norm)
        self.product = InnerProduct(num_fields + self.generation.num_new_fields)
        input_dim = self.embedding.output_dim + self.generation.num_new_fields * embed_dim + self.product.num_pairs
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        features = torch.cat([emb, self.generation(emb)], dim=1)  # [B, F + G, D]
        z = self.embedding.dnn_input(features, batch)  # [B, (F+G)*D (+ dense)]
        return self.dnn(torch.cat([z, self.product(features)], dim=1))  # [B, 1]
