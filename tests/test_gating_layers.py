"""Maths of layers/gating.py (FinalMLP, FINAL/FinalNet, MaskNet, GDCN, EDCN) and of DLRM's dot interaction, each in
float64 against explicit loops over units / fields / heads or a hand formula; bad hyperparameters are one-line
ValueErrors; and the model-level behaviour the generic tests in test_models.py do not reach (FinalNet's
self-distillation loss, the non-default structures)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from conftest import make_batch
from dataset.schema import Schema
from layers.gating import (Bridge, FactorizedInteraction, FeatureSelection, FieldGate, FinalBlock, GatedCrossNet,
                           InteractionAggregation, MaskBlock, Regulation)
from models import build_model

B = 3
SCHEMA = Schema(("a", "b", "c", "d"), (5, 6, 7, 8), ("x", "y"))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64 copy with every parameter drawn from N(0, 0.5): no parameter hides behind a zero or one init."""
    module = module.double()
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return module


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def linear_unit(layer: torch.nn.Linear, x: torch.Tensor, b: int, k: int) -> float:
    """Unit ``k`` of ``layer(x[b])`` by an explicit sum."""
    total = sum(layer.weight[k, j].item() * x[b, j].item() for j in range(x.shape[1]))
    return total + (layer.bias[k].item() if layer.bias is not None else 0.0)


# -- FinalMLP ----------------------------------------------------------------------------------------------------


def test_feature_selection_gates_are_twice_a_sigmoid_of_the_gate_mlp():
    layer = randomize(FeatureSelection(input_dim=6, context_dim=4, hidden_units=(5,)))
    x = torch.randn(B, 6, generator=gen(1), dtype=torch.float64)
    x1, x2 = layer(x)
    for k, out in enumerate((x1, x2)):
        lin1, lin2 = [m for m in layer.gates[k].modules() if isinstance(m, torch.nn.Linear)]
        ctx = layer.context[k].unsqueeze(0)  # [1, D]
        hidden = torch.tensor([[max(0.0, linear_unit(lin1, ctx, 0, u)) for u in range(5)]], dtype=torch.float64)
        for b, j in itertools.product(range(B), range(6)):
            gate = 2 * sigmoid(linear_unit(lin2, hidden, 0, j))
            assert out[b, j].item() == pytest.approx(gate * x[b, j].item(), rel=1e-10)


def test_interaction_aggregation_equals_per_head_bilinear_loops():
    heads, d1, d2 = 2, 6, 4
    layer = randomize(InteractionAggregation(d1, d2, heads))
    o1 = torch.randn(B, d1, generator=gen(1), dtype=torch.float64)
    o2 = torch.randn(B, d2, generator=gen(2), dtype=torch.float64)
    out = layer(o1, o2)
    assert out.shape == (B, 1)
    h1, h2 = d1 // heads, d2 // heads
    for b in range(B):
        expected = linear_unit(layer.linear1, o1, b, 0) + linear_unit(layer.linear2, o2, b, 0)
        for h, i, j in itertools.product(range(heads), range(h1), range(h2)):
            expected += o1[b, h * h1 + i].item() * layer.weight[h, i, j].item() * o2[b, h * h2 + j].item()
        assert out[b, 0].item() == pytest.approx(expected, rel=1e-10)


def test_interaction_aggregation_rejects_heads_that_do_not_divide_the_streams():
    with pytest.raises(ValueError, match="fusion_heads must be >= 1 and divide both stream widths"):
        InteractionAggregation(6, 4, 3)


def test_finalmlp_feature_gates_start_at_one_and_learn():
    model = build_model("FinalMLP", SCHEMA, embed_dim=4, hidden_units=(8,), hidden_units2=(4,), fusion_heads=2,
                        feature_selection=True, fs_hidden_units=(6,))
    assert_close(model.select.weights(), torch.ones(2, model.embedding.output_dim))  # 2 sigmoid(0)
    batch = make_batch(SCHEMA, 16)
    model.loss(batch, model(batch)).backward()
    out_bias = model.select.gates[0].net[-1].bias  # b_k = 0 and zero biases: ReLU(0) leaves only this path alive
    assert out_bias.grad is not None and out_bias.grad.abs().sum() > 0


# -- FINAL / FinalNet --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("residual_type", ["concat", "sum"])
def test_factorized_interaction_equals_unit_loops(residual_type):
    d_in, d_out = 5, 4
    layer = randomize(FactorizedInteraction(d_in, d_out, residual_type))
    x = torch.randn(B, d_in, generator=gen(1), dtype=torch.float64)
    out = layer(x)
    assert out.shape == (B, d_out)
    half = layer.linear.out_features // 2  # a = units [0, half), c = units [half, 2 half)
    for b in range(B):
        a = [linear_unit(layer.linear, x, b, k) for k in range(half)]
        c = [linear_unit(layer.linear, x, b, half + k) for k in range(half)]
        expected = a + [ak * ck for ak, ck in zip(a, c)] if residual_type == "concat" else \
            [ak + ak * ck for ak, ck in zip(a, c)]
        assert out[b].tolist() == pytest.approx(expected, rel=1e-10)


def test_factorized_interaction_rejects_bad_residual_and_odd_concat_width():
    with pytest.raises(ValueError, match="residual_type must be one of"):
        FactorizedInteraction(4, 4, "add")
    with pytest.raises(ValueError, match="need even widths"):
        FactorizedInteraction(4, 5, "concat")
    with pytest.raises(ValueError, match="hidden_units is empty"):
        FinalBlock(4, ())


def test_final_block_stacks_layers_with_batch_norm_activation_and_dropout():
    block = FinalBlock(6, (8, 4), activation="relu", dropout=0.5, batch_norm=True)
    kinds = [type(m).__name__ for m in block.net]
    assert kinds == ["FactorizedInteraction", "BatchNorm1d", "ReLU", "Dropout"] * 2 and block.output_dim == 4


def test_field_gate_equals_field_loops_and_starts_as_identity():
    num_fields, dim = 4, 3
    emb = torch.randn(B, num_fields, dim, generator=gen(1), dtype=torch.float64)
    fresh = FieldGate(num_fields).double()
    assert_close(fresh(emb), torch.cat([emb, emb], dim=1))  # W = 0, b = 1: every gate 1
    layer = randomize(FieldGate(num_fields))
    out = layer(emb)
    assert out.shape == (B, 2 * num_fields, dim)
    for b, f, d in itertools.product(range(B), range(num_fields), range(dim)):
        gate = sum(layer.weight[f, g].item() * emb[b, g, d].item() for g in range(num_fields)) + layer.bias[f].item()
        assert out[b, f, d].item() == emb[b, f, d].item()
        assert out[b, num_fields + f, d].item() == pytest.approx(emb[b, f, d].item() * gate, rel=1e-10)


def test_finalnet_2b_loss_adds_each_blocks_loss_against_the_detached_ensemble():
    torch.manual_seed(0)
    model = build_model("FinalNet", SCHEMA, embed_dim=4, hidden_units=(8,), block2_units=(4,))
    batch = make_batch(SCHEMA, 16)
    logits = model(batch)
    y1, y2 = model._block_logits
    assert_close(logits, (y1 + y2) / 2)
    label, soft = batch["label"][:, :1], torch.sigmoid(logits).detach()
    expected = sum(F.binary_cross_entropy_with_logits(y, t) for y, t in ((logits, label), (y1, soft), (y2, soft)))
    assert_close(model.loss(batch, logits), expected)
    with pytest.raises(RuntimeError, match="call logits = model\\(batch\\) right before"):
        model.loss(batch, logits)  # the block outputs were used up


def test_finalnet_1b_is_block_one_with_the_plain_task_loss():
    model = build_model("FinalNet", SCHEMA, embed_dim=4, hidden_units=(8,), block_type="1B", feature_gating=False)
    assert model.block2 is None and model.gate is None
    batch = make_batch(SCHEMA, 16)
    logits = model(batch)
    assert_close(model.loss(batch, logits), F.binary_cross_entropy_with_logits(logits, batch["label"][:, :1]))
    with pytest.raises(ValueError, match="block_type must be one of"):
        build_model("FinalNet", SCHEMA, block_type="3B")


# -- MaskNet -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_norm", [False, True])
def test_mask_block_equals_hand_formula(layer_norm):
    emb_dim, hidden_dim, out_dim = 6, 5, 4
    block = randomize(MaskBlock(emb_dim, hidden_dim, out_dim, reduction_ratio=0.5, layer_norm=layer_norm))
    v_emb = torch.randn(B, emb_dim, generator=gen(1), dtype=torch.float64)
    v_hidden = torch.randn(B, hidden_dim, generator=gen(2), dtype=torch.float64)
    out = block(v_emb, v_hidden)
    agg1, agg2 = [m for m in block.mask.modules() if isinstance(m, torch.nn.Linear)]
    assert agg1.out_features == int(0.5 * hidden_dim)
    w_h = block.hidden[0]
    for b in range(B):
        agg = torch.tensor([[max(0.0, linear_unit(agg1, v_emb, b, u)) for u in range(agg1.out_features)]],
                               dtype=torch.float64)
        masked = [linear_unit(agg2, agg, 0, k) * v_hidden[b, k].item() for k in range(hidden_dim)]
        z = [sum(w_h.weight[o, k].item() * masked[k] for k in range(hidden_dim)) for o in range(out_dim)]
        if layer_norm:
            ln = block.hidden[1]
            mean = sum(z) / out_dim
            var = sum((v - mean) ** 2 for v in z) / out_dim
            z = [(v - mean) / math.sqrt(var + ln.eps) * ln.weight[o].item() + ln.bias[o].item() for o, v in enumerate(z)]
        assert out[b].tolist() == pytest.approx([max(0.0, v) for v in z], rel=1e-9)


def test_mask_block_rejects_a_reduction_ratio_that_leaves_no_units():
    with pytest.raises(ValueError, match="leaves no aggregation units"):
        MaskBlock(8, 4, 4, reduction_ratio=0.1)


@pytest.mark.parametrize("structure", ["serial", "parallel"])
def test_masknet_structures_with_layer_norms(structure):
    model = build_model("MaskNet", SCHEMA, embed_dim=4, structure=structure, hidden_units=(8, 6), block_dim=5,
                        reduction_ratio=0.5, layer_norm=True, embed_layer_norm=True)
    widths = [blk.hidden[0].out_features for blk in model.blocks]
    assert widths == ([8, 6] if structure == "serial" else [5, 5])
    batch = make_batch(SCHEMA, 16)
    out = model(batch)
    assert out.shape == (16, 1)
    out.sum().backward()
    assert model.norm_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="MaskNet structure must be one of"):
        build_model("MaskNet", SCHEMA, structure="stacked")


# -- GDCN --------------------------------------------------------------------------------------------------------


def test_gated_cross_net_equals_unit_loops():
    d, num_layers = 4, 2
    net = randomize(GatedCrossNet(d, num_layers))
    c0 = torch.randn(B, d, generator=gen(1), dtype=torch.float64)
    out = net(c0)
    for b in range(B):
        c = c0[b].tolist()
        for layer in range(num_layers):
            wc, wg, bias = net.cross[layer].weight, net.gate[layer].weight, net.bias[layer]
            cross = [sum(wc[k, j].item() * c[j] for j in range(d)) + bias[k].item() for k in range(d)]
            gate = [sigmoid(sum(wg[k, j].item() * c[j] for j in range(d))) for k in range(d)]
            c = [c0[b, k].item() * cross[k] * gate[k] + c[k] for k in range(d)]
        assert out[b].tolist() == pytest.approx(c, rel=1e-10)


def test_gated_cross_net_bias_is_uniform_and_bad_depth_is_rejected():
    net = GatedCrossNet(50, 3)
    assert net.bias.min() >= 0 and net.bias.max() <= 1 and net.bias.std() > 0.1  # U(0, 1)
    with pytest.raises(ValueError, match="num_cross_layers must be >= 1"):
        GatedCrossNet(4, 0)


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_gdcn_structures(structure):
    model = build_model("GDCN", SCHEMA, embed_dim=4, structure=structure, hidden_units=(8,))
    d = model.embedding.output_dim
    assert model.fc.in_features == (d + 8 if structure == "parallel" else 8)
    assert model(make_batch(SCHEMA, 16)).shape == (16, 1)
    with pytest.raises(ValueError, match="GDCN structure must be one of"):
        build_model("GDCN", SCHEMA, structure="serial")


# -- EDCN --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bridge_type", ["hadamard_product", "pointwise_addition", "concatenation",
                                         "attention_pooling"])
def test_bridge_equals_its_formula(bridge_type):
    d = 4
    bridge = randomize(Bridge(d, bridge_type))
    x = torch.randn(B, d, generator=gen(1), dtype=torch.float64)
    h = torch.randn(B, d, generator=gen(2), dtype=torch.float64)
    out = bridge(x, h)
    for b in range(B):
        if bridge_type == "hadamard_product":
            expected = [x[b, k].item() * h[b, k].item() for k in range(d)]
        elif bridge_type == "pointwise_addition":
            expected = [x[b, k].item() + h[b, k].item() for k in range(d)]
        elif bridge_type == "concatenation":
            lin = bridge.fuse.net[0]
            xh = torch.cat([x, h], dim=1)
            expected = [max(0.0, linear_unit(lin, xh, b, k)) for k in range(d)]
        else:
            expected = [0.0] * d
            for v, att in ((x, bridge.attention[0]), (h, bridge.attention[1])):
                hidden = torch.tensor([[max(0.0, linear_unit(att[0], v, b, u)) for u in range(d)]], dtype=torch.float64)
                scores = [linear_unit(att[2], hidden, 0, k) for k in range(d)]
                total = sum(math.exp(s) for s in scores)
                expected = [e + math.exp(s) / total * v[b, k].item() for k, (e, s) in enumerate(zip(expected, scores))]
        assert out[b].tolist() == pytest.approx(expected, rel=1e-10)


def test_bridge_rejects_unknown_type():
    with pytest.raises(ValueError, match="bridge_type must be one of"):
        Bridge(4, "product")


def test_regulation_gates_are_a_tempered_softmax_over_field_groups():
    widths, tau = (3, 3, 1, 1), 2.0
    layer = randomize(Regulation(widths, temperature=tau))
    x = torch.randn(B, sum(widths), generator=gen(1), dtype=torch.float64)
    outs = layer(x)
    group = [g for g, w in enumerate(widths) for _ in range(w)]
    for k, out in enumerate(outs):
        total = sum(math.exp(layer.weight[k, g].item() / tau) for g in range(len(widths)))
        for b, j in itertools.product(range(B), range(sum(widths))):
            gate = math.exp(layer.weight[k, group[j]].item() / tau) / total
            assert out[b, j].item() == pytest.approx(gate * x[b, j].item(), rel=1e-10)
    uniform = Regulation(widths).gates()  # w starts at 1: each group 1/G
    assert_close(uniform, torch.full((2, sum(widths)), 1 / len(widths)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Regulation(widths, temperature=0)


def test_edcn_cross_residual_flag_and_bad_depth():
    batch = make_batch(SCHEMA, 16)
    torch.manual_seed(0)
    with_res = build_model("EDCN", SCHEMA, embed_dim=4, num_cross_layers=2)
    torch.manual_seed(0)
    without = build_model("EDCN", SCHEMA, embed_dim=4, num_cross_layers=2, cross_residual=False)
    with_res.eval(), without.eval()
    assert not torch.allclose(with_res(batch), without(batch))  # same weights, only the residual differs
    groups = with_res.regulations[0].group
    assert groups.numel() == with_res.embedding.output_dim == 4 * 4 + 2  # 4 fields x D=4, 2 raw dense values
    with pytest.raises(ValueError, match="num_cross_layers must be >= 1"):
        build_model("EDCN", SCHEMA, num_cross_layers=0)


# -- DLRM --------------------------------------------------------------------------------------------------------


def test_dlrm_dots_every_pair_of_bottom_output_and_fields():
    model = build_model("DLRM", SCHEMA, embed_dim=4, bottom_units=(8,), top_units=(6,)).double().eval()
    batch = make_batch(SCHEMA, 5)
    batch["dense"] = batch["dense"].double()
    z = model.bottom(batch["dense"])  # [B, D]
    assert z.shape == (5, 4) and (z >= 0).all()  # ReLU after the last bottom layer too
    vectors = torch.cat([z.unsqueeze(1), model.embedding(batch)], dim=1)  # [B, 5, D]
    dots = torch.tensor([[sum(vectors[b, i, k].item() * vectors[b, j, k].item() for k in range(4))
                          for i, j in itertools.combinations(range(5), 2)] for b in range(5)], dtype=torch.float64)
    assert_close(model(batch), model.top(torch.cat([z, dots], dim=1)))


def test_dlrm_without_raw_dense_has_no_bottom_and_needs_two_vectors():
    assert build_model("DLRM", SCHEMA, dense_mode="embed").bottom is None  # dense fields are fields here
    no_dense = Schema(("a", "b"), (4, 5))
    model = build_model("DLRM", no_dense, embed_dim=4, top_units=(6,))
    assert model.bottom is None and model.top.net[0].in_features == 1  # one pair, no z
    with pytest.raises(ValueError, match="DLRM crosses pairs of vectors and needs at least 2"):
        build_model("DLRM", Schema(("a",), (4,)))
