"""Maths of the convolution (CCPM, FGCNN), graph (FiGNN) and learned-order (AFN, EulerNet) layers, each in
float64 against explicit loops over fields, units and positions or a hand formula; bad hyperparameters are
one-line ValueErrors."""
from __future__ import annotations

import cmath
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from conftest import make_batch
from dataset.schema import Schema
from layers.conv import CCPMConv, FeatureGeneration, flexible_p, kmax_pooling
from layers.graph import AttentionalScoring, FieldGraphAttention, FiGNNLayer, GraphPropagation
from layers.higher_order import EulerInteraction, LogarithmicTransform
from models import build_model

B, NUM_FIELDS, DIM = 3, 5, 4


@pytest.fixture
def emb() -> torch.Tensor:
    return torch.randn(B, NUM_FIELDS, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def randomize(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """float64, every parameter N(0, 0.5^2) (biases and norms included), eval mode."""
    g = torch.Generator().manual_seed(seed)
    module = module.double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return module


# -- AFN: logarithmic neurons -----------------------------------------------------------------------

def test_logarithmic_neurons_are_products_of_learned_powers(emb: torch.Tensor) -> None:
    emb[0, 1, 2] = 0.0  # a zero entry: clamped to eps before the log
    layer = randomize(LogarithmicTransform(NUM_FIELDS, 3, batch_norm=False, eps=1e-5))
    w = layer.weight.weight  # [N, F]
    out = layer(emb)
    assert out.shape == (B, 3, DIM)
    for b, j, d in itertools.product(range(B), range(3), range(DIM)):
        expected = 1.0
        for i in range(NUM_FIELDS):
            expected *= max(abs(emb[b, i, d].item()), 1e-5) ** w[j, i].item()
        assert_close(out[b, j, d].item(), expected, rtol=1e-9, atol=0)


def test_logarithmic_neurons_batch_norm_after_log_and_after_exp(emb: torch.Tensor) -> None:
    layer = randomize(LogarithmicTransform(NUM_FIELDS, 3, batch_norm=True))
    log_bn, exp_bn = layer.log_norm, layer.exp_norm
    with torch.no_grad():
        for bn in (log_bn, exp_bn):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)

    def bn(x: float, norm: torch.nn.BatchNorm1d, c: int) -> float:
        return ((x - norm.running_mean[c].item()) / math.sqrt(norm.running_var[c].item() + norm.eps)
                * norm.weight[c].item() + norm.bias[c].item())

    out = layer(emb)
    for b, j, d in itertools.product(range(B), range(3), range(DIM)):
        s = sum(layer.weight.weight[j, i].item() * bn(math.log(abs(emb[b, i, d].item())), log_bn, i)
                for i in range(NUM_FIELDS))
        assert_close(out[b, j, d].item(), bn(math.exp(s), exp_bn, j), rtol=1e-9, atol=1e-12)


def test_logarithmic_neurons_in_training_equal_batch_norm_over_b_n_d_at_criteo_width() -> None:
    """The layer batch-normalizes its neurons as [B*D, N] rows (a fast CPU layout); in training mode, in float64
    at 39 fields, output, running statistics and gradients must equal BatchNorm1d over [B, N, D], the old code."""
    fields, neurons, gen = 39, 7, torch.Generator().manual_seed(3)
    layer = LogarithmicTransform(fields, neurons, batch_norm=True).double().train()
    with torch.no_grad():
        layer.weight.weight.normal_(0, 0.1, generator=gen)
    reference = copy.deepcopy(layer)
    emb = torch.randn(5, fields, DIM, dtype=torch.float64, generator=gen, requires_grad=True)
    out = layer(emb)
    log_emb = reference.log_norm(emb.abs().clamp(min=reference.eps).log())
    expected = reference.exp_norm(reference.weight(log_emb.transpose(1, 2)).transpose(1, 2).exp())  # [B, N, D]
    assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var"):
        assert_close(getattr(layer.exp_norm, name), getattr(reference.exp_norm, name), rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(out, [emb, *layer.parameters()], grad_out)
    want = torch.autograd.grad(expected, [emb, *reference.parameters()], grad_out)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_logarithmic_neurons_reject_bad_sizes() -> None:
    with pytest.raises(ValueError, match="logarithmic_neurons must be >= 1"):
        LogarithmicTransform(NUM_FIELDS, 0)


def test_afn_plus_is_a_learned_mix_of_afn_and_dnn(schema: Schema) -> None:
    model = build_model("AFNPlus", schema, logarithmic_neurons=4, hidden_units=(8,), dnn_hidden_units=(8,)).eval()
    batch = make_batch(schema, 6)
    emb = model.embedding(batch)
    parts = torch.cat([model.afn_logit(emb, batch), model.dnn(model.embedding.dnn_input(emb, batch))], dim=1)
    assert_close(model(batch), parts @ model.ensemble.weight.T + model.ensemble.bias)
    with pytest.raises(ValueError, match="logarithmic_neurons must be >= 1"):
        build_model("AFN", schema, logarithmic_neurons=0)


# -- EulerNet ----------------------------------------------------------------------------------------

def test_euler_interaction_equals_complex_powers_plus_implicit_part(emb: torch.Tensor) -> None:
    n_in, n_out = NUM_FIELDS, 3
    layer = randomize(EulerInteraction(n_in, n_out, DIM))
    r, p = torch.cos(emb) * 1.3, torch.sin(emb) * 0.7
    out_r, out_p = layer((r, p))
    assert out_r.shape == out_p.shape == (B, n_out, DIM)
    w, bias = layer.implicit.weight, layer.implicit.bias  # [N_out*D, N_in*D]
    for b, k, d in itertools.product(range(B), range(n_out), range(DIM)):
        log_z = complex(layer.bias_log[k, d].item(), layer.bias_phase[k, d].item())
        for j in range(n_in):  # prod_j z_j^alpha_jk, powers through the principal log (|z|^2 + 1e-8)
            z = complex(r[b, j, d].item(), p[b, j, d].item())
            log_z += layer.orders[j, k].item() * complex(0.5 * math.log(abs(z) ** 2 + 1e-8), cmath.phase(z))
        explicit = cmath.exp(log_z)
        row = k * DIM + d
        im_r = max(0.0, sum(w[row, j * DIM + e].item() * r[b, j, e].item() for j in range(n_in) for e in range(DIM))
                   + bias[row].item())
        im_p = max(0.0, sum(w[row, j * DIM + e].item() * p[b, j, e].item() for j in range(n_in) for e in range(DIM))
                   + bias[row].item())
        assert_close(out_r[b, k, d].item(), explicit.real + im_r, rtol=1e-9, atol=1e-12)
        assert_close(out_p[b, k, d].item(), explicit.imag + im_p, rtol=1e-9, atol=1e-12)


def test_euler_interaction_layer_norm_and_order_init(emb: torch.Tensor) -> None:
    assert_close(EulerInteraction(4, 4, DIM).orders, torch.eye(4))  # same size: every output starts as one input
    layer = randomize(EulerInteraction(NUM_FIELDS, 2, DIM, layer_norm=True))
    plain = EulerInteraction(NUM_FIELDS, 2, DIM).double().eval()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("norm")})
    r, p = plain((torch.cos(emb), torch.sin(emb)))
    out_r, out_p = layer((torch.cos(emb), torch.sin(emb)))
    for x, out, norm in ((r, out_r, layer.norm_r), (p, out_p, layer.norm_p)):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        assert_close(out, (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)
    with pytest.raises(ValueError, match="euler_units must all be >= 1"):
        EulerInteraction(NUM_FIELDS, 0, DIM)


def test_eulernet_starts_from_mu_cos_and_mu_sin(schema: Schema) -> None:
    model = build_model("EulerNet", schema, euler_units=(3,)).eval()
    batch = make_batch(schema, 5)
    emb = model.embedding(batch)
    r, p = model.layers[0]((model.mu * torch.cos(emb), model.mu * torch.sin(emb)))
    flat = torch.cat([(r + p).flatten(1), batch["dense"]], dim=1)
    assert_close(model(batch), model.fc(flat))
    with pytest.raises(ValueError, match="euler_units must list at least one layer"):
        build_model("EulerNet", schema, euler_units=())


# -- FiGNN -------------------------------------------------------------------------------------------

def test_graph_attention_is_a_softmax_over_the_other_fields(emb: torch.Tensor) -> None:
    layer = randomize(FieldGraphAttention(NUM_FIELDS, DIM))
    w = layer.score.weight[0]  # [2D]
    graph = layer(emb)
    assert graph.shape == (B, NUM_FIELDS, NUM_FIELDS)
    for b, i in itertools.product(range(B), range(NUM_FIELDS)):
        scores = {j: F.leaky_relu(w @ torch.cat([emb[b, i], emb[b, j]]), 0.01).item()
                  for j in range(NUM_FIELDS) if j != i}
        total = sum(math.exp(s) for s in scores.values())
        assert graph[b, i, i].item() == 0.0
        for j, s in scores.items():
            assert_close(graph[b, i, j].item(), math.exp(s) / total, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="needs at least 2 fields"):
        FieldGraphAttention(1, DIM)


def test_graph_propagation_equals_per_edge_loop(emb: torch.Tensor) -> None:
    layer = randomize(GraphPropagation(NUM_FIELDS, DIM))
    graph = torch.rand(B, NUM_FIELDS, NUM_FIELDS, dtype=torch.float64)
    out = layer(graph, emb)
    for b, i in itertools.product(range(B), range(NUM_FIELDS)):
        received = sum(graph[b, i, j] * (layer.w_out[j] @ emb[b, j]) for j in range(NUM_FIELDS))
        assert_close(out[b, i], layer.w_in[i] @ received + layer.bias)


@pytest.mark.parametrize("use_gru,use_residual,reuse", [(True, True, False), (False, True, True), (True, False, False)])
def test_fignn_layer_steps(emb: torch.Tensor, use_gru: bool, use_residual: bool, reuse: bool) -> None:
    layer = randomize(FiGNNLayer(NUM_FIELDS, DIM, 3, use_gru, use_residual, reuse))
    assert len(layer.propagation) == (1 if reuse else 3)
    graph = layer.graph(emb)
    h = emb.clone()
    for t in range(3):
        a = layer.propagation[0 if reuse else t](graph, h)
        new = torch.empty_like(h)
        for b, i in itertools.product(range(B), range(NUM_FIELDS)):  # one GRU update per node
            new[b, i] = layer.gru(a[b, i:i + 1], h[b, i:i + 1])[0] if use_gru else a[b, i] + h[b, i]
        h = new + emb if use_residual else new
    assert_close(layer(emb), h)
    with pytest.raises(ValueError, match="gnn_layers must be >= 1"):
        FiGNNLayer(NUM_FIELDS, DIM, 0)


def test_attentional_scoring_is_a_weighted_sum_of_node_scores(emb: torch.Tensor) -> None:
    layer = randomize(AttentionalScoring(NUM_FIELDS, DIM))
    w1, w2 = layer.node_score.weight[0], layer.node_weight.weight  # [D], [F, F*D]
    out = layer(emb)
    assert out.shape == (B, 1)
    for b in range(B):
        flat = emb[b].flatten()
        expected = sum(torch.sigmoid(w2[i] @ flat) * (w1 @ emb[b, i]) for i in range(NUM_FIELDS))
        assert_close(out[b, 0], expected)


# -- CCPM --------------------------------------------------------------------------------------------

def test_kmax_pooling_keeps_the_largest_values_in_order() -> None:
    x = torch.randn(2, 3, 7, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = kmax_pooling(x, 3, dim=2)
    for b, c, d in itertools.product(range(2), range(3), range(4)):
        column = x[b, c, :, d].tolist()
        top = sorted(sorted(range(7), key=lambda t: -column[t])[:3])  # positions of the 3 largest, in order
        assert out[b, c, :, d].tolist() == [column[t] for t in top]


def test_flexible_p_follows_the_paper_formula() -> None:
    assert [flexible_p(i, 3, 10) for i in (1, 2, 3)] == [8, 3, 3]  # (1 - 1/9) * 10, (1 - 2/3) * 10 -> 3, last 3
    assert [flexible_p(i, 2, 20) for i in (1, 2)] == [10, 3]


def test_ccpm_conv_equals_wide_convolution_pmax_tanh_loop(emb: torch.Tensor) -> None:
    layer = randomize(CCPMConv(NUM_FIELDS, DIM, channels=(2, 3), kernel_heights=(3, 2)))
    assert layer.pooled == [3, 3]  # p_1 = max(3, (1 - 1/2) * 5), p_2 = 3
    x = emb.unsqueeze(1)  # [B, 1, F, D]
    for conv, p in zip(layer.convs, layer.pooled):
        c_out, c_in, width, _ = conv.weight.shape
        height = x.shape[2]
        padded = torch.cat([x.new_zeros(B, c_in, width - 1, DIM), x, x.new_zeros(B, c_in, width - 1, DIM)], dim=2)
        wide = torch.empty(B, c_out, height + width - 1, DIM, dtype=torch.float64)
        for b, o, t, d in itertools.product(range(B), range(c_out), range(height + width - 1), range(DIM)):
            wide[b, o, t, d] = conv.bias[o] + sum(conv.weight[o, c, u, 0] * padded[b, c, t + u, d]
                                                  for c in range(c_in) for u in range(width))
        pooled = torch.empty(B, c_out, p, DIM, dtype=torch.float64)
        for b, o, d in itertools.product(range(B), range(c_out), range(DIM)):
            column = wide[b, o, :, d]
            keep = sorted(sorted(range(len(column)), key=lambda t: -column[t].item())[:p])
            pooled[b, o, :, d] = column[keep]
        x = torch.tanh(pooled)
    assert_close(layer(emb), x)
    assert layer.output_dim == 3 * 3 * DIM


def test_ccpm_conv_caps_p_at_the_height_it_receives() -> None:
    layer = CCPMConv(2, DIM, channels=(2,), kernel_heights=(1,))  # 2 fields, kernel 1: height 2 < 3
    assert layer.pooled == [2] and layer(torch.randn(B, 2, DIM)).shape == (B, 2, 2, DIM)


def test_ccpm_conv_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="one entry per conv layer"):
        CCPMConv(NUM_FIELDS, DIM, channels=(2, 3), kernel_heights=(3,))
    with pytest.raises(ValueError, match="conv activation must be one of"):
        CCPMConv(NUM_FIELDS, DIM, activation="dice")


# -- FGCNN -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", [2, 3])
def test_feature_generation_equals_conv_pool_recombine_loop(emb: torch.Tensor, pooling: int) -> None:
    layer = randomize(FeatureGeneration(NUM_FIELDS, DIM, channels=(2, 3), kernel_height=3, pooling_size=pooling,
                                        recombined_channels=2, batch_norm=False))
    heights = [math.ceil(NUM_FIELDS / pooling), math.ceil(math.ceil(NUM_FIELDS / pooling) / pooling)]
    assert layer.num_new_fields == 2 * sum(heights)
    x, new = emb.unsqueeze(1), []
    for seq, recombine in zip(layer.convs, layer.recombine):
        conv, linear = seq[0], recombine[0]
        c_out, c_in, width, _ = conv.weight.shape
        height, pad = x.shape[2], (width - 1) // 2
        padded = torch.cat([x.new_zeros(B, c_in, pad, DIM), x, x.new_zeros(B, c_in, pad, DIM)], dim=2)
        conv_out = torch.empty(B, c_out, height, DIM, dtype=torch.float64)
        for b, o, t, d in itertools.product(range(B), range(c_out), range(height), range(DIM)):
            conv_out[b, o, t, d] = torch.tanh(conv.bias[o] + sum(conv.weight[o, c, u, 0] * padded[b, c, t + u, d]
                                                                 for c in range(c_in) for u in range(width)))
        pooled_height = math.ceil(height / pooling)
        x = torch.stack([conv_out[:, :, s * pooling:(s + 1) * pooling].amax(dim=2) for s in range(pooled_height)],
                        dim=2)  # [B, C, h, D], the last window may be short
        flat = x.flatten(start_dim=1)
        new.append(torch.tanh(flat @ linear.weight.T + linear.bias).view(B, -1, DIM))
    assert_close(layer(emb), torch.cat(new, dim=1))


def test_feature_generation_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="pooling_sizes and recombined_channels must be >= 1"):
        FeatureGeneration(NUM_FIELDS, DIM, pooling_size=0)
    with pytest.raises(ValueError, match="channels must list >= 1 conv layer"):
        FeatureGeneration(NUM_FIELDS, DIM, channels=())


def test_fgcnn_feeds_raw_and_generated_features_with_their_inner_products(schema: Schema) -> None:
    model = build_model("FGCNN", schema, channels=(2,), hidden_units=(8,)).eval()
    batch = make_batch(schema, 6)
    emb = model.embedding(batch)
    features = torch.cat([emb, model.generation(emb)], dim=1)
    n = features.shape[1]
    assert n == model.embedding.num_fields + model.generation.num_new_fields
    products = torch.stack([(features[:, i] * features[:, j]).sum(-1)
                            for i, j in itertools.combinations(range(n), 2)], dim=1)
    expected = model.dnn(torch.cat([features.flatten(1), batch["dense"], products], dim=1))
    assert_close(model(batch), expected)
