from __future__ import annotations

import torch
from torch import nn

from dataset.schema import Schema
from layers.cross import CrossNet
from layers.gating import Bridge, Regulation
from layers.mlp import MLP
from models.base import CTRModel
from models.registry import register


@register
class EDCN(CTRModel):
    """EDCN (Chen, Wang, Liu, Tang, Guo, Zheng, Yao, Zhang, He, "Enhancing Explicit and Implicit Feature
    Interactions via Information Sharing for Parallel Deep CTR Models", CIKM 2021): a DCN cross network and a DNN
    of the same width d, layer by layer connected by a bridge module (:class:`layers.gating.Bridge`) whose output
    a regulation module (:class:`layers.gating.Regulation`, field-wise softmax gates) splits into the next inputs
    of both towers:

        x_0 = [e_1, ..., e_F, x_dense]
        (c_0, h_0) = R_1(x_0)
        for l = 1..L:
            x_l = c_0 (x_{l-1}'^T w_l) + b_l [+ x_{l-1}']        DCN cross layer, x_0' = c_0; [..] if cross_residual
            h_l = act(W_l h_{l-1}' + a_l)                        deep layer, h_0' = h_0, width d
            f_l = bridge(x_l, h_l)
            (x_l', h_l') = R_{l+1}(f_l)                          for l < L
        y = w^T [x_L, h_L, f_L] + b

    Dense fields in ``"vector"`` mode are field groups of width 1 in the regulation gates. The paper's cross layer is
    DCN's, with its residual ``+ x_{l-1}'``; FuxiCTR's EDCN (the code of the BARS runs) drops it: set
    ``cross_residual=False`` to reproduce those runs.

    BARS publishes no Criteo_x4_001 EDCN run; defaults follow its Criteo_x1 config (EDCN_criteo_x1_004_4023a363):
    3 layers, hadamard-product bridge, regulation temperature 20, ReLU, dropout 0.1, batch norm after the
    regulation gates.

    Shapes: every tower tensor [B, d], d = embedding.output_dim; head input [B, 3d]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, num_cross_layers: int = 3, bridge_type: str = "hadamard_product",
                 temperature: float = 20.0, activation: str = "relu", dropout: float = 0.1,
                 batch_norm: bool = True, cross_residual: bool = True) -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if num_cross_layers < 1:
            raise ValueError(f"EDCN num_cross_layers must be >= 1, got {num_cross_layers}")
        emb = self.embedding
        d = emb.output_dim
        groups = [embed_dim] * emb.num_fields + [1] * emb.dense_dim
        self.cross = CrossNet(d, num_cross_layers)  # its w_l, b_l, applied one layer at a time below
        self.deep = nn.ModuleList(MLP(d, [d], activation, dropout) for _ in range(num_cross_layers))
        self.bridges = nn.ModuleList(Bridge(d, bridge_type) for _ in range(num_cross_layers))
        self.regulations = nn.ModuleList(Regulation(groups, temperature, batch_norm) for _ in range(num_cross_layers))
        self.fc = nn.Linear(3 * d, 1)
        self.cross_residual = cross_residual

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, d]
        c0, h = self.regulations[0](x0)  # [B, d] each
        x = c0
        for layer, (w, b) in enumerate(zip(self.cross.weight, self.cross.bias)):
            x = c0 * (x @ w).unsqueeze(1) + b + (x if self.cross_residual else 0)  # [B, d]
            h = self.deep[layer](h)  # [B, d]
            f = self.bridges[layer](x, h)  # [B, d]
            if layer + 1 < len(self.regulations):
                x, h = self.regulations[layer + 1](f)
        return self.fc(torch.cat([x, h, f], dim=1))  # [B, 3d] -> [B, 1]
