"""Avazu (dataset/avazu.py + dataset/specs/avazu.toml) on the real 8,999 rows in ../shared/data/avazu."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import SHARED_DATA
from dataset.loader import make_loader
from dataset.store import SPLITS, StoreReader

AVAZU = SHARED_DATA / "avazu"
TRAIN, DEV, TEST = (AVAZU / f"avazu_{s}.csv" for s in ("train", "dev", "test"))
CATEGORICAL = ("C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
               "device_id", "device_ip", "device_model", "device_type", "device_conn_type", "C14", "C15", "C16",
               "C17", "C18", "C19", "C20", "C21")


def raw_rows(path: Path) -> list[dict[str, str]]:
    """Brute-force read of an Avazu file, independent of dataset/: the train file's header names the columns."""
    with open(TRAIN) as f:
        header = next(csv.reader(f))
    with open(path) as f:
        rows = list(csv.reader(f))
    return [dict(zip(header, r)) for r in (rows[1:] if rows[0] == header else rows)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("avazu") / "store"
    assert preprocess.main(["avazu", "--input", str(TRAIN), "--valid-input", str(DEV), "--test-input", str(TEST),
                            "--out", str(out)]) == 0
    return out


def test_fields_rows_and_labels(store: Path) -> None:
    reader = StoreReader(store)
    schema = reader.schema
    assert schema.sparse_fields == CATEGORICAL + ("hour", "weekday", "weekend")  # id and the raw hour dropped
    assert schema.num_dense == 0 and schema.labels == ("click",) and schema.task_types == ("binary",)
    assert {s: reader.num_rows(s) for s in SPLITS} == {"train": 8_087, "valid": 480, "test": 432}
    assert reader.meta["stats"]["skipped_rows"] == 0
    for split, path in zip(SPLITS, (TRAIN, DEV, TEST)):
        clicks = sum(r["click"] == "1" for r in raw_rows(path))
        assert reader.read_split(split)["label"].sum() == clicks


def test_min_count_two_on_train(store: Path) -> None:
    reader = StoreReader(store)
    train = raw_rows(TRAIN)
    sizes = dict(zip(reader.schema.sparse_fields, reader.schema.vocab_sizes))
    for name in CATEGORICAL:
        counts = Counter(r[name] for r in train)
        kept = sorted(v for v, n in counts.items() if n >= 2 and v != "")
        assert reader.vocabulary(name)["values"] == kept and sizes[name] == len(kept) + 2
    ids = {v: i + 2 for i, v in enumerate(reader.vocabulary("device_ip")["values"])}
    stored = Counter(reader.read_split("test")["sparse"][:, CATEGORICAL.index("device_ip")].tolist())
    expected = Counter(ids.get(r["device_ip"], 0) for r in raw_rows(TEST))  # dev/test values not in train: OOV
    assert stored == expected


def test_hour_becomes_hour_weekday_weekend(store: Path, tmp_path: Path) -> None:
    reader = StoreReader(store)
    # every shared row is from 2014-10-21 00:00, a Tuesday: hour 0, weekday 2 (Sunday 0), not weekend
    assert [reader.vocabulary(f)["values"] for f in ("hour", "weekday", "weekend")] == [["0"], ["2"], ["0"]]
    assert (reader.read_split("valid")["sparse"][:, -3:] == 2).all()
    # hours of other days, on the first real rows: Saturday 25th 23:00, Sunday 26th 07:00, Monday 27th 12:00
    lines = TRAIN.read_text().splitlines()
    hours = {"14102523": ("23", "6", "1"), "14102607": ("7", "0", "1"), "14102712": ("12", "1", "0")}
    rows = [lines[0]] + [line.replace(",14102100,", f",{h},") for h in hours for line in lines[1:5]]
    (tmp_path / "days.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "days"
    for split in ("valid", "test"):  # one row each, so the train file stays whole in train
        (tmp_path / f"{split}.csv").write_text(lines[1] + "\n")
    assert preprocess.main(["avazu", "--input", str(tmp_path / "days.csv"), "--out", str(out), "--min-count", "1",
                            "--valid-input", str(tmp_path / "valid.csv"), "--test-input", str(tmp_path / "test.csv")]) == 0
    reader = StoreReader(out)
    derived = reader.read_split("train")["sparse"][:, -3:]
    vocab = [reader.vocabulary(f)["values"] for f in ("hour", "weekday", "weekend")]
    decoded = Counter(tuple(vocab[j][i - 2] for j, i in enumerate(row)) for row in derived.tolist())
    assert decoded == Counter({parts: 4 for parts in hours.values()})


def test_one_file_split_and_loader(tmp_path: Path) -> None:
    out = tmp_path / "one"
    assert preprocess.main(["avazu", "--input", str(TRAIN), "--out", str(out)]) == 0
    reader = StoreReader(out)
    rows = {s: reader.num_rows(s) for s in SPLITS}
    assert sum(rows.values()) == 8_087 and rows["train"] / 8_087 == pytest.approx(0.8, abs=0.02)
    assert reader.meta["options"]["seed"] == 2018
    batch = next(iter(make_loader(out, "train", 256, train=True, num_workers=0)))
    assert batch["sparse"].shape == (256, 24) and batch["label"].shape == (256, 1)
    assert np.isin(batch["label"].numpy(), [0, 1]).all()


def test_bad_rows_counted_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines = TRAIN.read_text().splitlines()[:21]
    lines[3] = lines[3].replace(",14102100,", ",14xx2100,")  # line 4: hour is no time (three fields derive from it)
    lines[5] = lines[5].rsplit(",", 1)[0]  # line 6: 23 columns
    lines[7] = lines[7].replace(",0,14102100,", ",2,14102100,")  # line 8: click is neither 0 nor 1
    raw = tmp_path / "bad.csv"
    raw.write_text("\n".join(lines) + "\n")
    assert preprocess.main(["avazu", "--input", str(raw), "--out", str(tmp_path / "s"), "--split", "1,1,1"]) == 0
    stats = StoreReader(tmp_path / "s").meta["stats"]
    assert stats["skipped_by_reason"] == {"bad time in 'hour'": 1, "wrong number of columns (expected 24)": 1,
                                          "bad label in 'click'": 1}
    assert stats["skipped_first_lines"]["bad time in 'hour'"] == ["bad.csv:4"] and stats["rows"] == 17
    assert preprocess.main(["avazu", "--input", str(raw), "--out", str(tmp_path / "t"), "--strict"]) == 2
    assert f"{raw} line 4: bad time in 'hour'" in capsys.readouterr().err
