from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.gating import FieldGate, FinalBlock
from models.base import CTRModel, task_loss
from models.registry import register

BLOCK_TYPES = ("1B", "2B")


@register
class FinalNet(CTRModel):
    """FinalNet (Zhu, Jia, Cai, Dai, Li, Dong, Tang, Zhang, "FINAL: Factorized Interaction Layer for CTR
    Prediction", SIGIR 2023): FINAL blocks, MLP blocks whose linear layers are factorized interaction layers
    ``[a, c] = W x + b -> [a, a ⊙ c]`` (:class:`layers.gating.FactorizedInteraction`):

        block 1: y_1 = w_1^T FINAL_1([E, E ⊙ G(E)], x_dense)           field gate G if feature_gating, else FINAL_1(x)
        "1B":    y = y_1
        "2B":    y_2 = w_2^T FINAL_2(x),   y = (y_1 + y_2) / 2             x = [e_1, ..., e_F, x_dense]

    Loss (:meth:`loss`), the paper's self-distillation of the two blocks in "2B": the task loss of ``y`` plus the
    loss of each block's ``y_k`` against the detached ensemble prediction ``sigmoid(y)`` as soft label,

        L = L(y, label) + L(y_1, sigmoid(y).detach()) + L(y_2, sigmoid(y).detach())

    (for a regression task the soft label is ``y`` itself and L is the squared error).

    Defaults follow the BARS Criteo_x4_001 FinalNet config (FinalNet_criteo_x4_001_041_449ccb21): 2B, feature
    gating, block 1 1000x3, block 2 one layer of 512, ReLU, dropout 0.4 (both blocks), batch norm, concat residual.

    Shapes: x [B, d], d = embedding.output_dim; gated block-1 input [B, 2 F D + dense]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, block_type: str = "2B", feature_gating: bool = True,
                 hidden_units: Sequence[int] = (1000, 1000, 1000), block2_units: Sequence[int] = (512,),
                 activation: str = "relu", dropout: float = 0.4, batch_norm: bool = True,
                 residual_type: str = "concat") -> None:
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"FinalNet block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        emb = self.embedding
        self.gate = FieldGate(emb.num_fields) if feature_gating else None
        dim1 = emb.output_dim + (emb.num_fields * embed_dim if feature_gating else 0)
        self.block1 = FinalBlock(dim1, hidden_units, activation, dropout, batch_norm, residual_type)
        self.fc1 = torch.nn.Linear(self.block1.output_dim, 1)
        self.block2 = self.fc2 = None
        if block_type == "2B":
            self.block2 = FinalBlock(emb.output_dim, block2_units, activation, dropout, batch_norm, residual_type)
            self.fc2 = torch.nn.Linear(self.block2.output_dim, 1)
        self._block_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding(batch)  # [B, F, D]
        gated = self.gate(emb) if self.gate is not None else emb  # [B, 2F, D] or [B, F, D]
        y1 = self.fc1(self.block1(self.embedding.dnn_input(gated, batch)))  # [B, 1]
        if self.block2 is None:
            return y1
        y2 = self.fc2(self.block2(self.embedding.dnn_input(emb, batch)))  # [B, 1]
        self._block_logits = (y1, y2)
        return (y1 + y2) / 2

    def loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """Task loss of ``logits = self(batch)``, plus in "2B" each block's loss against the soft label -> scalar."""
        kept, self._block_logits = self._block_logits, None
        loss = super().loss(batch, logits)
        if self.block2 is None:
            return loss
        if kept is None or kept[0].shape[0] != logits.shape[0]:
            raise RuntimeError("FinalNet.loss needs the block outputs of the forward pass that produced `logits`: "
                               "call logits = model(batch) right before model.loss(batch, logits)")
        soft = torch.where(self.regression, logits, torch.sigmoid(logits)).detach()  # [B, 1]
        return loss + sum(task_loss(y, soft, self.regression, self.task_weights) for y in kept)
