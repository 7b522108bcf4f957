"""Given split files (BARS Criteo_x4 / Avazu_x4 CSVs): ``preprocess.py criteo|avazu --train F --valid F --test F``
keeps every row in its file's split and fits the vocabularies on the train file alone. The files are built here
from the real rows in ../shared/data."""
from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from pathlib import Path

import pytest

import preprocess
from conftest import SHARED_DATA
from dataset.criteo import CSV_HEADER
from dataset.store import SPLITS, StoreReader
from dataset.vocab import Vocabulary
from test_criteo import stored_rows

CRITEO = SHARED_DATA / "criteo" / "head8k.txt"
AVAZU = SHARED_DATA / "avazu"
CRITEO_SIZES = {"train": 600, "valid": 150, "test": 150}
ONLY_OUTSIDE_TRAIN = {"valid": "c0ffee00", "test": "deadbeef"}  # C3 of every valid / test row: frequent, not in train


def criteo_rows() -> dict[str, list[list[str]]]:
    """Consecutive real Criteo rows per split, C3 of valid and test rows replaced by a value train never has."""
    lines = CRITEO.read_text().split("\n")
    rows, start = {}, 0
    for split, n in CRITEO_SIZES.items():
        rows[split] = [line.split("\t") for line in lines[start:start + n]]
        start += n
        for r in rows[split]:
            if split in ONLY_OUTSIDE_TRAIN:
                r[14 + 2] = ONLY_OUTSIDE_TRAIN[split]
    assert all(len(r) == 40 for rs in rows.values() for r in rs)
    return rows


def write_criteo_x4(tmp_path: Path, rows: dict[str, list[list[str]]]) -> dict[str, Path]:
    """Criteo_x4 CSV files: header, commas; valid writes its integers as pandas does for a column with NaN
    (``5.0``); test is gzip."""
    paths = {}
    for split, rs in rows.items():
        body = [r if split != "valid" else [r[0], *(c + ".0" if c else c for c in r[1:14]), *r[14:]] for r in rs]
        text = "\n".join([",".join(CSV_HEADER), *(",".join(r) for r in body)]) + "\n"
        path = tmp_path / f"{split}.csv"
        if split == "test":
            path = path.with_suffix(".csv.gz")
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
        paths[split] = path
    return paths


def bucket(cell: str) -> str:
    x = int(cell)
    return str(int(math.floor(math.log(x) ** 2))) if x > 2 else str(x)


def reference(rows: dict[str, list[list[str]]], min_count: int) -> dict[str, Counter]:
    """Per split, the multiset of encoded rows (ids..., label), the vocabularies fitted on the train rows alone."""
    values = {s: [[bucket(c) if c else "" for c in r[1:14]] + r[14:] for r in rs] for s, rs in rows.items()}
    ids_of = []
    for j in range(39):
        counts = Counter(v[j] for v in values["train"] if v[j] != "")
        ids_of.append({v: i + 2 for i, v in enumerate(Vocabulary.fit(dict(counts), min_count).values())})
    return {s: Counter((*(1 if x == "" else ids_of[j].get(x, 0) for j, x in enumerate(v)), float(r[0]))
                       for v, r in zip(values[s], rows[s])) for s in SPLITS}


def run(*argv: object) -> int:
    return preprocess.main([str(a) for a in argv])


def test_criteo_x4_files_keep_their_rows_and_fit_on_train(tmp_path: Path):
    rows = criteo_rows()
    paths = write_criteo_x4(tmp_path, rows)
    out = tmp_path / "store"
    assert run("criteo", "--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"],
               "--out", out, "--min-count", 3, "--chunk-size", 64) == 0
    reader = StoreReader(out)
    assert {s: reader.num_rows(s) for s in SPLITS} == CRITEO_SIZES
    assert reader.meta["stats"]["skipped"] == {} and reader.meta["options"]["split"] == "given"
    stored = stored_rows(out)
    expected = reference(rows, 3)
    for split in SPLITS:
        labels = sorted(int(r[0]) for r in rows[split])
        assert sorted(int(key[-1]) for key in stored[split].elements()) == labels  # the file's labels, all of them
        assert stored[split] == expected[split], split  # each row encoded with train-only vocabularies
    c3 = CSV_HEADER.index("C3") - 1  # sparse column (I1..I13, then C1..C26)
    for split in ONLY_OUTSIDE_TRAIN:  # 150 rows each, far above min-count, but never in train: OOV
        assert {key[c3] for key in stored[split]} == {0}


def test_criteo_given_files_vocabulary_counts_come_from_train_only(tmp_path: Path):
    """Moving the test rows into train changes the vocabulary; moving rows between valid and test does not."""
    rows = criteo_rows()
    base = StoreReader(given_store(tmp_path / "a", rows)).schema.vocab_sizes
    swapped = StoreReader(given_store(tmp_path / "b", {"train": rows["train"], "valid": rows["test"],
                                                       "test": rows["valid"]})).schema.vocab_sizes
    grown = StoreReader(given_store(tmp_path / "c", {"train": rows["train"] + rows["test"], "valid": rows["valid"],
                                                     "test": rows["valid"]})).schema.vocab_sizes
    assert base == swapped and base != grown
    counts = Counter(r[14] for r in rows["train"] if r[14])  # C1
    assert base[13] == 2 + sum(n >= 3 for n in counts.values())


def given_store(tmp_path: Path, rows: dict[str, list[list[str]]]) -> Path:
    tmp_path.mkdir()
    paths = write_criteo_x4(tmp_path, rows)
    assert run("criteo", "--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"],
               "--out", tmp_path / "store", "--min-count", 3) == 0
    return tmp_path / "store"


def test_criteo_given_files_bad_input_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture):
    paths = write_criteo_x4(tmp_path, criteo_rows())
    out = tmp_path / "store"
    no_c26 = tmp_path / "no_c26.csv"
    no_c26.write_text(",".join(CSV_HEADER[:-1]) + "\n0" + "," * 38 + "\n")
    cases = [
        (["--train", paths["train"], "--valid", no_c26, "--test", paths["test"]], f"--valid file {no_c26}", "C26"),
        (["--train", paths["train"], "--valid", paths["valid"], "--test", tmp_path / "nope.csv"],
         f"--test file {tmp_path / 'nope.csv'} does not exist", "test.csv"),
        (["--input", CRITEO, "--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"]],
         "pass either --input", "not both"),
        (["--train", paths["train"], "--valid", paths["valid"]], "missing --test", "--train, --valid and --test"),
        (["--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"], "--split", "7,2,1"],
         "--split 7,2,1 does not apply to given split files"),
    ]
    for flags, *phrases in cases:
        assert run("criteo", *flags, "--out", out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and all(p in err for p in phrases), err
        assert not out.exists() and not list(tmp_path.glob("store*"))  # nothing written, not even scratch files


def test_criteo_given_file_with_a_shifted_header_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture):
    paths = write_criteo_x4(tmp_path, criteo_rows())
    shifted = tmp_path / "raw_tsv.txt"
    shifted.write_text(CRITEO.read_text().split("\n", 1)[0] + "\n")  # a raw TSV row where the header belongs
    assert run("criteo", "--train", shifted, "--valid", paths["valid"], "--test", paths["test"],
               "--out", tmp_path / "store") == 2
    err = capsys.readouterr().err
    assert f"--train file {shifted} is not a Criteo_x4 CSV" in err and "Label,I1,I2,...,C26" in err


def test_criteo_given_file_bad_row_is_reported_by_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    rows = criteo_rows()
    rows["valid"][1][0] = "2"  # the label of valid.csv line 3 (line 1 is the header)
    paths = write_criteo_x4(tmp_path, rows)
    flags = ["--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"]]
    assert run("criteo", *flags, "--out", tmp_path / "strict", "--strict") == 2
    assert f"{paths['valid']}:3: label is not 0 or 1" in capsys.readouterr().err
    assert run("criteo", *flags, "--out", tmp_path / "lenient") == 0  # without --strict: skipped and counted
    meta = StoreReader(tmp_path / "lenient").meta
    assert meta["stats"]["skipped"] == {"label": 1} and meta["stats"]["skipped_lines"] == {"label": ["valid.csv:3"]}
    assert StoreReader(tmp_path / "lenient").num_rows("valid") == CRITEO_SIZES["valid"] - 1


# -- Avazu_x4 ----------------------------------------------------------------------------------------------------


def avazu_header() -> list[str]:
    with open(AVAZU / "avazu_train.csv") as f:
        return next(csv.reader(f))


def avazu_x4(tmp_path: Path) -> tuple[dict[str, Path], dict[str, list[list[str]]]]:
    """Avazu_x4 files (Kaggle columns with their header) from the real rows: train from avazu_train.csv, valid
    and test from the dev and test files, whose site_id is replaced by a value train never has."""
    header = avazu_header()
    site = header.index("site_id")
    rows = {}
    for split, name, n in (("train", "avazu_train.csv", 1500), ("valid", "avazu_dev.csv", 200),
                           ("test", "avazu_test.csv", 200)):
        with open(AVAZU / name) as f:
            lines = [r for r in csv.reader(f) if r != header][:n]
        if split != "train":
            for r in lines:
                r[site] = f"only_{split}"
        rows[split] = lines
    paths = {}
    for split, rs in rows.items():
        path = tmp_path / f"{split}.csv"
        path.write_text("\n".join(",".join(r) for r in [header, *rs]) + "\n")
        paths[split] = path
    return paths, rows


def test_avazu_x4_files_keep_their_rows_and_fit_on_train(tmp_path: Path):
    paths, rows = avazu_x4(tmp_path)
    header = avazu_header()
    out = tmp_path / "store"
    assert run("avazu", "--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"],
               "--out", out) == 0
    reader = StoreReader(out)
    assert {s: reader.num_rows(s) for s in SPLITS} == {s: len(rows[s]) for s in SPLITS}
    assert reader.meta["stats"]["skipped_rows"] == 0
    fields = reader.schema.sparse_fields
    for split in SPLITS:
        stored = reader.read_split(split)
        assert sorted(stored["label"][:, 0].astype(int).tolist()) == sorted(int(r[1]) for r in rows[split])
    for name in ("site_id", "device_ip", "C14"):  # min-count 2 (Avazu_x4_001), counted on train rows only
        col = header.index(name)
        counts = Counter(r[col] for r in rows["train"])
        assert reader.vocabulary(name)["values"] == sorted(v for v, n in counts.items() if n >= 2 and v)
        ids = {v: i + 2 for i, v in enumerate(reader.vocabulary(name)["values"])}
        for split in SPLITS:
            stored = Counter(reader.read_split(split)["sparse"][:, fields.index(name)].tolist())
            assert stored == Counter(ids.get(r[col], 0) for r in rows[split]), (name, split)
    site = fields.index("site_id")
    for split in ("valid", "test"):  # 200 rows each of a value train never has: OOV
        assert set(reader.read_split(split)["sparse"][:, site].tolist()) == {0}


def test_avazu_given_files_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture):
    paths, _ = avazu_x4(tmp_path)
    no_click = tmp_path / "no_click.csv"
    lines = paths["test"].read_text().split("\n")
    no_click.write_text(lines[0].replace(",click", "") + "\n")
    out = tmp_path / "store"
    cases = [
        (["--train", paths["train"], "--valid", paths["valid"], "--test", no_click], f"--test file {no_click}",
         "lacks click"),
        (["--train", tmp_path / "nope.csv", "--valid", paths["valid"], "--test", paths["test"]],
         f"--train file {tmp_path / 'nope.csv'} does not exist"),
        (["--input", paths["train"], "--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"]],
         "pass either --input or the given split files"),
        (["--train", paths["train"], "--test", paths["test"]], "missing --valid"),
        (["--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"], "--split", "7,2,1"],
         "--split 7,2,1 does not apply to given split files"),
    ]
    for flags, *phrases in cases:
        assert run("avazu", *flags, "--out", out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and all(p in err for p in phrases), err
        assert not out.exists()
