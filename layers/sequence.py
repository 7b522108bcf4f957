"""Layers of the behaviour-sequence models (DIN, DIEN, BST, DSIN).

Every layer takes a history as the shared embedding gives it (:meth:`layers.embedding.FeatureEmbedding.sequence`):
a left-aligned padded sequence ``[B, L, D]`` and a bool mask ``[B, L]`` (True: a valid element). Padding never
counts: it gets zero attention, never changes a recurrent state and is never attended to.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from layers.activation import get_activation
from layers.attention import masked_softmax, multi_head_attention
from layers.mlp import MLP

GRU_TYPES = ("AIGRU", "AGRU", "AUGRU")
ATTENTIONS = ("din", "bilinear")


def weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_l w_l v_l``: weights [B, L], values [B, L, D] -> [B, D]."""
    return (weights.unsqueeze(-1) * values).sum(dim=1)


class LocalActivationUnit(nn.Module):
    r"""DIN's local activation unit (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
    KDD 2018, Sec. 4.3, eq. 3): the candidate ``v_A`` weighs every history element ``e_j`` with a small MLP,
    and the user's interest in this candidate is the weighted sum

        w_j    = MLP([v_A, e_j, v_A - e_j, v_A ⊙ e_j])        one scalar per element
        v_U(A) = sum_j w_j e_j                                 (eq. 3)

    The weights are NOT normalized: the paper drops the softmax to keep the intensity of an interest (many
    matching behaviours give a larger ``v_U``). ``normalize=True``: ``w = softmax_j`` over the valid elements
    (the attention of DIEN and DSIN, and the BARS AmazonElectronics_x1 DIN config). Padded elements get weight
    exactly 0 and never enter the MLP (so Dice's batch statistics are those of the valid elements). The
    paper's figure feeds the out product of ``v_A`` and ``e_j``; the difference and elementwise product are
    the authors' released code and what DeepCTR and FuxiCTR use.

    Args:
        dim: D, the width of the candidate and of each element.
        hidden_units: the MLP's hidden layers (80-40 as the authors' code and DeepCTR).
        activation: of the hidden layers, ``dice`` (the paper's) or ``prelu`` ...
        normalize: softmax over the valid elements (then the score's output bias, which a softmax cancels, is
            left out: its gradient is 0 up to rounding, which Adam would blow up into steps).

    Shapes: query [B, D], keys [B, L, D], mask [B, L] -> :meth:`weights` [B, L]; ``forward`` -> [B, D]
    (the weighted sum of ``values`` [B, L, D_v] when given, else of the keys).
    """

    def __init__(self, dim: int, hidden_units: Sequence[int] = (80, 40), activation: str = "dice",
                 normalize: bool = False) -> None:
        super().__init__()
        self.mlp = MLP(4 * dim, hidden_units, activation)
        self.out = nn.Linear(self.mlp.output_dim, 1, bias=not normalize)
        self.normalize = normalize

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``MLP([q, k, q - k, q ⊙ k])`` [N, 4D] -> [N]."""
        return self.out(self.mlp(x)).squeeze(-1)

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)  # [B, L, D]
        x = torch.cat([q, keys, q - keys, q * keys], dim=-1)[mask]  # [N_valid, 4D]
        scores = keys.new_zeros(mask.shape).masked_scatter(mask, self.score(x).to(keys.dtype))  # [B, L]
        return masked_softmax(scores, mask) if self.normalize else scores

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                values: torch.Tensor | None = None) -> torch.Tensor:
        return weighted_sum(self.weights(query, keys, mask), keys if values is None else values)


class BilinearAttention(nn.Module):
    r"""Softmax attention with a bilinear score, the attention of DIEN's interest evolving layer (Zhou et al.,
    AAAI 2019) and of DSIN's session interest activating layer (Feng et al., IJCAI 2019):

        a_t = exp(h_t W e_a) / sum_j exp(h_j W e_a)        over the valid elements j;   out = sum_t a_t h_t

    Shapes: query e_a [B, D_q], keys h [B, L, D_k], mask [B, L] -> :meth:`weights` [B, L]; ``forward`` -> [B, D_k]
    (or the weighted sum of ``values``). ``W``: [D_k, D_q], no bias.
    """

    def __init__(self, key_dim: int, query_dim: int) -> None:
        super().__init__()
        self.W = nn.Linear(query_dim, key_dim, bias=False)

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (keys @ self.W(query).unsqueeze(-1)).squeeze(-1)  # [B, L, D_k] @ [B, D_k, 1] -> [B, L]
        return masked_softmax(scores, mask)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                values: torch.Tensor | None = None) -> torch.Tensor:
        return weighted_sum(self.weights(query, keys, mask), keys if values is None else values)


def target_attention(kind: str, dim: int, hidden_units: Sequence[int] = (80, 40),
                     activation: str = "dice") -> nn.Module:
    """Softmax attention of a candidate [B, D] over keys [B, L, D]: ``din`` (the local activation unit,
    normalized) or ``bilinear`` (:class:`BilinearAttention`)."""
    if kind == "din":
        return LocalActivationUnit(dim, hidden_units, activation, normalize=True)
    if kind == "bilinear":
        return BilinearAttention(dim, dim)
    raise ValueError(f"unknown attention {kind!r}; choose one of {ATTENTIONS}")


# -- DIEN -------------------------------------------------------------------------------------------------


class InterestExtractor(nn.Module):
    r"""DIEN's interest extractor layer (Zhou et al., "Deep Interest Evolution Network for Click-Through Rate
    Prediction", AAAI 2019): a plain GRU over the behaviours, one interest state per step,

        u_t = σ(W^u e_t + U^u h_{t-1} + b^u),   r_t = σ(W^r e_t + U^r h_{t-1} + b^r)
        h~_t = tanh(W^h e_t + r_t ∘ U^h h_{t-1} + b^h),   h_t = (1 - u_t) ∘ h_{t-1} + u_t ∘ h~_t

    run as torch's ``nn.GRU`` (the same cell with ``z_t = 1 - u_t`` and one more bias inside the reset
    product) over ``pack_padded_sequence``, so padding never enters it. The hidden width is the behaviour
    width D, so that a state and a behaviour compare by an inner product (:func:`auxiliary_loss`).

    Shapes: behaviours [B, L, D], mask [B, L] -> states [B, L, D], 0 at padded steps (and for empty rows).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).clamp(min=1).cpu()  # an empty row runs one step on padding, zeroed below
        packed = pack_padded_sequence(behaviours, lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=mask.shape[1])
        return states * mask.unsqueeze(-1).to(states.dtype)  # [B, L, D]


def in_batch_negatives(behaviours: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A negative behaviour for every position: the behaviour at the same position of the next row of the
    batch (cyclically) that is valid there. It is another user's real behaviour, taken whole (its item and
    category stay a real pair, which sampling ids from each vocabulary would break) and never padding; the
    paper samples from the item set instead. Under DDP the batch is the rank's own.

    behaviours [B, L, D], mask [B, L] -> (negatives [B, L, D], ok [B, L]: a valid position with at least one
    other row valid at that position to draw from)."""
    count = mask.sum(dim=0)  # [L]: rows valid at each position
    rank = mask.long().cumsum(dim=0) - 1  # [B, L]: a valid row's rank among them
    order = torch.argsort((~mask).to(torch.uint8), dim=0, stable=True)  # [B, L]: the valid rows first, in order
    source = order.gather(0, (rank + 1).clamp(min=0).remainder(count.clamp(min=1)))  # [B, L]: the next valid row
    negatives = behaviours.gather(0, source.unsqueeze(-1).expand_as(behaviours))  # [B, L, D]
    return negatives, mask & (count >= 2)


def auxiliary_loss(states: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""DIEN's auxiliary loss: the interest state ``h_t`` must score the real next behaviour ``e_b[t+1]`` above
    a negative ``ê_b[t+1]`` (:func:`in_batch_negatives`), at every step:

        L_aux = -1/N sum_{i, t} [ log σ(<h^i_t, e^i_b[t+1]>) + log(1 - σ(<h^i_t, ê^i_b[t+1]>)) ]

    over the steps ``t`` whose next behaviour is valid (and has a negative); ``N`` is their number: a mean
    over steps, where the paper writes the sum over ``t`` averaged over rows, so that the loss weight does not
    grow with the history length. 0 when no step qualifies.

    Shapes: states [B, L, D], behaviours [B, L, D], mask [B, L] -> scalar.
    """
    negatives, ok = in_batch_negatives(behaviours, mask)
    h = states[:, :-1]  # [B, L-1, D]: h_t predicts step t+1
    pos_logit = (h * behaviours[:, 1:]).sum(dim=-1)  # [B, L-1]
    neg_logit = (h * negatives[:, 1:]).sum(dim=-1)
    valid = ok[:, 1:].to(h.dtype)  # step t+1 is valid (so t is) and has a negative
    loss = F.softplus(-pos_logit) + F.softplus(neg_logit)  # -log σ(x) = softplus(-x); -log(1 - σ(x)) = softplus(x)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class AttentionalGRU(nn.Module):
    r"""DIEN's interest evolving layer: a GRU over the interest states ``i_t = h_t`` whose steps follow the
    attention ``a_t`` of the candidate on ``h_t``; the paper's three variants share one cell:

        u_t  = σ(W^u i_t + U^u h'_{t-1} + b^u),     r_t = σ(W^r i_t + U^r h'_{t-1} + b^r)
        h~_t = tanh(W^h i_t + r_t ∘ U^h h'_{t-1} + b^h)
        AIGRU:  i_t <- a_t * i_t;  h'_t = (1 - u_t) ∘ h'_{t-1} + u_t ∘ h~_t        (attention on the input)
        AGRU:   h'_t = (1 - a_t) * h'_{t-1} + a_t * h~_t                           (attention replaces u_t)
        AUGRU:  u~_t = a_t * u_t;  h'_t = (1 - u~_t) ∘ h'_{t-1} + u~_t ∘ h~_t     (the paper's choice, default)

    The state starts at 0 and a padded step leaves it unchanged (``h'_t = h'_{t-1}``), so the final state
    of a padded history is exactly that of the history alone (0 for an empty one). Steps run in a Python
    loop up to the longest history of the batch.

    Shapes: interests [B, L, D_in], attention [B, L], mask [B, L] -> final state h'_T [B, H].
    """

    def __init__(self, input_dim: int, hidden_dim: int, gru_type: str = "AUGRU") -> None:
        super().__init__()
        if gru_type not in GRU_TYPES:
            raise ValueError(f"unknown gru_type {gru_type!r}; choose one of {GRU_TYPES}")
        self.gru_type = gru_type
        self.hidden_dim = hidden_dim
        self.W = nn.Linear(input_dim, 3 * hidden_dim)  # [W^u; W^r; W^h] and [b^u; b^r; b^h]
        self.U = nn.Linear(hidden_dim, 3 * hidden_dim, bias=False)  # [U^u; U^r; U^h]

    def step(self, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """One step: ``x = W i_t + b`` [B, 3H], state [B, H], attention [B, 1] -> next state [B, H]."""
        xu, xr, xh = x.chunk(3, dim=-1)
        hu, hr, hh = self.U(h).chunk(3, dim=-1)
        u = torch.sigmoid(xu + hu)
        h_tilde = torch.tanh(xh + torch.sigmoid(xr + hr) * hh)
        if self.gru_type == "AGRU":
            u = a
        elif self.gru_type == "AUGRU":
            u = a * u
        return (1 - u) * h + u * h_tilde

    def forward(self, interests: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = attention.unsqueeze(-1).to(interests.dtype)  # [B, L, 1]
        x = self.W(a * interests if self.gru_type == "AIGRU" else interests)  # [B, L, 3H], every step at once
        h = interests.new_zeros(interests.shape[0], self.hidden_dim)  # [B, H]
        # unbind, not x[:, t]: the backward of one slice per step would zero and add a whole [B, L, 3H] tensor
        # every step (O(L^2) memory traffic, 70% of a DIEN step on Amazon); unbind's backward stacks once
        xs, attn, valid = x.unbind(1), a.unbind(1), mask.unsqueeze(-1).unbind(1)
        for t in range(int(mask.sum(dim=1).max()) if mask.numel() else 0):
            h = torch.where(valid[t], self.step(xs[t], h, attn[t]), h)
        return h


# -- BST --------------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    r"""One transformer encoder layer with a key mask, as BST writes it (Chen et al., "Behavior Sequence
    Transformer for E-commerce Recommendation in Alibaba", DLP-KDD 2019, Sec. 2.3):

        S  = MH(E) = [head_1 ⊕ ... ⊕ head_h] W^O,   head_i = softmax(Q_i K_i^T / sqrt(d)) V_i,
             Q_i, K_i, V_i = E W^Q_i, E W^K_i, E W^V_i     (d = D / h; masked keys never attended)
        S' = LayerNorm(E + Dropout(S))
        F  = LayerNorm(S' + Dropout(W^(2) act(W^(1) S' + b^(1)) + b^(2)))      (act: LeakyReLU in BST)

    ``layer_norm=False`` keeps the residual sums without LayerNorm (the BARS BST config, DeepCTR's DSIN):
    LayerNorm scales the tiny initial embeddings (std 1e-4) up to unit vectors in random directions, which
    the DNN first has to learn to read.

    AutoInt's :class:`layers.attention.InteractingLayer` does not fit here: it ends in ``ReLU(attention +
    W_res e)`` with no output projection, residual LayerNorm or feed-forward part. What the two share, masked
    multi-head attention, is :func:`layers.attention.multi_head_attention`.

    Shapes: x [B, L, D], mask [B, L] -> [B, L, D] (outputs at masked positions are computed but meaningless).
    """

    def __init__(self, dim: int, num_heads: int = 8, ffn_dim: int | None = None, dropout: float = 0.0,
                 activation: str = "leaky_relu", layer_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the attention width {dim} must be a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        ffn_dim = ffn_dim or 4 * dim
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), get_activation(activation, ffn_dim), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2 = (nn.LayerNorm(dim), nn.LayerNorm(dim)) if layer_norm else (nn.Identity(), nn.Identity())
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        att, _ = multi_head_attention(self.W_q(x), self.W_k(x), self.W_v(x), self.num_heads, mask, self.scale,
                                      need_weights=False)
        s = self.norm1(x + self.dropout(self.W_o(att)))  # [B, L, D]
        return self.norm2(s + self.dropout(self.ffn(s)))


# -- DSIN -------------------------------------------------------------------------------------------------


def split_sessions(behaviours: torch.Tensor, mask: torch.Tensor, max_sessions: int, session_len: int,
                   session_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""DSIN's session division layer (Feng et al., "Deep Session Interest Network for Click-Through Rate
    Prediction", IJCAI 2019, Sec. 3.2): the history becomes sessions ``Q_1..Q_K`` of at most ``T`` behaviours.

    * With ``session_ids`` [B, L] (one id per element): a session starts wherever the id changes between
      consecutive elements. The paper cuts where two behaviours are more than 30 minutes apart; a store with
      timestamps records that cut as ids (the synthetic behaviour store's ``hist_session``).
    * Without (stores with no timestamps, e.g. Amazon Beauty): consecutive windows of ``session_len``
      behaviours counted back from the latest (the latest window is full, the oldest may be short). A
      departure from the paper, so that DSIN trains on every sequence store.

    The ``max_sessions`` (K) latest sessions are kept, each its ``session_len`` (T) latest behaviours.

    Returns ``sessions`` [B, K, T, D] and their mask [B, K, T]: slot ``k`` holds the k-th most recent session
    (0 = the latest; the kept sessions are slots 0..n-1), its behaviours in time order from ``t = 0``.
    """
    b, length = mask.shape
    pos = torch.arange(length, device=mask.device).expand(b, length)  # [B, L]
    n = mask.sum(dim=1, keepdim=True)  # [B, 1]
    if session_ids is None:
        back = (n - 1 - pos).div(session_len, rounding_mode="floor")  # [B, L]: sessions after this one
        start = (n - (back + 1) * session_len).clamp(min=0)  # first position of the element's window
    else:
        starts = mask.clone()
        starts[:, 1:] &= session_ids[:, 1:] != session_ids[:, :-1]  # [B, L]: an element opening a session
        index = starts.long().cumsum(dim=1) - 1  # [B, L]: the element's session, counted from the oldest
        back = starts.sum(dim=1, keepdim=True) - 1 - index
        start = torch.where(starts, pos, 0).cummax(dim=1).values
        size = torch.zeros_like(pos).scatter_add(1, index.clamp(min=0), mask.long()).gather(1, index.clamp(min=0))
        start = torch.maximum(start, start + size - session_len)  # keep the session's latest T behaviours
    t = pos - start  # [B, L]: position inside the session
    keep = mask & (back < max_sessions) & (t >= 0)
    rows = torch.arange(b, device=mask.device).unsqueeze(1).expand(b, length)
    where = (rows[keep], back[keep], t[keep])
    sessions = behaviours.new_zeros(b, max_sessions, session_len, behaviours.shape[-1])
    sessions = sessions.index_put(where, behaviours[keep])  # [B, K, T, D]
    session_mask = mask.new_zeros(b, max_sessions, session_len).index_put(where, mask[keep])  # [B, K, T]
    return sessions, session_mask


class SessionInterestExtractor(nn.Module):
    r"""DSIN's session interest extractor layer (Sec. 3.3): bias encoding, then self-attention within each
    session (one :class:`TransformerBlock` shared by all sessions), averaged over the session's behaviours:

        BE_(k,t,c) = w^K_k + w^T_t + w^C_c,   Q <- Q + BE        (w^K [K], w^T [T], w^C [D]: bias per session,
                                                                  per position in the session, per unit)
        I_k = Avg_t Transformer(Q_k)                             over the session's valid behaviours

    ``k`` counts sessions back from the latest (:func:`split_sessions`), so ``w^K_0`` is always the latest
    session's bias. ``bias_encoding=False`` drops BE (the sessions then carry no order at all).

    Shapes: sessions [B, K, T, D], mask [B, K, T] -> interests I [B, K, D] (0 for an empty session).
    """

    def __init__(self, dim: int, max_sessions: int, session_len: int, num_heads: int = 8,
                 ffn_dim: int | None = None, dropout: float = 0.0, activation: str = "relu",
                 bias_encoding: bool = True, layer_norm: bool = True) -> None:
        super().__init__()
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(n)) for n in (max_sessions, session_len, dim)]) \
            if bias_encoding else None
        self.transformer = TransformerBlock(dim, num_heads, ffn_dim, dropout, activation, layer_norm)

    def forward(self, sessions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            w_k, w_t, w_c = self.bias
            sessions = sessions + w_k[:, None, None] + w_t[:, None] + w_c  # [B, K, T, D]
        b, k, t, d = sessions.shape
        out = self.transformer(sessions.view(b * k, t, d), mask.view(b * k, t)).view(b, k, t, d)
        m = mask.unsqueeze(-1).to(out.dtype)  # [B, K, T, 1]
        return (out * m).sum(dim=2) / m.sum(dim=2).clamp(min=1)  # [B, K, D]


class SessionInterestInteracting(nn.Module):
    r"""DSIN's session interest interacting layer (Sec. 3.4): a Bi-LSTM across the sessions,

        H_k = (h→_k + h←_k) / 2

    the two directions averaged (the authors' DeepCTR layer; the paper writes ``h→ ⊕ h←``), which keeps H the
    width of the interests so one activation unit form fits both. Sessions come latest first
    (:func:`split_sessions`); reading both ways, the order only swaps which direction is called forward.
    Packed, so empty session slots never enter the LSTM.

    Shapes: interests [B, K, D], session mask [B, K] (left-aligned) -> H [B, K, D], 0 at empty slots.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, interests: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, k, d = interests.shape
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(interests, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=k)  # [B, K, 2D]
        return out.view(b, k, 2, d).mean(dim=2) * mask.unsqueeze(-1).to(out.dtype)
