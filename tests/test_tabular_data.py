"""The in-memory table path: census-income (MMOE), AliExpress and Ali-CCP samples (ESMM) -> LMDB store."""
from __future__ import annotations

import gzip
import types
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import preprocess
from conftest import SHARED_DATA
from dataset import aliccp, aliexpress, census
from dataset.store import SPLITS, StoreReader
from dataset.tabular import InputError, assign_splits, encode_frame, preprocess_frame, stack_splits

CENSUS_GZ = SHARED_DATA / "census" / "census-income.test.gz"
CENSUS_SAMPLE = SHARED_DATA / "census" / "census-income.sample"
AE_TRAIN = SHARED_DATA / "aliexpress" / "aliexpress_train_sample.csv"
AE_TEST = SHARED_DATA / "aliexpress" / "aliexpress_test_sample.csv"
CCP_TRAIN = SHARED_DATA / "aliccp" / "ali_ccp_train_sample.csv"
CCP_VALID = SHARED_DATA / "aliccp" / "ali_ccp_val_sample.csv"
CCP_TEST = SHARED_DATA / "aliccp" / "ali_ccp_test_sample.csv"


def run(module: types.ModuleType, argv: list[str], out: Path) -> int:
    """``python preprocess.py <module's subcommand> argv --out out``, in this process -> its exit code."""
    return preprocess.main([module.__name__.rsplit(".", 1)[1], *argv, "--out", str(out)])


def read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of one split of the store at ``path`` -> sparse, dense, label."""
    rows = StoreReader(path).read_split(split)
    return rows["sparse"], rows["dense"], rows["label"]


def sorted_rows(sparse: np.ndarray, dense: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Rows as one float64 matrix in lexicographic order, to compare row multisets exactly."""
    rows = np.concatenate([sparse.astype(np.float64), dense.astype(np.float64), label.astype(np.float64)], axis=1)
    return rows[np.lexsort(rows.T[::-1])] if len(rows) else rows


def raw_census_rows(path: Path, limit: int | None = None) -> list[list[str]]:
    """Brute-force parse of (the first ``limit`` rows of) a census file, independent of dataset/:
    split on ',' and strip."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="latin-1") as f:
        lines = islice((line for line in f if line.strip()), limit)
        return [[cell.strip() for cell in line.split(",")] for line in lines]


@pytest.fixture(scope="module")
def census_raw() -> list[list[str]]:
    return raw_census_rows(CENSUS_GZ)


@pytest.fixture(scope="module")
def census_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("census") / "store"
    assert run(census, ["--input", str(CENSUS_GZ)], out) == 0
    return out


# ------------------------------------------------------------------------------------------------ census


def test_census_rows_and_label_rates(census_store: Path, census_raw: list[list[str]]) -> None:
    reader = StoreReader(census_store)
    raw = census_raw
    assert len(raw) == 99_762
    skipped = reader.meta["stats"]["skipped_rows"]
    assert skipped == 0
    assert sum(reader.num_rows(s) for s in SPLITS) == 99_762 - skipped
    labels = np.concatenate([read_split(census_store, s)[2] for s in SPLITS])
    income = sum(r[-1] == "50000+." for r in raw)
    never_married = sum(r[7] == "Never married" for r in raw)
    assert labels.sum(axis=0).tolist() == [income, never_married]
    assert labels[:, 0].mean() == pytest.approx(0.0620, abs=5e-4)  # income > 50K
    assert labels[:, 1].mean() == pytest.approx(0.4325, abs=5e-4)  # never married
    for split in SPLITS:  # the 8:1:1 split is random, so every split keeps roughly the same rates
        rates = reader.meta["stats"]["label_rates"][split]
        assert rates["income"] == pytest.approx(0.062, abs=0.01)
        assert rates["marital"] == pytest.approx(0.4325, abs=0.02)
    assert reader.num_rows("train") / 99_762 == pytest.approx(0.8, abs=0.01)


def test_census_schema(census_store: Path, census_raw: list[list[str]]) -> None:
    schema = StoreReader(census_store).schema
    assert schema.labels == ("income", "marital")
    assert schema.dense_fields == census.CONTINUOUS
    assert schema.sparse_fields == census.SPARSE
    for dropped in ("marital_stat", "instance_weight", "income_50k"):
        assert dropped not in schema.sparse_fields + schema.dense_fields
    sizes = dict(zip(schema.sparse_fields, schema.vocab_sizes))
    assert sizes["sex"] == 4 and sizes["year"] == 4  # Female/Male and 94/95, plus OOV and missing
    # "?" (not recorded) is the missing id 1: 49,946 rows have no migration codes
    col = schema.sparse_fields.index("mig_chg_msa")
    sparse = np.concatenate([read_split(census_store, s)[0] for s in SPLITS])
    assert int((sparse[:, col] == 1).sum()) == sum(r[25] == "?" for r in census_raw) == 49_946


def test_census_round_trip(census_store: Path) -> None:
    reader = StoreReader(census_store)
    df, _ = census.read_census(CENSUS_GZ)
    split = assign_splits(len(df), (0.8, 0.1, 0.1), 2018)
    enc = encode_frame(df, split, sparse_cols=census.SPARSE, dense_cols=census.CONTINUOUS,
                       label_cols=census.LABELS, min_count=10)
    assert enc.schema == reader.schema
    for i, name in enumerate(SPLITS):
        rows = split == i
        stored = read_split(census_store, name)
        np.testing.assert_array_equal(sorted_rows(*stored), sorted_rows(enc.sparse[rows], enc.dense[rows],
                                                                         enc.label[rows]))
    train_dense = read_split(census_store, "train")[1].astype(np.float64)
    np.testing.assert_allclose(train_dense.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_dense.std(axis=0), 1.0, atol=1e-5)
    age = df["age"].to_numpy()[split == 0]
    assert reader.meta["stats"]["dense_transforms"]["age"]["mean"] == pytest.approx(age.mean())


def test_census_deterministic(census_store: Path, tmp_path: Path) -> None:
    assert run(census, ["--input", str(CENSUS_GZ)], tmp_path / "again") == 0
    assert (tmp_path / "again" / "data.mdb").read_bytes() == (census_store / "data.mdb").read_bytes()


def test_census_sample_with_id_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert census.census_columns(CENSUS_SAMPLE)[0] == census.ID_COLUMN
    out = tmp_path / "sample"
    assert preprocess.main(["census", "--input", str(CENSUS_SAMPLE), "--out", str(out), "--min-count", "1",
                            "--dense", "bucketize"]) == 0
    assert "census: 200 rows" in capsys.readouterr().out
    reader = StoreReader(out)
    raw = raw_census_rows(CENSUS_SAMPLE)
    assert sum(reader.num_rows(s) for s in SPLITS) == len(raw) == 200
    assert census.ID_COLUMN not in reader.schema.sparse_fields
    assert reader.schema.sparse_fields == census.SPARSE + census.CONTINUOUS  # bucketized dense fields
    assert reader.schema.num_dense == 0
    labels = np.concatenate([read_split(out, s)[2] for s in SPLITS])
    income, never_married = sum(r[-1] == "50000+." for r in raw), sum(r[8] == "Never married" for r in raw)
    assert labels.sum(axis=0).tolist() == [income, never_married]


def write_census_with_bad_rows(path: Path, bad: tuple[int, ...] = (4, 7, 9)) -> None:
    """20 real rows; of the ``bad`` lines, 4 gets 41 fields, 7 an unknown income class, 9 a non-numeric age."""
    lines = [", ".join(r) for r in raw_census_rows(CENSUS_GZ, limit=20)]
    if 4 in bad:
        lines[3] = lines[3].rsplit(",", 1)[0]
    if 7 in bad:
        lines[6] = lines[6].replace("- 50000.", "maybe")
    if 9 in bad:
        lines[8] = "old" + lines[8][lines[8].index(","):]
    path.write_text("\n".join(lines) + "\n")


def test_census_bad_rows_counted(tmp_path: Path) -> None:
    raw = tmp_path / "bad.txt"
    write_census_with_bad_rows(raw)
    # 17 rows: even splits, so that each gets some (preprocessing refuses a store with an empty split)
    assert run(census, ["--input", str(raw), "--min-count", "1", "--split", "1,1,1"], tmp_path / "store") == 0
    meta = StoreReader(tmp_path / "store").meta
    assert meta["stats"]["skipped_rows"] == 3
    assert meta["stats"]["skipped_by_reason"] == {
        "wrong field count": 1,
        "income class is not one of ['- 50000.', '50000+.']": 1,
        "non-numeric value in column 'age'": 1,
    }
    assert sum(s["rows"] for s in meta["splits"].values()) == 17


def test_census_strict_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "bad.txt"
    for bad, message in [((4, 7, 9), "line 4: 41 fields, expected 42"),
                         ((7, 9), "line 7: income class is not one of"),
                         ((9,), "line 9: non-numeric value in column 'age'")]:
        write_census_with_bad_rows(raw, bad)
        assert run(census, ["--input", str(raw), "--strict"], tmp_path / "store") == 2
        assert f"{raw} {message}" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_census_empty_and_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert run(census, ["--input", str(empty)], tmp_path / "store") == 2
    assert "has no data rows" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no data/raw/census/census-income.test.gz here
    assert run(census, [], tmp_path / "store") == 2
    err = capsys.readouterr().err
    assert "../shared/data/census/census-income.test.gz" in err and "archive.ics.uci.edu" in err
    assert not (tmp_path / "store").exists()


def test_existing_store_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--input", str(CENSUS_SAMPLE), "--min-count", "1"]
    assert run(census, argv, tmp_path / "store") == 0
    first = (tmp_path / "store" / "data.mdb").read_bytes()
    assert run(census, [*argv, "--seed", "7"], tmp_path / "store") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "store" / "data.mdb").read_bytes() == first
    assert run(census, [*argv, "--seed", "7", "--overwrite"], tmp_path / "store") == 0
    assert StoreReader(tmp_path / "store").meta["options"]["seed"] == 7


# ---------------------------------------------------------------------------------- the shared table path


def test_vocab_and_dense_statistics_fit_on_train_only(tmp_path: Path) -> None:
    df = pd.DataFrame({
        "c": ["a", "a", "b", "", "z", "a"],  # "b" is rare (count 1 < 2), "z" appears only in valid
        "x": [1.0, 2.0, 3.0, np.nan, 100.0, 5.0],
        "y": [0, 1, 0, 1, 1, 0],
    })
    split = pd.Series(["train"] * 4 + ["valid", "test"])
    meta = preprocess_frame(df, tmp_path / "s", dataset="toy", sparse_cols=["c"], dense_cols=["x"], label_cols=["y"],
                            min_count=2, split_ratios=(0.8, 0.1, 0.1), seed=0, chunk_size=2, overwrite=False,
                            predefined_split=split)
    assert meta["schema"]["vocab_sizes"] == [3]  # OOV, missing, "a"
    assert meta["splits"] == {"train": {"rows": 4, "chunks": 2}, "valid": {"rows": 1, "chunks": 1},
                              "test": {"rows": 1, "chunks": 1}}
    std = np.std([1.0, 2.0, 3.0])  # the NaN is left out of the statistics and encoded as the mean
    train = sorted_rows(*read_split(tmp_path / "s", "train"))
    expected = sorted_rows(np.array([[2], [2], [0], [1]]), np.array([[-1 / std], [0.0], [1 / std], [0.0]]),
                           np.array([[0], [1], [0], [1]]))
    np.testing.assert_allclose(train, expected, rtol=1e-6)
    sparse, dense, label = read_split(tmp_path / "s", "valid")
    assert sparse.tolist() == [[0]] and label.tolist() == [[1.0]]
    assert dense[0, 0] == pytest.approx((100.0 - 2.0) / std, rel=1e-6)
    assert read_split(tmp_path / "s", "test")[0].tolist() == [[2]]


def test_bucketize_uses_train_quantiles(tmp_path: Path) -> None:
    df = pd.DataFrame({"x": [*range(1, 11), np.nan, 1000.0, -5.0], "y": [0] * 13})
    split = assign_splits(13, (1, 0, 0), 0, pd.Series(["train"] * 11 + ["test"] * 2))
    enc = encode_frame(df, split, sparse_cols=[], dense_cols=["x"], label_cols=["y"], min_count=1,
                       dense="bucketize", num_buckets=2)
    assert enc.transforms["x"]["edges"] == [5.5]  # the train median; 1000 and -5 are not train rows
    assert enc.schema.sparse_fields == ("x",) and enc.schema.vocab_sizes == (4,) and enc.dense.shape == (13, 0)
    assert enc.sparse[:, 0].tolist() == [2] * 5 + [3] * 5 + [1, 3, 2]


def test_stack_splits_keeps_given_files_whole() -> None:
    train = pd.DataFrame({"v": np.arange(1000)})
    test = pd.DataFrame({"v": [-1, -2]})
    df, names = stack_splits({"train": train, "valid": None, "test": test}, (0.8, 0.1, 0.1), seed=3)
    assert len(df) == 1002 and names[1000:].tolist() == ["test", "test"]
    counts = names[:1000].value_counts()
    assert "test" not in counts and counts["valid"] == pytest.approx(1000 / 9, abs=30)
    assert stack_splits({"train": train, "valid": None, "test": None}, (0.8, 0.1, 0.1), 3)[1] is None


def test_predefined_split_rejects_unknown_names() -> None:
    with pytest.raises(InputError, match=r"\['dev'\]"):
        assign_splits(2, (0.8, 0.1, 0.1), 0, pd.Series(["train", "dev"]))


# ------------------------------------------------------------------------------------- AliExpress, Ali-CCP


def test_aliexpress_sample_with_test_file(tmp_path: Path) -> None:
    out = tmp_path / "ae"
    assert run(aliexpress, ["--input", str(AE_TRAIN), "--test-input", str(AE_TEST), "--min-count", "1"], out) == 0
    reader = StoreReader(out)
    assert reader.schema.labels == ("click", "conversion")
    assert reader.schema.sparse_fields == tuple(f"categorical_{i}" for i in range(1, 17))
    assert reader.schema.dense_fields == tuple(f"numerical_{i}" for i in range(1, 64))
    assert reader.num_rows("train") + reader.num_rows("valid") == 100 and reader.num_rows("test") == 20
    raw_test = pd.read_csv(AE_TEST)
    _, dense, label = read_split(out, "test")
    for split in SPLITS:
        click, conversion = read_split(out, split)[2].T
        assert (conversion <= click).all()
    assert label.sum(axis=0).tolist() == raw_test[["click", "conversion"]].sum().tolist()
    stats = reader.meta["stats"]["dense_transforms"]["numerical_30"]  # the test rows are the test file's rows
    np.testing.assert_allclose(np.sort(dense[:, 29] * stats["std"] + stats["mean"]),
                               np.sort(raw_test["numerical_30"].to_numpy()), atol=1e-5)


def test_aliccp_sample_with_valid_and_test_files(tmp_path: Path) -> None:
    out = tmp_path / "ccp"
    argv = ["--input", str(CCP_TRAIN), "--valid-input", str(CCP_VALID), "--test-input", str(CCP_TEST),
            "--min-count", "1"]
    assert run(aliccp, argv, out) == 0
    reader = StoreReader(out)
    header = pd.read_csv(CCP_TRAIN, nrows=0).columns
    assert reader.schema.labels == ("click", "purchase")
    assert reader.schema.dense_fields == tuple(c for c in header if c.startswith("D"))
    assert reader.schema.sparse_fields == tuple(c for c in header if c not in ("click", "purchase")
                                                and not c.startswith("D"))
    for split, path in zip(SPLITS, (CCP_TRAIN, CCP_VALID, CCP_TEST)):
        raw = pd.read_csv(path)
        label = read_split(out, split)[2]
        assert reader.num_rows(split) == len(raw)
        assert label.sum(axis=0).tolist() == raw[["click", "purchase"]].sum().tolist()
        assert (label[:, 1] <= label[:, 0]).all()
    assert reader.meta["stats"]["skipped_rows"] == 0


def test_aliccp_purchase_without_click_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines = CCP_TRAIN.read_text().splitlines()
    lines[5] = "0,1" + lines[5][3:]  # line 6: purchase without click
    raw = tmp_path / "train.csv"
    raw.write_text("\n".join(lines) + "\n")
    assert run(aliccp, ["--input", str(raw), "--min-count", "1"], tmp_path / "s") == 0
    meta = StoreReader(tmp_path / "s").meta
    assert meta["stats"]["skipped_by_reason"] == {"purchase = 1 without click": 1}
    assert sum(s["rows"] for s in meta["splits"].values()) == 99
    assert run(aliccp, ["--input", str(raw), "--strict"], tmp_path / "t") == 2
    assert f"{raw} line 6: purchase = 1 without click" in capsys.readouterr().err


def test_csv_header_only_and_wrong_header(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    header_only = tmp_path / "h.csv"
    header_only.write_text(AE_TRAIN.read_text().splitlines()[0] + "\n")
    assert run(aliexpress, ["--input", str(header_only)], tmp_path / "s") == 2
    assert "has no data rows" in capsys.readouterr().err
    assert run(aliexpress, ["--input", str(CCP_TRAIN)], tmp_path / "s") == 2
    assert "is not an AliExpress CSV" in capsys.readouterr().err
