"""Every registered model honours the model contract and learns on real data.

Single-task models train on the real Criteo rows in ../shared/data/criteo; multi-task ones on the real
census-income rows (income, never married), each preprocessed once per session into a temporary store.
Models that need behaviour sequences (``needs_sequences``: DIN, DIEN, BST, DSIN) take the sequence schema
and train on the real Amazon Beauty store (``preprocess.py amazon``, DIN's protocol).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from conftest import SHARED_DATA, load_rows, make_batch
from dataset.schema import Schema
from dataset.store import StoreReader

ALL_MODELS = models.model_names()
# Paper-sized towers (1000x5 DNNs) make no difference to what these tests check, only to their run time.
SMALL_SIZES = {"embed_dim": 8, "hidden_units": (64, 64), "cin_layer_sizes": (16, 16), "attention_layers": 2,
               "expert_units": (32,), "bottom_units": (64,), "tower_units": (16,), "num_shared_experts": 2,
               "hidden_units2": (32,), "fusion_heads": 2, "block2_units": (32,), "logarithmic_neurons": 16,
               "dnn_hidden_units": (64, 64), "channels": (4, 4, 4), "recombined_channels": 1}


def small(name: str) -> dict:
    """Small sizes for the hyperparameters this model has."""
    return {k: v for k, v in SMALL_SIZES.items() if k in models.model_hparams(models.get_model_class(name))}


def is_multitask(name: str) -> bool:
    return models.get_model_class(name).multitask


def needs_sequences(name: str) -> bool:
    return models.get_model_class(name).needs_sequences


SEQUENCE_MODELS = [name for name in ALL_MODELS if needs_sequences(name)]


def pick_schema(name: str, schema: Schema, mt_schema: Schema, seq_schema: Schema) -> Schema:
    return mt_schema if is_multitask(name) else seq_schema if needs_sequences(name) else schema


def test_registry_is_case_insensitive_and_lists_names_on_error():
    assert models.get_model_class("deepfm") is models.get_model_class("DeepFM")
    with pytest.raises(ValueError, match="valid models: .*DeepFM"):
        models.get_model_class("DeepFN")


@pytest.mark.parametrize("dense_mode", ["vector", "embed"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape_and_gradient_reach_shared_embedding(name, dense_mode, schema, mt_schema, seq_schema):
    s = pick_schema(name, schema, mt_schema, seq_schema)
    torch.manual_seed(0)
    model = models.build_model(name, s, dense_mode=dense_mode, **small(name))
    batch = make_batch(s, 16)
    out = model(batch)
    assert out.shape == (16, model.num_tasks)
    assert model.num_tasks == (s.num_tasks if is_multitask(name) else 1)
    assert torch.isfinite(out).all()
    F.binary_cross_entropy_with_logits(out, batch["label"][:, : model.num_tasks]).backward()
    # LR has first-order weights only; every other model must train the embedding vectors.
    table = model.embedding.weight if name == "LR" else model.embedding.table
    grad = table.weight.grad
    assert grad is not None and grad.abs().sum() > 0, f"{name}: no gradient reaches the shared embedding"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_sequence_fields_pooled_and_mixed_task_types(name, seq_schema):
    """Every model takes a store with sequence fields (pooled by the shared embedding) and regression labels:
    [B, T] logits, and the gradient reaches the history rows of the shared item table."""
    s = Schema(seq_schema.sparse_fields, seq_schema.vocab_sizes, seq_schema.dense_fields, ("click", "rating"),
               task_types=("binary", "regression"), sequence_fields=seq_schema.sequence_fields,
               user_field=seq_schema.user_field)
    torch.manual_seed(0)
    model = models.build_model(name, s, seq_pooling="sum", **small(name))
    batch = make_batch(s, 16)
    batch["seq_len"][:, 1:] = 0  # only the item history is non-empty
    batch["sparse"][:, 1] = 0  # and no candidate item other than id 0
    out = model(batch)
    assert out.shape == (16, model.num_tasks) and torch.isfinite(out).all()
    out.sum().backward()
    table = model.embedding.weight if name == "LR" else model.embedding.table
    item_start = 9  # after the user vocabulary
    hist_rows = (batch["seq"][:, :5][batch["seq"][:, :5] > 0] + item_start).unique()
    assert table.weight.grad[hist_rows].abs().sum() > 0, f"{name}: no gradient reaches the history rows"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_works_without_dense_fields(name, seq_schema):
    s = Schema(("a", "b", "c"), (4, 5, 6), (), ("click", "conversion"))
    if needs_sequences(name):
        s = Schema(seq_schema.sparse_fields, seq_schema.vocab_sizes, (), ("click", "conversion"),
                   sequence_fields=seq_schema.sequence_fields)
    model = models.build_model(name, s, **small(name))
    assert model(make_batch(s, 4)).shape == (4, model.num_tasks)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_a_store_without_histories_is_a_clear_error_naming_the_stores_that_have_them(name, schema, seq_schema):
    genres_only = Schema(seq_schema.sparse_fields, seq_schema.vocab_sizes, sequence_fields=seq_schema.sequence_fields[2:])
    for s in (schema, genres_only):  # no sequences; a multi-value field that is nobody's history
        with pytest.raises(ValueError, match=f"{name} attends over behaviour histories.*preprocess.py amazon.*"
                                             "preprocess.py synthetic_behaviour"):
            models.build_model(name, s, **small(name))


def load_split(store: StoreReader, split: str) -> dict[str, torch.Tensor]:
    return load_rows(store.path, split)


@pytest.fixture(scope="module")
def criteo_rows(tmp_path_factory) -> tuple[Schema, dict[str, torch.Tensor]]:
    from dataset.criteo import preprocess_criteo

    out = tmp_path_factory.mktemp("stores") / "criteo"
    preprocess_criteo(SHARED_DATA / "criteo" / "head8k.txt", out, min_count=2, progress=False)
    store = StoreReader(out)
    return store.schema, load_split(store, "train")


@pytest.fixture(scope="module")
def census_rows(tmp_path_factory) -> tuple[Schema, dict[str, torch.Tensor]]:
    import preprocess

    out = tmp_path_factory.mktemp("stores") / "census"
    preprocess.main(["census", "--input", str(SHARED_DATA / "census" / "census-income.test.gz"), "--out", str(out)])
    store = StoreReader(out)
    rows = load_split(store, "train")
    return store.schema, rows


@pytest.fixture(scope="module")
def amazon_rows(tmp_path_factory) -> tuple[Schema, dict[str, torch.Tensor]]:
    """The first two chunks (16,384 rows) of the Amazon Beauty train split."""
    import preprocess

    out = tmp_path_factory.mktemp("stores") / "amazon"
    preprocess.main(["amazon", "--input", str(SHARED_DATA / "amazon" / "Beauty.txt"), "--out", str(out)])
    store = StoreReader(out)
    chunks = [store.read_chunk("train", i) for i in range(2)]
    rows = {k: torch.from_numpy(np.concatenate([c[k] for c in chunks])) for k in store.schema.batch_keys()}
    return store.schema, {k: v.long() if v.dtype == torch.int32 else v for k, v in rows.items()}


def mean_loss(model: torch.nn.Module, rows: dict[str, torch.Tensor]) -> float:
    """Loss on a fixed 2048-row sample of the training rows."""
    sample = {k: v[:2048] for k, v in rows.items()}
    model.eval()
    with torch.no_grad():
        logits = model(sample)
        loss = F.binary_cross_entropy_with_logits(logits, sample["label"][:, : logits.shape[1]])
    model.train()
    return loss.item()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fifty_steps_lower_the_loss_on_real_rows(name, request):
    rows_fixture = "census_rows" if is_multitask(name) else "amazon_rows" if needs_sequences(name) else "criteo_rows"
    schema, rows = request.getfixturevalue(rows_fixture)
    torch.manual_seed(0)
    model = models.build_model(name, schema, **small(name))
    # Amazon's first signal, item popularity, is in embeddings that start at std 1e-4: at lr 1e-3, 50 steps of
    # 128 rows move the attention models by only 0.006-0.015 (1e-2 is also BST's paper learning rate)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if needs_sequences(name) else 1e-3)
    before = mean_loss(model, rows)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = torch.randint(0, len(rows["label"]), (128,), generator=gen)
        batch = {k: v[idx] for k, v in rows.items()}
        loss = model.loss(batch, model(batch))  # the model's training loss (DIEN: with its auxiliary loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_loss(model, rows)
    assert after < before - 0.01, f"{name}: training loss {before:.4f} -> {after:.4f}"


def test_dense_init_is_selectable_and_reaches_batched_experts(mt_schema):
    torch.manual_seed(0)
    model = models.build_model("MMoE", mt_schema, dense_init="kaiming_uniform", num_experts=4, expert_units=(512,))
    experts = next(m for m in model.modules() if hasattr(m, "init_dense"))
    bound = (1 / experts.weight.shape[2]) ** 0.5  # kaiming_uniform(a=sqrt(5)) on each [in, out] W_i: U(+-1/sqrt(out))
    assert experts.weight.abs().max() <= bound and experts.weight.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="unknown init"):
        models.build_model("DeepFM", mt_schema, dense_init="orthogonal")
