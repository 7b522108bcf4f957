"""Sequence fields, shared vocabularies and task types end to end: the loader on a sequence store, regression
losses and metrics, gAUC, --monitor, --seq_pooling, --drop_fields, and exact resume on a sequence store.

The store here is small and hand-made: users with item/category histories (sharing the candidate's
vocabularies), a weighted multi-value field, a click label that depends on whether the candidate's category
is in the history, and a rating with Gaussian noise of known variance.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

import train
from dataset.loader import make_loader
from dataset.schema import Schema, SequenceField
from dataset.store import SPLITS, StoreReader, StoreWriter

USERS, ITEMS, CATES, L = 50, 60, 6, 8
SMALL = ["--batch_size", "64", "--num_workers", "0", "--embed_size", "8", "--log_every", "5", "--seed", "7",
         "--hidden_units", "16"]


def seq_schema(labels: tuple[str, ...] = ("click", "rating"),
               tasks: tuple[str, ...] = ("binary", "regression"), user: bool = True) -> Schema:
    return Schema(("user", "item", "cate"), (USERS + 2, ITEMS + 2, CATES + 2), ("price",), labels, task_types=tasks,
                  sequence_fields=(SequenceField("hist_item", "item", ITEMS + 2, L),
                                   SequenceField("hist_cate", "cate", CATES + 2, L),
                                   SequenceField("tags", "tags", 7, 3, weighted=True)),
                  user_field="user" if user else None)


def write_seq_store(path: Path, n: int = 1600, seed: int = 0, labels: tuple[str, ...] = ("click", "rating"),
                    tasks: tuple[str, ...] = ("binary", "regression"), user: bool = True,
                    noise: float = 0.5) -> Path:
    """Row i: sparse [user, item, cate of item], history of up to L items (and their categories), tags; click
    ~ Bernoulli(sigmoid(4 * (candidate category in history) - 2)), rating = 3 + (an effect per item, N(0, 1)) +
    N(0, noise^2)."""
    rng = np.random.default_rng(seed)
    cate_of = rng.integers(0, CATES, ITEMS)
    item = rng.integers(0, ITEMS, n)
    lens = rng.integers(0, L + 1, n)
    hist = rng.integers(0, ITEMS, (n, L))
    hist_cate = cate_of[hist]
    valid = np.arange(L) < lens[:, None]
    in_history = ((hist_cate == cate_of[item][:, None]) & valid).any(axis=1).astype(np.float32)
    click = (rng.random(n) < 1 / (1 + np.exp(-(4 * in_history - 2)))).astype(np.float32)
    rating = (3 + rng.normal(0, 1, ITEMS)[item] + rng.normal(0, noise, n)).astype(np.float32)
    columns = {"click": click, "rating": rating}
    label = np.stack([columns[k] for k in labels], axis=1)
    sparse = np.stack([rng.integers(0, USERS, n) + 2, item + 2, cate_of[item] + 2], axis=1)
    tag_len = rng.integers(0, 4, n)
    seq = np.concatenate([hist + 2, hist_cate + 2, rng.integers(2, 7, (n, 3))], axis=1)
    seq_len = np.stack([lens, lens, tag_len], axis=1)
    a, b = int(0.7 * n), int(0.85 * n)
    with StoreWriter(path, seq_schema(labels, tasks, user), dataset="toy_seq", chunk_size=128) as w:
        for split, rows in zip(SPLITS, (slice(0, a), slice(a, b), slice(b, n))):
            w.add(split, sparse[rows], rng.random((n, 1))[rows].astype(np.float32), label[rows], seq=seq[rows],
                  seq_len=seq_len[rows], seq_weight=rng.random((n, 3))[rows].astype(np.float32))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_seq_store(tmp_path_factory.mktemp("seq") / "store")


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# -- metrics -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auc_and_logloss_match_scikit_learn_with_ties_and_extreme_probabilities(dtype):
    rng = np.random.default_rng(1)
    y = (rng.random(5000) < 0.2).astype(np.float32)
    p = np.round(rng.random(5000) * 0.8 + 0.2 * y, 2).astype(dtype)  # many ties
    p[:5], p[5:10] = 0.0, 1.0  # clipped to [eps, 1 - eps] of the dtype, as scikit-learn does
    assert train.binary_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    rel = 1e-6 if dtype == np.float32 else 1e-9  # scikit-learn sums float32 input in float32, we in float64
    assert train.binary_logloss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=rel)
    assert math.isnan(train.binary_auc(np.zeros(4), p[:4])) and math.isnan(train.binary_auc(np.ones(4), p[:4]))


def test_regression_metrics_and_gauc_match_brute_force():
    rng = np.random.default_rng(0)
    n = 3000
    groups = rng.integers(0, 80, n)
    y = (rng.random(n) < 0.3).astype(float)
    p = np.round(rng.random(n) * 0.7 + 0.3 * y, 2)  # ties inside groups
    r_true, r_pred = rng.normal(3, 1, n), rng.normal(3, 1, n)
    m = train.compute_metrics(np.stack([y, r_true], 1), np.stack([p, r_pred], 1), ("click", "rating"),
                              ("binary", "regression"), groups)
    assert m["click/auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["rating/rmse"] == pytest.approx(math.sqrt(mean_squared_error(r_true, r_pred)))
    assert m["rating/mae"] == pytest.approx(mean_absolute_error(r_true, r_pred))
    num = den = 0.0
    for g in np.unique(groups):  # DIN's gAUC: per-user AUC weighted by the user's impressions
        rows = groups == g
        if 0 < y[rows].sum() < rows.sum():
            num += rows.sum() * roc_auc_score(y[rows], p[rows])
            den += rows.sum()
    assert m["click/gauc"] == pytest.approx(num / den) and m["gauc"] == m["click/gauc"]
    assert m["rmse"] == m["rating/rmse"] and "rating/auc" not in m and "click/rmse" not in m
    one = train.compute_metrics(r_true[:, None], r_pred[:, None], ("rating",), ("regression",))
    assert set(one) == {"rmse", "mae"}


# -- loader ------------------------------------------------------------------------------------------------


def test_sequence_batches_shard_exactly_once_and_resume(store: Path):
    reader = StoreReader(store)
    stored = reader.read_split("valid")
    key = lambda s, q: (tuple(s), tuple(q))  # noqa: E731 - a row's identity: its ids and history
    want = sorted(key(s, q) for s, q in zip(stored["sparse"].tolist(), stored["seq"].tolist()))
    got = []
    for rank in range(2):
        for batch in make_loader(store, "valid", 50, train=False, rank=rank, world_size=2, num_workers=2):
            assert set(batch) == {"sparse", "dense", "label", "seq", "seq_len", "seq_weight"}
            assert batch["seq"].dtype == torch.int32 and batch["seq"].shape[1] == 2 * L + 3  # ids int32: half the bytes
            assert batch["seq_weight"].shape[1] == 3
            got += [key(s, q) for s, q in zip(batch["sparse"].tolist(), batch["seq"].tolist())]
    assert sorted(got) == want  # every valid row exactly once across the two ranks, sequences intact
    full = make_loader(store, "train", 64, train=True, num_workers=0)
    full.set_epoch(1)
    batches = list(full)
    full.set_epoch(1, skip_batches=3)
    for a, b in zip(batches[3:], list(full)):
        assert all(torch.equal(a[k], b[k]) for k in a)


# -- training ----------------------------------------------------------------------------------------------


def test_multitask_binary_and_regression_with_gauc_and_a_chosen_monitor(store: Path, tmp_path: Path):
    argv = ["--model", "MMoE", "--data", store, *SMALL[:-2], "--epochs", "3", "--lr", "0.03", "--monitor", "rmse",
            "--model_save_dir", tmp_path / "run"]
    assert train.main([str(a) for a in argv]) == 0
    m = metrics_of(tmp_path / "run")
    assert m["monitor"] == "rmse"
    assert {"click/auc", "click/gauc", "click/logloss", "rating/rmse", "rating/mae"} <= set(m["test"])
    assert m["test"]["rating/rmse"] < 1.5  # labels around 3 (std ~1.1); an untrained model is ~3 off


def test_regression_store_monitors_rmse_and_approaches_the_noise(tmp_path: Path):
    store = write_seq_store(tmp_path / "reg", n=3000, labels=("rating",), tasks=("regression",), noise=0.3)
    argv = ["--model", "DeepFM", "--data", store, *SMALL, "--epochs", "8", "--lr", "0.01", "--patience", "8",
            "--seq_pooling", "max", "--model_save_dir", tmp_path / "run"]
    assert train.main([str(a) for a in argv]) == 0
    m = metrics_of(tmp_path / "run")
    assert m["monitor"] == "rmse" and set(m["test"]) == {"rmse", "mae"}
    assert m["test"]["rmse"] < 0.5  # noise std 0.3; predicting the mean would give ~1.0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["seq_pooling"] == "max"


def test_monitor_needs_what_it_measures(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    plain = write_seq_store(tmp_path / "nouser", n=600, user=False)
    for data, flags, message in ((plain, ["--monitor", "gauc"], "--monitor gauc needs a store with a user field"),
                                 (store, ["--monitor", "rmse"], "--monitor rmse needs a regression task"),
                                 (store, ["--drop_fields", "nope"], "--drop_fields: no field nope to drop")):
        argv = ["--model", "DeepFM", "--data", data, *SMALL, *flags, "--model_save_dir", tmp_path / "x"]
        assert train.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_drop_fields_builds_the_model_without_them(store: Path, tmp_path: Path):
    argv = ["--model", "DeepFM", "--data", store, *SMALL, "--epochs", "1", "--drop_fields", "hist_item",
            "hist_cate", "cate", "--model_save_dir", tmp_path / "run"]
    assert train.main([str(a) for a in argv]) == 0
    state = train.load_checkpoint(tmp_path / "run" / "best.pt")
    rows = state["model"]["embedding.table.weight"].shape[0]
    assert rows == (USERS + 2) + (ITEMS + 2) + 7  # user, item, tags: no category vocabulary left
    assert state["model"]["dnn.net.0.weight"].shape[1] == 3 * 8 + 1  # user, item, pooled tags; price
    out = train.evaluate_checkpoint(train.parse_args(["--eval_only", str(tmp_path / "run"), "--data", str(store),
                                                      "--num_workers", "0"])[0])
    assert out["auc"] == metrics_of(tmp_path / "run")["test"]["auc"]


def test_resume_on_a_sequence_store_is_exact(store: Path, tmp_path: Path):
    flags = ["--model", "DeepFM", "--data", store, *SMALL, "--epochs", "2", "--eval_every", "7", "--dropout", "0.2"]
    assert train.main([str(a) for a in [*flags, "--model_save_dir", tmp_path / "straight"]]) == 0
    assert train.main([str(a) for a in [*flags, "--max_steps", "7", "--model_save_dir", tmp_path / "cut"]]) == 0
    assert train.main(["--resume", str(tmp_path / "cut"), "--max_steps", "0"]) == 0
    straight, resumed = metrics_of(tmp_path / "straight"), metrics_of(tmp_path / "cut")
    assert resumed["test"] == straight["test"] and resumed["valid"] == straight["valid"]
    assert "gauc" in straight["test"]


def test_labels_choose_what_the_model_learns(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """--labels rating: a single-task model on the store's second label, a regression task."""
    argv = ["--model", "DeepFM", "--data", store, *SMALL, "--epochs", "2", "--labels", "rating", "--lr", "0.01",
            "--model_save_dir", tmp_path / "run"]
    assert train.main([str(a) for a in argv]) == 0
    m = metrics_of(tmp_path / "run")
    assert m["monitor"] == "rmse" and set(m["test"]) == {"rmse", "mae"} and m["test"]["rmse"] < 1.0
    bad = ["--model", "DeepFM", "--data", store, *SMALL, "--labels", "ctr", "--model_save_dir", tmp_path / "x"]
    assert train.main([str(a) for a in bad]) == 2
    assert "--labels: labels ['ctr']: name one or more of the store's labels click, rating" in capsys.readouterr().err
