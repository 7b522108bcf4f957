"""synthetic_behaviour: generated histories whose click signal lives in the history, sessions, rating noise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import preprocess
from dataset.loader import make_loader
from dataset.store import SPLITS, StoreReader
from dataset.synthetic_behaviour import CLICK, preprocess_synthetic_behaviour, signal_counts

ROWS = 60_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("behaviour") / "store"
    preprocess_synthetic_behaviour(out, rows=ROWS, rating=True, seed=7)
    return out


def features(reader: StoreReader, split: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A split's rows and the planted signal's inputs recomputed from the stored ids alone: m (history items
    sharing the candidate's category id) and r (those in the latest session, hist_session id 2 = index 0)."""
    rows = reader.read_split(split)
    s = reader.schema.seq_slices
    lengths = rows["seq_len"][:, 1]
    m, r = signal_counts(rows["seq"][:, s["hist_cate_id"]], rows["seq"][:, s["hist_session"]] - 2, lengths,
                         rows["sparse"][:, 2])
    return rows, m, r


def test_schema_matches_amazon(store: Path) -> None:
    schema = StoreReader(store).schema
    assert schema.sparse_fields == ("user_id", "item_id", "cate_id") and schema.user_field == "user_id"
    assert schema.sparse_vocabs == ("user", "item", "cate")
    assert [(s.name, s.vocab, s.max_len) for s in schema.sequence_fields] == [
        ("hist_item_id", "item", 50), ("hist_cate_id", "cate", 50), ("hist_session", "session", 50)]
    assert schema.histories() == [("item_id", "hist_item_id"), ("cate_id", "hist_cate_id")]
    assert schema.labels == ("click", "rating") and schema.task_types == ("binary", "regression")


def test_history_signal_is_learnable_and_nothing_else_is(store: Path) -> None:
    reader = StoreReader(store)
    train, m_train, r_train = features(reader, "train")
    test, m, r = features(reader, "test")
    assert not (train["sparse"] == 0).any() and not (test["sparse"] == 0).any()  # no OOV: id matches are exact
    y_train, y = train["label"][:, 0], test["label"][:, 0]

    def x(m: np.ndarray, r: np.ndarray) -> np.ndarray:
        return np.stack([np.log1p(m), np.log1p(r)], axis=1)

    model = LogisticRegression().fit(x(m_train, r_train), y_train)
    history_auc = roc_auc_score(y, model.predict_proba(x(m, r))[:, 1])
    oracle = reader.meta["stats"]["oracle_test_auc"]
    # A logistic regression on two counts read off the store finds the planted weights and the Bayes AUC.
    np.testing.assert_allclose([model.intercept_[0], *model.coef_[0]], CLICK, atol=0.15)
    assert history_auc > 0.85 and abs(history_auc - oracle) < 0.01
    # The count of matching history items says more than their share of the history, which is all a
    # mean-pooled history can express about the candidate's category.
    share = m / np.maximum(test["seq_len"][:, 1], 1)
    assert roc_auc_score(y, m) > roc_auc_score(y, share) + 0.01
    # Without the history (user, item or category id alone, as click rates learnt on train) it is chance.
    for column in range(3):
        ids = train["sparse"][:, column]
        size = int(max(ids.max(), test["sparse"][:, column].max())) + 1
        rate = (np.bincount(ids, y_train, size) + 5 * y_train.mean()) / (np.bincount(ids, minlength=size) + 5)
        assert abs(roc_auc_score(y, rate[test["sparse"][:, column]]) - 0.5) < 0.03
    print(f"\ntest AUC: history LR {history_auc:.4f} (oracle {oracle:.4f}), count {roc_auc_score(y, m):.4f}, "
          f"share {roc_auc_score(y, share):.4f}")


def test_rating_noise_variance_is_recorded_and_reached(store: Path, tmp_path: Path) -> None:
    reader = StoreReader(store)
    assert reader.meta["stats"]["rating_noise_variance"] == 0.25
    test, m, r = features(reader, "test")
    mse = float(np.mean((test["label"][:, 1] - (1.0 + np.log1p(m) + 0.5 * np.log1p(r))) ** 2))
    assert abs(mse - 0.25) < 0.02  # the known mean's test MSE is the noise variance
    meta = preprocess_synthetic_behaviour(tmp_path / "s", rows=2000, rating=True, rating_noise=0.3)
    assert meta["stats"]["rating_noise_variance"] == pytest.approx(0.09)
    assert preprocess_synthetic_behaviour(tmp_path / "t", rows=2000)["schema"]["labels"] == ["click"]


def test_sessions_count_back_from_the_latest(store: Path) -> None:
    reader = StoreReader(store)
    values = reader.vocabulary("session")["values"]
    assert values == [f"{i:02d}" for i in range(len(values))]  # zero-padded: id = session index + 2
    rows = reader.read_split("train")
    s = reader.schema.seq_slices
    session, lengths = rows["seq"][:, s["hist_session"]], rows["seq_len"][:, 2]
    inside = np.arange(50) < lengths[:, None]
    assert (session[~inside] == 0).all() and (session[inside] >= 2).all()
    steps = np.diff(session, axis=1)
    both = inside[:, 1:]
    assert np.isin(steps[both], (0, -1)).all()  # never back to an older session, one session at a time
    assert (session[np.arange(len(session)), lengths - 1] == 2).all()  # the latest element: session 0
    assert reader.meta["stats"]["sessions_per_history_mean"] > 2


def test_histories_share_the_item_and_category_vocabularies(store: Path) -> None:
    rows = StoreReader(store).read_split("train")
    s = StoreReader(store).schema.seq_slices
    inside = (np.arange(50) < rows["seq_len"][:, :1]).ravel()
    pairs = np.concatenate([rows["sparse"][:, 1:3],
                            np.stack([rows["seq"][:, s["hist_item_id"]].ravel()[inside],
                                      rows["seq"][:, s["hist_cate_id"]].ravel()[inside]], axis=1)])
    items, first = np.unique(pairs[:, 0], return_index=True)
    cate_of = np.zeros(items.max() + 1, np.int64)
    cate_of[items] = pairs[first, 1]
    assert (cate_of[pairs[:, 0]] == pairs[:, 1]).all()  # one category per item id, wherever the id appears


def test_loader_batches_carry_sequences(store: Path) -> None:
    batch = next(iter(make_loader(store, "valid", 256, train=False, num_workers=0)))
    assert batch["seq"].shape == (256, 150) and batch["seq_len"].shape == (256, 3)
    assert batch["label"].shape == (256, 2) and "seq_weight" not in batch


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    for name in ("a", "b"):
        preprocess_synthetic_behaviour(tmp_path / name, rows=3000, seed=1)
    data = (tmp_path / "a" / "data.mdb").read_bytes()
    assert (tmp_path / "b" / "data.mdb").read_bytes() == data
    preprocess_synthetic_behaviour(tmp_path / "c", rows=3000, seed=2)
    assert (tmp_path / "c" / "data.mdb").read_bytes() != data


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    assert preprocess.main(["synthetic_behaviour", "--rows", "3000", "--max-len", "8", "--out", str(out)]) == 0
    assert "synthetic_behaviour -> " in capsys.readouterr().out
    reader = StoreReader(out)
    assert sum(reader.num_rows(s) for s in SPLITS) == 3000 and reader.meta["options"]["min_count"] == 1
    assert preprocess.main(["synthetic_behaviour", "--rows", "3000", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert preprocess.main(["synthetic_behaviour", "--cates", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--cates must be >= 3" in capsys.readouterr().err
    assert preprocess.main(["synthetic_behaviour", "--items", "5", "--out", str(tmp_path / "x")]) == 2
    assert "--items (5) must be at least --cates (100)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
