"""The behaviour-sequence layers against brute-force loops in float64, and their masking: padding gets zero
attention, never changes a recurrent state, is never attended, whatever it holds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layers.attention import InteractingLayer, masked_softmax, multi_head_attention
from layers.sequence import (AttentionalGRU, BilinearAttention, InterestExtractor, LocalActivationUnit,
                             SessionInterestExtractor, SessionInterestInteracting, TransformerBlock, auxiliary_loss,
                             split_sessions, target_attention)

B, L, D = 7, 6, 4
LENGTHS = [6, 3, 0, 1, 5, 2, 6]  # a full row, an empty row, a single element


def padded(seed: int = 0, lengths: list[int] = LENGTHS, dim: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 sequences [B, L, dim] with the given lengths -> (values, mask [B, L])."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L) < torch.tensor(lengths).unsqueeze(1)
    return torch.randn(len(lengths), L, dim, generator=g, dtype=torch.float64), mask


def with_junk(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same sequences with large random values in every padded position."""
    return torch.where(mask.unsqueeze(-1), x, 1e3 * torch.randn_like(x))


def test_masked_softmax_zeroes_masked_keys_and_empty_rows_without_nan():
    scores = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True], [False] * 4, [True, False, False, False]])
    w = masked_softmax(scores, mask)
    torch.testing.assert_close(w[0, [0, 2, 3]], torch.softmax(scores[0, [0, 2, 3]], dim=0))
    assert w[0, 1] == 0 and w[1].abs().sum() == 0 and w[2].tolist() == [1.0, 0.0, 0.0, 0.0]
    (w * torch.randn(3, 4, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[1].abs().sum() == 0


def test_fused_attention_equals_the_explicit_weights_with_empty_rows_and_gradients():
    """need_weights=False (torch's fused kernel) gives the explicit softmax path's outputs and gradients, also
    for a row whose keys are all masked (output 0, gradient 0, never NaN)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, L, 2 * D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    _, mask = padded()
    w = torch.randn(B, L, 2 * D, generator=g, dtype=torch.float64)
    grads = []
    for need_weights in (True, False):
        out, alpha = multi_head_attention(q, k, v, 2, mask, 0.7, need_weights=need_weights)
        assert (alpha is None) != need_weights
        assert out[2].abs().sum() == 0  # LENGTHS[2] == 0: no key to attend
        grads.append((out, *torch.autograd.grad((out * w).sum(), (q, k, v))))
    for explicit, fused in zip(*grads):
        torch.testing.assert_close(fused, explicit)
        assert torch.isfinite(fused).all()


def test_interacting_layer_key_mask_equals_dropping_the_masked_fields():
    torch.manual_seed(0)
    layer = InteractingLayer(D, attention_dim=3, num_heads=2).double()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    keep = torch.tensor([True, True, False, True, False])
    out = layer(x, key_mask=keep.expand(2, 5))
    torch.testing.assert_close(out[:, keep], layer(x[:, keep]))
    torch.testing.assert_close(layer(x), layer(x, key_mask=torch.ones(2, 5, dtype=torch.bool)))


# -- DIN's local activation unit ----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["dice", "prelu"])
@pytest.mark.parametrize("normalize", [False, True])
def test_local_activation_unit_matches_a_loop_over_elements(activation, normalize):
    torch.manual_seed(0)
    unit = LocalActivationUnit(D, hidden_units=(8, 5), activation=activation, normalize=normalize).double().eval()
    keys, mask = padded()
    query = torch.randn(B, D, dtype=torch.float64)
    values = torch.randn(B, L, 3, dtype=torch.float64)
    weights = unit.weights(query, keys, mask)
    want = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        for j in range(LENGTHS[b]):
            q, k = query[b], keys[b, j]
            want[b, j] = unit.out(unit.mlp(torch.cat([q, k, q - k, q * k]).unsqueeze(0)))[0, 0]
        if normalize and LENGTHS[b]:
            want[b, :LENGTHS[b]] = torch.softmax(want[b, :LENGTHS[b]], dim=0)
    torch.testing.assert_close(weights, want)
    assert (weights[~mask] == 0).all()  # padding: exactly zero weight
    torch.testing.assert_close(unit(query, keys, mask), (want.unsqueeze(-1) * keys).sum(dim=1))
    torch.testing.assert_close(unit(query, keys, mask, values), (want.unsqueeze(-1) * values).sum(dim=1))
    if normalize:
        torch.testing.assert_close(weights.sum(dim=1), (torch.tensor(LENGTHS) > 0).double())


def test_local_activation_unit_ignores_padding_also_in_dice_batch_statistics():
    torch.manual_seed(0)
    unit = LocalActivationUnit(D, hidden_units=(8,), activation="dice").double().train()
    keys, mask = padded()
    query = torch.randn(B, D, dtype=torch.float64)
    out = unit(query, keys, mask)
    assert torch.equal(out, unit(query, with_junk(keys, mask), mask))
    assert out[2].abs().sum() == 0  # the empty row


def test_bilinear_attention_matches_a_loop():
    torch.manual_seed(0)
    att = BilinearAttention(D, 3).double()
    keys, mask = padded()
    query = torch.randn(B, 3, dtype=torch.float64)
    W = att.W.weight  # [D, 3]
    out = att(query, keys, mask)
    for b in range(B):
        n = LENGTHS[b]
        a = torch.softmax(torch.stack([keys[b, t] @ W @ query[b] for t in range(n)]), dim=0) if n else []
        want = sum((a[t] * keys[b, t] for t in range(n)), torch.zeros(D, dtype=torch.float64))
        torch.testing.assert_close(out[b], want)
    assert torch.equal(out, att(query, with_junk(keys, mask), mask))
    with pytest.raises(ValueError, match="unknown attention"):
        target_attention("dot", D)


# -- DIEN: interest extractor, auxiliary loss, attentional GRU ----------------------------------------------


def gru_loop(gru: torch.nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """The GRU equations step by step on one unpadded sequence [n, D] -> states [n, H]."""
    w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    h, out = torch.zeros(gru.hidden_size, dtype=x.dtype), []
    for x_t in x:
        ir, iz, in_ = (w_ih @ x_t + b_ih).chunk(3)
        hr, hz, hn = (w_hh @ h + b_hh).chunk(3)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        h = (1 - z) * torch.tanh(in_ + r * hn) + z * h  # torch's z is 1 - u of the paper
        out.append(h)
    return torch.stack(out) if out else torch.zeros(0, gru.hidden_size, dtype=x.dtype)


def test_interest_extractor_is_a_gru_over_the_valid_steps_only():
    torch.manual_seed(0)
    extractor = InterestExtractor(D).double()
    x, mask = padded()
    states = extractor(x, mask)
    assert states.shape == (B, L, D) and (states[~mask] == 0).all()
    for b in range(B):
        torch.testing.assert_close(states[b, :LENGTHS[b]], gru_loop(extractor.gru, x[b, :LENGTHS[b]]))
    assert torch.equal(states, extractor(with_junk(x, mask), mask))


def test_auxiliary_loss_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(1)
    states = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    behaviours, mask = padded(2)
    terms = []
    for i in range(B):
        for t in range(LENGTHS[i] - 1):  # h_t with a valid next behaviour t + 1
            rows = [j for j in range(B) if LENGTHS[j] > t + 1]  # rows that have a behaviour at t + 1
            if len(rows) < 2:
                continue
            neg = behaviours[rows[(rows.index(i) + 1) % len(rows)], t + 1]  # the next such row, cyclically
            h = states[i, t]
            terms.append(-torch.log(torch.sigmoid(h @ behaviours[i, t + 1])) - torch.log(1 - torch.sigmoid(h @ neg)))
    assert len(terms) > 10
    torch.testing.assert_close(auxiliary_loss(states, behaviours, mask), torch.stack(terms).mean())
    assert torch.equal(auxiliary_loss(states, behaviours, mask), auxiliary_loss(states, with_junk(behaviours, mask), mask))
    empty = torch.zeros(B, L, dtype=torch.bool)
    assert auxiliary_loss(states, behaviours, empty) == 0


def attentional_gru_loop(layer: AttentionalGRU, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The paper's equations step by step on one unpadded sequence [n, D_in], attention [n] -> final [H]."""
    (Wu, Wr, Wh), (bu, br, bh) = layer.W.weight.chunk(3), layer.W.bias.chunk(3)
    Uu, Ur, Uh = layer.U.weight.chunk(3)
    h = torch.zeros(layer.hidden_dim, dtype=x.dtype)
    for i_t, a_t in zip(x, a):
        if layer.gru_type == "AIGRU":
            i_t = a_t * i_t
        u = torch.sigmoid(Wu @ i_t + Uu @ h + bu)
        r = torch.sigmoid(Wr @ i_t + Ur @ h + br)
        h_tilde = torch.tanh(Wh @ i_t + r * (Uh @ h) + bh)
        if layer.gru_type == "AGRU":
            h = (1 - a_t) * h + a_t * h_tilde
        elif layer.gru_type == "AUGRU":
            h = (1 - a_t * u) * h + a_t * u * h_tilde
        else:
            h = (1 - u) * h + u * h_tilde
    return h


@pytest.mark.parametrize("gru_type", ["AIGRU", "AGRU", "AUGRU"])
def test_attentional_gru_matches_the_equations_and_padding_never_changes_the_state(gru_type):
    torch.manual_seed(0)
    layer = AttentionalGRU(D, 5, gru_type).double()
    x, mask = padded()
    att = torch.rand(B, L, dtype=torch.float64)
    final = layer(x, att, mask)
    assert final.shape == (B, 5) and final[2].abs().sum() == 0  # the empty row keeps the zero state
    for b in range(B):
        n = LENGTHS[b]
        torch.testing.assert_close(final[b], attentional_gru_loop(layer, x[b, :n], att[b, :n]))
        if n:  # the unpadded sequence alone, through the layer
            alone = layer(x[b:b + 1, :n], att[b:b + 1, :n], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(final[b:b + 1], alone, rtol=0, atol=1e-12)
    junk_att = torch.where(mask, att, torch.rand_like(att))
    assert torch.equal(final, layer(with_junk(x, mask), junk_att, mask))  # a padded step never changes the state
    with pytest.raises(ValueError, match="gru_type"):
        AttentionalGRU(D, 5, "LSTM")


# -- BST: transformer block ---------------------------------------------------------------------------------


def transformer_loop(block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """BST's equations on one unpadded sequence [n, D], heads one by one -> [n, D]."""
    h = block.num_heads
    d = x.shape[1] // h
    q, k, v = x @ block.W_q.weight.T, x @ block.W_k.weight.T, x @ block.W_v.weight.T
    heads = [torch.softmax(q[:, i * d:(i + 1) * d] @ k[:, i * d:(i + 1) * d].T / d ** 0.5, dim=1) @ v[:, i * d:(i + 1) * d]
             for i in range(h)]
    s = block.norm1(x + torch.cat(heads, dim=1) @ block.W_o.weight.T)
    hidden = F.leaky_relu(s @ block.ffn[0].weight.T + block.ffn[0].bias)
    return block.norm2(s + hidden @ block.ffn[2].weight.T + block.ffn[2].bias)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_transformer_block_matches_the_equations_and_never_attends_padding(layer_norm):
    torch.manual_seed(0)
    block = TransformerBlock(8, num_heads=2, ffn_dim=12, layer_norm=layer_norm).double().eval()
    x, mask = padded(dim=8)
    out = block(x, mask)
    assert out.shape == (B, L, 8) and torch.isfinite(out).all()  # the empty row too
    for b in range(B):
        n = LENGTHS[b]
        torch.testing.assert_close(out[b, :n], transformer_loop(block, x[b, :n]))
    assert torch.equal(out[mask], block(with_junk(x, mask), mask)[mask])
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TransformerBlock(10, num_heads=4)


# -- DSIN: sessions, session interests, Bi-LSTM -------------------------------------------------------------


def sessions_loop(x: torch.Tensor, n: int, ids: list[int] | None, K: int, T: int) -> list[torch.Tensor]:
    """One row's kept sessions, latest first, each its latest T behaviours: a list of [n_k, D]."""
    if ids is None:  # windows of T counted back from the latest
        bounds = [(max(0, n - (k + 1) * T), n - k * T) for k in range(-(-n // T))]
    else:
        starts = [i for i in range(n) if i == 0 or ids[i] != ids[i - 1]]
        bounds = [(s, e) for s, e in zip(starts, starts[1:] + [n])][::-1]
    return [x[max(s, e - T):e] for s, e in bounds[:K]]


@pytest.mark.parametrize("by_id", [False, True])
def test_split_sessions_matches_a_loop(by_id):
    K, T = 3, 2
    lengths = [6, 3, 0, 1, 5, 2, 6]
    x, mask = padded(3, lengths)
    ids = torch.tensor([[5, 5, 5, 2, 7, 7], [1, 2, 3, 0, 0, 0], [0] * 6, [4, 0, 0, 0, 0, 0],
                        [1, 1, 2, 2, 1, 9], [3, 3, 0, 0, 0, 0], [1, 2, 2, 3, 3, 3]])
    sessions, smask = split_sessions(x, mask, K, T, ids if by_id else None)
    assert sessions.shape == (B, K, T, D) and smask.shape == (B, K, T)
    for b in range(B):
        want = sessions_loop(x[b], lengths[b], ids[b].tolist() if by_id else None, K, T)
        for k in range(K):
            n_k = len(want[k]) if k < len(want) else 0
            assert smask[b, k].tolist() == [t < n_k for t in range(T)], (b, k)
            if n_k:
                assert torch.equal(sessions[b, k, :n_k], want[k])
            assert sessions[b, k, n_k:].abs().sum() == 0
    junk = torch.where(mask, ids, 99)  # ids in padded positions do not open sessions
    assert torch.equal(smask, split_sessions(x, mask, K, T, junk if by_id else None)[1])


def test_windows_of_a_long_history_keep_the_latest_sessions():
    x = torch.arange(12, dtype=torch.float64).view(1, 12, 1)
    sessions, smask = split_sessions(x, torch.ones(1, 12, dtype=torch.bool), max_sessions=2, session_len=5)
    assert sessions[0, :, :, 0].tolist() == [[7, 8, 9, 10, 11], [2, 3, 4, 5, 6]]  # latest first, time order
    assert smask.all()


def test_session_interest_extractor_matches_each_session_alone():
    torch.manual_seed(0)
    K, T = 3, 4
    layer = SessionInterestExtractor(8, K, T, num_heads=2, ffn_dim=8).double().eval()
    for p in layer.bias:
        torch.nn.init.normal_(p)
    g = torch.Generator().manual_seed(4)
    sessions = torch.randn(2, K, T, 8, generator=g, dtype=torch.float64)
    sizes = [[4, 1, 0], [2, 0, 0]]
    mask = torch.arange(T) < torch.tensor(sizes).unsqueeze(-1)  # [2, K, T]
    out = layer(sessions, mask)
    w_k, w_t, w_c = layer.bias
    for b in range(2):
        for k in range(K):
            n = sizes[b][k]
            if not n:
                assert out[b, k].abs().sum() == 0
                continue
            q = sessions[b, k, :n] + w_k[k] + w_t[:n, None] + w_c  # BE_(k,t,c) = w^K_k + w^T_t + w^C_c
            alone = layer.transformer(q.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))[0]
            torch.testing.assert_close(out[b, k], alone.mean(dim=0))
    assert torch.equal(out, layer(torch.where(mask.unsqueeze(-1), sessions, 7.0), mask))


def test_session_interacting_bilstm_matches_each_row_alone():
    torch.manual_seed(0)
    layer = SessionInterestInteracting(D).double()
    x, _ = padded(5)
    counts = [3, 0, 1, 6, 2, 5, 4]
    mask = torch.arange(L) < torch.tensor(counts).unsqueeze(1)
    out = layer(x, mask)
    assert (out[~mask] == 0).all()
    for b, n in enumerate(counts):
        if n:
            both = layer.lstm(x[b:b + 1, :n])[0].view(n, 2, D)  # forward and backward states of the row alone
            torch.testing.assert_close(out[b, :n], both.mean(dim=1))
