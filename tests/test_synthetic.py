"""Synthetic Criteo-format data: exact format, determinism, realistic missing rates, a learnable signal."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from dataset import synthetic
from dataset.criteo import preprocess_criteo
from dataset.store import StoreReader
from dataset.synthetic import CAT_MISSING, CARDINALITIES, INT_MISSING, pool_sizes, write_synthetic_criteo

INT_RE = re.compile(r"-?[0-9]+")
HEX_RE = re.compile(r"[0-9a-f]{8}")


def read_cells(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def rows_20k(tmp_path_factory) -> pd.DataFrame:
    return read_cells(write_synthetic_criteo(tmp_path_factory.mktemp("syn") / "s.txt", 20_000, seed=3))


def test_rows_are_exactly_the_criteo_format(rows_20k):
    assert rows_20k.shape == (20_000, 40)
    assert set(rows_20k[0]) == {"0", "1"}
    ints = rows_20k.iloc[:, 1:14].to_numpy().ravel()
    cats = rows_20k.iloc[:, 14:].to_numpy().ravel()
    assert all(c == "" or INT_RE.fullmatch(c) for c in ints)
    assert all(c == "" or HEX_RE.fullmatch(c) for c in cats)
    assert (pd.to_numeric(rows_20k[2].replace("", np.nan)) < 0).mean() > 0.05  # I2 has negatives
    assert (pd.to_numeric(rows_20k[5].replace("", np.nan)).max()) > 100_000  # I5 is heavy-tailed


def test_missing_rates_and_click_rate_follow_real_criteo(rows_20k):
    missing = (rows_20k.iloc[:, 1:] == "").mean().to_numpy()
    np.testing.assert_allclose(missing, np.array(INT_MISSING + CAT_MISSING), atol=0.015)
    assert missing[11] > 0.7 and missing[1] == 0  # I12 mostly missing, I2 never
    assert abs((rows_20k[0] == "1").mean() - 0.256) < 0.02


def test_cardinalities_scale_with_rows_up_to_the_real_ones():
    small, large, full = pool_sizes(10_000), pool_sizes(1_000_000), pool_sizes(45_840_617)
    assert full == CARDINALITIES
    assert all(s <= m <= f for s, m, f in zip(small, large, full))
    assert small[2] < large[2] < full[2] and small[8] == full[8] == 3  # C3 grows, C9 stays at 3


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path):
    a = write_synthetic_criteo(tmp_path / "a.txt", 3000, seed=5).read_bytes()
    assert write_synthetic_criteo(tmp_path / "b.txt", 3000, seed=5).read_bytes() == a
    assert write_synthetic_criteo(tmp_path / "c.txt", 3000, seed=6).read_bytes() != a


def test_conversion_column_only_on_clicks(tmp_path):
    df = read_cells(write_synthetic_criteo(tmp_path / "cv.txt", 20_000, seed=1, conversion=True))
    assert df.shape == (20_000, 41)
    click, conversion = df[0].astype(int), df[1].astype(int)
    assert (conversion <= click).all()
    assert 0.05 <= conversion[click == 1].mean() <= 0.10
    assert all(c == "" or HEX_RE.fullmatch(c) for c in df.iloc[:, 15:].to_numpy().ravel())


def test_cli_writes_the_file(tmp_path, capsys):
    assert synthetic.main(["--rows", "50", "--out", str(tmp_path / "x.txt"), "--seed", "2"]) == 0
    assert (tmp_path / "x.txt").read_text().count("\n") == 50
    with pytest.raises(ValueError, match="--rows"):
        write_synthetic_criteo(tmp_path / "y.txt", 0)


def test_planted_signal_is_learnable_from_the_store(tmp_path):
    raw = write_synthetic_criteo(tmp_path / "s.txt", 20_000, seed=11)
    preprocess_criteo(raw, tmp_path / "store", min_count=3, split=(0.75, 0.05, 0.2), progress=False)
    reader = StoreReader(tmp_path / "store")

    def split_rows(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = reader.read_split(split)
        return rows["sparse"], rows["label"][:, 0]

    (x_train, y_train), (x_test, y_test) = split_rows("train"), split_rows("test")
    onehot = OneHotEncoder(handle_unknown="ignore").fit(x_train)
    model = LogisticRegression(C=0.1, max_iter=300).fit(onehot.transform(x_train), y_train)
    auc = roc_auc_score(y_test, model.predict_proba(onehot.transform(x_test))[:, 1])
    assert 0.65 < auc < 0.9
