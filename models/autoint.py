from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.attention import InteractingLayer
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class AutoInt(CTRModel):
    """AutoInt (Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
    Networks", CIKM 2019): stacked interacting layers (multi-head self-attention over fields with a
    residual projection, :class:`layers.attention.InteractingLayer`) and a linear output layer:

        e^(0) = [e_1, ..., e_F];   e^(l) = InteractingLayer_l(e^(l-1)),  l = 1..L
        y = w^T [e^(L)_1 ⊕ ... ⊕ e^(L)_F ⊕ x_dense] + b     (+ the first-order term if use_wide)

    In ``dense_mode="vector"`` the raw dense vector joins the output layer (the paper embeds numerical
    fields, i.e. ``"embed"`` mode). Defaults follow the BARS Criteo_x4_001 AutoInt config: 5 layers,
    1 head of width 64, residual, no scaling, no layer norm, no wide part. (The paper's own setting is
    3 layers, 2 heads of width 32.)

    Shapes: embeddings [B, F, D]; interacting layers [B, F, num_heads * attention_dim]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, attention_layers: int = 5, num_heads: int = 1,
                 attention_dim: int = 64, use_residual: bool = True, use_scale: bool = False,
                 layer_norm: bool = False, use_wide: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        self.use_wide = use_wide
        dims = [embed_dim] + [num_heads * attention_dim] * attention_layers
        self.interacting = nn.Sequential(*(InteractingLayer(d, attention_dim, num_heads, use_residual, use_scale,
                                                            layer_norm) for d in dims[:-1]))
        self.fc = nn.Linear(self.embedding.num_fields * dims[-1] + self.embedding.dense_dim, 1)

    def interaction_logit(self, emb: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attention part (plus the wide part if ``use_wide``): embeddings [B, F, D] -> [B, 1]."""
        out = self.embedding.dnn_input(self.interacting(emb), batch)  # [B, F * H*d' (+ dense)]
        logit = self.fc(out)
        return logit + self.embedding.linear(batch) if self.use_wide else logit

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.interaction_logit(self.embedding(batch), batch)  # [B, 1]


@register
class AutoIntPlus(AutoInt):
    """AutoInt+ (Song et al., CIKM 2019): AutoInt jointly trained with a feed-forward DNN on the
    same embeddings, logits summed:

        y = y_AutoInt + MLP([e_1, ..., e_F, x_dense])

    Defaults follow the BARS Criteo_x4_001 AutoInt+ config: the AutoInt defaults plus the wide part
    (use_wide: true), DNN 1000x5, ReLU, no dropout, no BN.

    Shapes: as :class:`AutoInt`; DNN input [B, F*D (+ dense)]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, attention_layers: int = 5, num_heads: int = 1,
                 attention_dim: int = 64, use_residual: bool = True, use_scale: bool = False,
                 layer_norm: bool = False, use_wide: bool = True,
                 hidden_units: Sequence[int] = (1000, 1000, 1000, 1000, 1000), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std, attention_layers, num_heads,
                         attention_dim, use_residual, use_scale, layer_norm, use_wide)
        self.dnn = MLP(self.embedding.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        return self.interaction_logit(emb, batch) + self.dnn(self.embedding.dnn_input(emb, batch))  # [B, 1]
