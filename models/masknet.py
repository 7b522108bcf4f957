from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.gating import MaskBlock
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register

STRUCTURES = ("parallel", "serial")


@register
class MaskNet(CTRModel):
    """MaskNet (Wang, She, Zhang, "MaskNet: Introducing Feature-Wise Multiplication to CTR Ranking Models by
    Instance-Guided Mask", DLP-KDD 2021): MaskBlocks (:class:`layers.gating.MaskBlock`) whose instance-guided
    mask, computed from the embeddings ``V_emb``, re-weights the block input element-wise:

        MaskBlock(V_emb, V_hidden) = act(LN(W_h (V_mask(V_emb) ⊙ V_hidden)))
        V_emb = [e_1, ..., e_F, x_dense],  V_hidden = V_emb with each e_i layer-normalized if embed_layer_norm
        "serial":   V_l = MaskBlock_l(V_emb, V_{l-1}),  V_0 = V_hidden,  widths hidden_units;  y = w^T V_L + b
        "parallel": y = MLP([MaskBlock_1(V_emb, V_hidden), ..., MaskBlock_K(V_emb, V_hidden)])
                    K = num_blocks blocks of width block_dim, MLP hidden_units -> 1

    Defaults follow the BARS Criteo_x4_001 MaskNet config (MaskNet_criteo_x4_001_018_ccc857cd): parallel, 2 blocks
    of 500, reduction_ratio 0.1 (aggregation width = 0.1 x mask width, FuxiCTR's convention), DNN 1000x5 ReLU,
    dropout 0.3, and no layer norm on the embeddings or in the blocks (the paper uses both; set layer_norm and
    embed_layer_norm to get them).

    Shapes: V_emb, V_hidden [B, d], d = embedding.output_dim; serial block l [B, hidden_units[l]]; parallel blocks
    [B, num_blocks * block_dim]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, structure: str = "parallel", num_blocks: int = 2,
                 block_dim: int = 500, reduction_ratio: float = 0.1,
                 hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000), activation: str = "relu",
                 dropout: float = 0.3, layer_norm: bool = False, embed_layer_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if structure not in STRUCTURES:
            raise ValueError(f"MaskNet structure must be one of {STRUCTURES}, got {structure!r}")
        if structure == "parallel" and num_blocks < 1:
            raise ValueError(f"MaskNet num_blocks must be >= 1, got {num_blocks}")
        if structure == "serial" and not hidden_units:
            raise ValueError("serial MaskNet needs at least one block: hidden_units is empty")
        d = self.embedding.output_dim
        self.structure = structure
        self.embed_norm = None
        if embed_layer_norm:  # layer norm of each field's embedding, with its own affine per field
            self.embed_norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
            self.norm_weight = nn.Parameter(torch.ones(self.embedding.num_fields, embed_dim))
            self.norm_bias = nn.Parameter(torch.zeros(self.embedding.num_fields, embed_dim))
        if structure == "serial":
            widths = [d, *hidden_units]
            self.blocks = nn.ModuleList(MaskBlock(d, widths[i], widths[i + 1], reduction_ratio, activation, dropout,
                                                  layer_norm) for i in range(len(hidden_units)))
            self.head = nn.Linear(widths[-1], 1)
        else:
            self.blocks = nn.ModuleList(MaskBlock(d, d, block_dim, reduction_ratio, activation, dropout, layer_norm)
                                        for _ in range(num_blocks))
            self.head = MLP(num_blocks * block_dim, hidden_units, activation, dropout, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        v_emb = self.embedding.dnn_input(emb, batch)  # [B, d]
        v_hidden = v_emb
        if self.embed_norm is not None:
            normed = self.embed_norm(emb) * self.norm_weight + self.norm_bias  # [B, F, D]
            v_hidden = self.embedding.dnn_input(normed, batch)  # [B, d]
        if self.structure == "serial":
            for block in self.blocks:
                v_hidden = block(v_emb, v_hidden)  # [B, hidden_units[l]]
            return self.head(v_hidden)  # [B, 1]
        out = torch.cat([block(v_emb, v_hidden) for block in self.blocks], dim=1)  # [B, num_blocks * block_dim]
        return self.head(out)  # [B, 1]
