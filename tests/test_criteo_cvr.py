"""criteo_cvr: synthetic click -> conversion rows become a (click, conversion) store that ESMM trains on."""
from __future__ import annotations

import numpy as np

import preprocess
from dataset.criteo import bucketize
from dataset.store import StoreReader
from dataset.synthetic import write_synthetic_criteo


def read_all(store: StoreReader) -> tuple[np.ndarray, np.ndarray]:
    parts = [store.read_split(s) for s in ("train", "valid", "test")]
    return np.concatenate([p["sparse"] for p in parts]), np.concatenate([p["label"] for p in parts])


def test_synthetic_conversion_store(tmp_path):
    raw = write_synthetic_criteo(tmp_path / "rows.txt", 3000, seed=1, conversion=True)
    assert preprocess.main(["criteo_cvr", "--input", str(raw), "--out", str(tmp_path / "s"), "--min-count", "1"]) == 0
    store = StoreReader(tmp_path / "s")
    assert store.schema.labels == ("click", "conversion")
    assert store.schema.sparse_fields[:13] == tuple(f"I{i}" for i in range(1, 14)) and store.schema.num_dense == 0
    sparse, label = read_all(store)
    raw_rows = [line.split("\t") for line in raw.read_text().splitlines()]
    assert len(label) == len(raw_rows) == 3000
    assert (label[:, 1] <= label[:, 0]).all() and 0 < label[:, 1].sum() < label[:, 0].sum()
    assert sorted(map(tuple, label.tolist())) == sorted((float(r[0]), float(r[1])) for r in raw_rows)
    # I1 holds Criteo_x4 buckets: as many distinct ids (plus missing) as distinct raw buckets
    raw_i1 = {int(bucketize(np.array([int(r[2])]))[0]) for r in raw_rows if r[2]}
    assert set(np.unique(sparse[:, 0])) - {1} == set(range(2, 2 + len(raw_i1)))


def test_bad_rows_are_counted_or_strict(tmp_path, capsys):
    raw = write_synthetic_criteo(tmp_path / "rows.txt", 200, seed=2, conversion=True)
    lines = raw.read_text().splitlines()
    lines[5] = "0\t1\t" + lines[5].split("\t", 2)[2]  # a conversion without a click
    lines[9] = "\t".join(lines[9].split("\t")[:30])  # too few columns
    lines.insert(3, "")  # a blank line is ignored but still numbered
    raw.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s"
    assert preprocess.main(["criteo_cvr", "--input", str(raw), "--out", str(out), "--min-count", "1"]) == 0
    assert StoreReader(out).meta["stats"]["skipped_rows"] == 2
    assert preprocess.main(["criteo_cvr", "--input", str(raw), "--out", str(tmp_path / "t"), "--strict"]) == 2
    assert "line 11: wrong number of columns" in capsys.readouterr().err  # column counts are checked first
    del lines[9 + 1]
    raw.write_text("\n".join(lines) + "\n")
    assert preprocess.main(["criteo_cvr", "--input", str(raw), "--out", str(tmp_path / "t"), "--strict"]) == 2
    assert "line 7: conversion = 1 without click" in capsys.readouterr().err


def test_needs_exactly_one_source(tmp_path, capsys):
    assert preprocess.main(["criteo_cvr", "--out", str(tmp_path / "s")]) == 2
    assert "--synthetic" in capsys.readouterr().err


def test_synthetic_rows_are_generated_once_then_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # data/raw/ is relative to the working directory
    argv = ["criteo_cvr", "--synthetic", "2000", "--out", "store", "--min-count", "1", "--overwrite"]
    assert preprocess.main(argv) == 0
    assert "wrote data/raw/criteo_cvr_synthetic_2000.txt" in capsys.readouterr().out
    first = StoreReader(tmp_path / "store").meta
    assert preprocess.main(argv) == 0
    assert "reusing data/raw/criteo_cvr_synthetic_2000.txt" in capsys.readouterr().out
    assert StoreReader(tmp_path / "store").meta == first and first["schema"]["labels"] == ["click", "conversion"]
