from __future__ import annotations

from typing import Sequence

import torch

from dataset.schema import Schema
from layers.mlp import MLP
from layers.multitask import product_logit
from models.base import CTRModel
from models.registry import register


@register
class ESMM(CTRModel):
    """Entire Space Multi-Task Model (Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
    Estimating Post-Click Conversion Rate", SIGIR 2018), eqs. 1 and 3: a CTR tower and a CVR tower over the
    SHARED embedding (the paper's embedding sharing), trained on the entire impression space:

        pCTR = sigmoid(a),   pCVR = sigmoid(b),   pCTCVR = pCTR * pCVR                   (eq. 1)
        L = sum_i BCE(y_i, pCTR_i) + sum_i BCE(y_i & z_i, pCTCVR_i)                       (eq. 3)

    ``forward`` returns ``[logit(pCTR), logit(pCTCVR)]``, the second computed exactly in log space
    (:func:`layers.multitask.product_logit`), so BCE-with-logits against the store's labels
    ``(click, click & conversion)`` is the paper's loss. pCVR itself has no label: use :meth:`predict_cvr`.

    The store must have exactly two labels: click first, then conversion as click-and-convert.

    Defaults: the paper's "360 x 200 x 80 x 2" sub-network MLPs, read as hidden layers 360-200-80 (as in
    MetaSpore's ESMM) with the 2-way softmax output replaced by the equivalent single logit; ReLU, no
    dropout, no BN.

    Shapes: embeddings [B, F, D]; tower input [B, F*D (+ dense)]; a, b [B, 1]; logits [B, 2].
    """

    multitask = True

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (360, 200, 80),
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        if schema.num_tasks != 2:
            raise ValueError(f"ESMM needs a store with exactly two labels (click, then click-and-conversion); this "
                             f"store has {schema.num_tasks}: {list(schema.labels)}. Build a click+conversion store "
                             f"(python preprocess.py aliccp / aliexpress) or pick a model that takes any labels "
                             f"(MMoE, PLE, SharedBottom)")
        super().__init__(schema, embed_dim, dense_mode, embed_init_std)
        dim = self.embedding.output_dim
        self.ctr_tower = MLP(dim, hidden_units, activation, dropout, batch_norm, output_dim=1)
        self.cvr_tower = MLP(dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a, b = self._tower_logits(batch)  # [B, 1] each
        return torch.cat([a, product_logit(a, b)], dim=1)  # [B, 2]: logit(pCTR), logit(pCTCVR)

    def predict_cvr(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Post-click conversion probability pCVR = sigmoid(b) -> [B, 1]."""
        return torch.sigmoid(self._tower_logits(batch)[1])

    def _tower_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embedding.dnn_input(self.embedding(batch), batch)  # [B, F*D (+ dense)]
        return self.ctr_tower(x), self.cvr_tower(x)
