from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from dataset.schema import Schema
from layers.mlp import MLP
from layers.sequence import (SessionInterestExtractor, SessionInterestInteracting, split_sessions,
                             target_attention)
from models.behaviour import BehaviourModel
from models.registry import register


@register
class DSIN(BehaviourModel):
    r"""DSIN (Feng et al., "Deep Session Interest Network for Click-Through Rate Prediction", IJCAI 2019): the
    history is cut into sessions; self-attention with bias encoding gives one interest per session, a Bi-LSTM
    lets the session interests interact, and the candidate's attention pools both for the DNN:

        Q_1..Q_K = the latest K sessions, each its latest T behaviours      session division
        I_k      = Avg_t Transformer(Q_k + BE)_t                            session interest extractor
        H_1..H_K = Bi-LSTM(I_1, ..., I_K)                                   session interest interacting
        U^I = sum_k a^I_k I_k,   U^H = sum_k a^H_k H_k                      session interest activating
        y   = MLP([e_1, ..., e_F, U^I, U^H, x_dense])

    ``a^I``, ``a^H``: the candidate's softmax attention over the sessions, with the local activation unit
    (``attention="din"``; DSIN's abstract and the authors' DeepCTR model) or the bilinear score of the
    paper's equations ``a_k = softmax_k(I_k W X^I)`` (``"bilinear"``). Layers: :mod:`layers.sequence`.

    Sessions: where the store has ``session_field`` (a sequence field as long as the history, one session id
    per behaviour; the synthetic behaviour store's ``hist_session`` holds the paper's 30-minute cut), a
    session is a run of equal ids. Otherwise (Amazon Beauty has no timestamps) sessions are windows of
    ``session_len`` consecutive behaviours, counted back from the latest: a departure from the paper so that
    DSIN trains on every sequence store; ``--session_field none`` (a name the store lacks) forces windows.
    The session field is not fed to the DNN.

    ``history_sum`` (default off, as the paper): also feed the DNN the sum-pooled history and its product
    with the candidate, as the DIN/DIEN authors' code does (:class:`models.behaviour.BehaviourModel`).

    Defaults: the authors' code (DSIN repository / DeepCTR's DSIN): K = 5 sessions of T = 10 behaviours,
    8 heads, no LayerNorm in the session transformer (the paper's block has it: ``layer_norm=True``), DNN
    200-80 ReLU, activation unit 64-16 (with Dice here); feed-forward width D_g, ReLU; bias encoding on, as
    the paper (the authors' code defaults it off). BARS has no DSIN configuration.

    Shapes: sessions [B, K, T, D_g]; I, H [B, K, D_g]; U^I, U^H [B, D_g]; DNN input
    [B, other_dim + 2 sum_g D_g]; logits [B, 1].
    """

    def __init__(self, schema: Schema, embed_dim: int = 16, dense_mode: str = "vector",
                 embed_init_std: float = 1e-4, hidden_units: Sequence[int] = (200, 80), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, max_sessions: int = 5, session_len: int = 10,
                 session_field: str = "hist_session", num_heads: int = 8, bias_encoding: bool = True,
                 layer_norm: bool = False,
                 attention: Literal["din", "bilinear"] = "din", attention_units: Sequence[int] = (64, 16),
                 attention_activation: str = "dice",
                 history_sum: bool = False) -> None:
        fields = {s.name: s for s in schema.sequence_fields}
        consumed = [session_field] if session_field in fields else []
        super().__init__(schema, embed_dim, dense_mode, embed_init_std, consumed=consumed, history_sum=history_sum)
        # per behaviour sequence: the session field that goes with it, or None (windows)
        self.session_fields = [session_field if consumed and fields[session_field].max_len == n else None
                               for n in self.behaviour_lens]
        self.max_sessions, self.session_len = max_sessions, session_len
        dims = self.behaviour_dims
        self.extractors = nn.ModuleList(SessionInterestExtractor(d, max_sessions, session_len, num_heads, d,
                                                                 bias_encoding=bias_encoding, layer_norm=layer_norm)
                                        for d in dims)
        self.interacting = nn.ModuleList(SessionInterestInteracting(d) for d in dims)
        self.attention_i = nn.ModuleList(target_attention(attention, d, attention_units, attention_activation)
                                         for d in dims)
        self.attention_h = nn.ModuleList(target_attention(attention, d, attention_units, attention_activation)
                                         for d in dims)
        self.dnn = MLP(self.other_dim + 2 * sum(dims), hidden_units, activation, dropout, batch_norm, output_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, behaviours = self.embed(batch)  # [B, other_dim]; per sequence: [B, D_g], [B, L, D_g], [B, L]
        pooled = []
        for g, (candidate, history, mask) in enumerate(behaviours):
            name = self.session_fields[g]
            ids = batch["seq"][:, self.embedding.seq_slices[name]] if name else None  # [B, L] session ids
            sessions, in_session = split_sessions(history, mask, self.max_sessions, self.session_len, ids)
            interests = self.extractors[g](sessions, in_session)  # [B, K, D_g]
            session_mask = in_session.any(dim=-1)  # [B, K]
            hidden = self.interacting[g](interests, session_mask)  # [B, K, D_g]
            pooled.append(self.attention_i[g](candidate, interests, session_mask))  # U^I [B, D_g]
            pooled.append(self.attention_h[g](candidate, hidden, session_mask))  # U^H [B, D_g]
        return self.dnn(torch.cat([x, *pooled], dim=1))  # [B, 1]
