"""scripts/predict.py: new raw Criteo rows encoded exactly as preprocessing encoded them, scored by a trained
run's best.pt, one output line per input line (bad rows included, never shifted), on the real rows of
head8k.txt."""
from __future__ import annotations

import gzip
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import train
from conftest import ROOT, SHARED_DATA
from dataset import criteo
from dataset.criteo import RawRows, preprocess_criteo
from dataset.predict_encode import recorded_vocabulary_checksum, vocabulary_checksum, vocabulary_records
from dataset.split import SplitAssigner
from dataset.store import SPLITS, StoreReader
from dataset.store import vocabulary_checksum as checksum_of

sys.path.insert(0, str(ROOT / "scripts"))
import predict  # noqa: E402

HEAD = SHARED_DATA / "criteo" / "head8k.txt"
SEED, RATIOS = 2018, (0.8, 0.1, 0.1)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "criteo"
    preprocess_criteo(HEAD, out, min_count=2, seed=SEED, split=RATIOS, progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    argv = ["--model", "DeepFM", "--hidden_units", "32", "32", "--embed_size", "8", "--data", str(store),
            "--max_steps", "20", "--batch_size", "256", "--gpu_ids", "", "--num_workers", "0",
            "--model_save_dir", str(out)]
    assert train.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def raw_lines() -> list[bytes]:
    return HEAD.read_bytes().splitlines(keepends=True)


def split_of_lines(n: int) -> np.ndarray:
    """The split preprocessing gave each of ``n`` valid rows: one seeded draw per valid row in file order."""
    return SplitAssigner(RATIOS, SEED).assign(n)


def encode_all(store_path: Path, path: Path, labelled: bool = True, block_bytes: int | None = None):
    reader = StoreReader(store_path)
    with ThreadPoolExecutor(2) as pool:
        blocks = list(RawRows(reader).blocks(path, labelled, pool, block_bytes))
    return (np.concatenate([b.lines for b in blocks]), np.concatenate([b.sparse for b in blocks]),
            np.concatenate([b.dense for b in blocks]), np.concatenate([b.label for b in blocks]))


def sorted_rows(*arrays: np.ndarray) -> np.ndarray:
    """Rows of the arrays side by side [n, k] (float64), sorted: compares two row sets as multisets."""
    table = np.concatenate([a.astype(np.float64).reshape(len(a), -1) for a in arrays], axis=1)
    return table[np.lexsort(table.T[::-1])]


@pytest.mark.parametrize("options", [{}, {"dense": "numeric", "hashed": {"C3": 97, "C20": 5}}],
                         ids=["bucketize", "numeric+hashed"])
def test_new_raw_rows_get_exactly_the_ids_preprocessing_wrote(options, tmp_path):
    """Every raw row, encoded with the vocabularies the store keeps, equals its stored row (sparse ids, dense
    values, label), split by split, as multisets (the store shuffles its rows); small blocks on threads."""
    out = tmp_path / "s"
    preprocess_criteo(HEAD, out, min_count=2, seed=SEED, split=RATIOS, progress=False, **options)
    lines, sparse, dense, label = encode_all(out, HEAD, block_bytes=1 << 15)
    assert lines.tolist() == list(range(1, 8001))
    split = split_of_lines(len(lines))
    reader = StoreReader(out)
    for k, name in enumerate(SPLITS):
        stored = reader.read_split(name)
        mine = split == k
        assert np.array_equal(sorted_rows(sparse[mine], dense[mine], label[mine]),
                              sorted_rows(stored["sparse"], stored["dense"], stored["label"])), name


def test_the_run_records_its_store_and_vocabulary_checksum(store, run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["store"]["path"] == str(store)
    assert config["store"]["vocab_checksum"] == vocabulary_checksum(StoreReader(store))


def test_the_store_records_its_vocabulary_checksum_when_written_and_an_older_store_gets_it_computed(store):
    """Written once by the store's writer (train.py reads it at every start instead of hashing every
    vocabulary); a store written before the key existed gets the same value computed from its records."""
    reader = StoreReader(store)
    records = vocabulary_records(reader)
    assert records is not None and set(records) == set(reader.schema.vocabs)
    recomputed = checksum_of(records, reader.meta["options"])
    assert reader.meta["vocab_checksum"] == recomputed == vocabulary_checksum(reader)
    reader.meta["vocab_checksum"] = "recorded"
    assert recorded_vocabulary_checksum(reader) == "recorded" and vocabulary_checksum(reader) == recomputed
    del reader.meta["vocab_checksum"]  # as in a store written before
    assert recorded_vocabulary_checksum(reader) == recomputed
    assert checksum_of(None, reader.meta["options"]) is None
    changed = {**records, "C1": {**records["C1"], "values": records["C1"]["values"][::-1]}}
    assert checksum_of(changed, reader.meta["options"]) != recomputed


def test_predicting_the_test_splits_raw_rows_reproduces_eval_only(store, run_dir, raw_lines, tmp_path, capsys):
    test_rows = tmp_path / "test_rows.txt"
    split = split_of_lines(len(raw_lines))
    test_rows.write_bytes(b"".join(line for line, s in zip(raw_lines, split) if s == 2))
    assert train.main(["--eval_only", str(run_dir), "--num_workers", "0", "--gpu_ids", ""]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    result = predict.predict_file(run_dir, test_rows, tmp_path / "p.tsv", progress=False)
    assert result["rows"] == evaluated["rows"] == int((split == 2).sum())
    assert result["metrics"]["auc"] == pytest.approx(evaluated["auc"], abs=1e-6)
    assert result["metrics"]["logloss"] == pytest.approx(evaluated["logloss"], abs=1e-6)


def read_out(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_unlabelled_rows_get_the_same_predictions_and_no_metrics(run_dir, raw_lines, tmp_path):
    labelled, unlabelled = tmp_path / "train.txt", tmp_path / "test.txt"
    labelled.write_bytes(b"".join(raw_lines[:1000]))
    unlabelled.write_bytes(b"".join(line.split(b"\t", 1)[1] for line in raw_lines[:1000]))
    a = predict.predict_file(run_dir, labelled, tmp_path / "a.tsv", progress=False)
    b = predict.predict_file(run_dir, unlabelled, tmp_path / "b.tsv", progress=False)
    assert a["labelled"] and not b["labelled"] and "metrics" not in b
    assert (tmp_path / "a.tsv").read_text() == (tmp_path / "b.tsv").read_text()
    rows = read_out(tmp_path / "a.tsv")
    assert rows[0] == ["line", "click", "reason"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 1001))
    assert all(0 < float(r[1]) < 1 and r[2] == "" for r in rows[1:])


def test_a_bad_row_keeps_its_line_with_a_reason_and_strict_stops(run_dir, raw_lines, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(criteo, "BLOCK_BYTES", 1 << 14)  # many blocks: the bad row is not in the first
    clean, dirty = tmp_path / "clean.txt", tmp_path / "dirty.txt"
    clean.write_bytes(b"".join(raw_lines[:600]))
    lines = list(raw_lines[:600])
    lines[399] = lines[399].replace(b"\t", b"\tzz", 1)  # line 400: I1 is not an integer
    lines[449] = b"only\ttwo\n"  # line 450: wrong number of columns
    dirty.write_bytes(b"".join(lines))
    predict.predict_file(run_dir, clean, tmp_path / "clean.tsv", progress=False)
    assert predict.main([str(run_dir), "--input", str(dirty), "--out", str(tmp_path / "dirty.tsv"),
                         "--no_progress"]) == 0
    assert "2 bad rows have no prediction" in capsys.readouterr().out
    want, got = read_out(tmp_path / "clean.tsv"), read_out(tmp_path / "dirty.tsv")
    assert len(got) == len(want) == 601 and [int(r[0]) for r in got[1:]] == list(range(1, 601))
    assert got[400][:2] == ["400", ""] and "not an integer" in got[400][2]
    assert got[450][:2] == ["450", ""] and "wrong number of columns" in got[450][2]
    kept_got = [r for i, r in enumerate(got[1:], 1) if i not in (400, 450)]
    kept_want = [r for i, r in enumerate(want[1:], 1) if i not in (400, 450)]
    assert [(r[0], r[2]) for r in kept_got] == [(r[0], r[2]) for r in kept_want]
    # the same rows, scored in batches of other rows: a matmul's rounding may differ in the last printed digit
    np.testing.assert_allclose([float(r[1]) for r in kept_got], [float(r[1]) for r in kept_want], rtol=0, atol=2e-7)
    strict_out = tmp_path / "strict.tsv"
    assert predict.main([str(run_dir), "--input", str(dirty), "--out", str(strict_out), "--strict",
                         "--no_progress"]) == 1
    assert f"{dirty}:400: an I column is not an integer" in capsys.readouterr().err
    assert not strict_out.exists() and not list(tmp_path.glob(".strict.tsv*"))


def test_gzip_input_gives_the_same_output(run_dir, raw_lines, tmp_path):
    plain, packed = tmp_path / "rows.txt", tmp_path / "rows.gz"
    plain.write_bytes(b"".join(raw_lines[:500]))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    predict.predict_file(run_dir, plain, tmp_path / "a.tsv", progress=False)
    predict.predict_file(run_dir, packed, tmp_path / "b.tsv", progress=False)
    assert (tmp_path / "a.tsv").read_text() == (tmp_path / "b.tsv").read_text()


def test_an_existing_output_is_kept_unless_overwrite(run_dir, raw_lines, tmp_path, capsys):
    rows, out = tmp_path / "rows.txt", tmp_path / "p.tsv"
    rows.write_bytes(b"".join(raw_lines[:50]))
    out.write_text("mine\n")
    argv = [str(run_dir), "--input", str(rows), "--out", str(out), "--no_progress"]
    assert predict.main(argv) == 1
    assert "exists; pass another path, or --overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    assert predict.main([*argv, "--overwrite"]) == 0
    assert len(read_out(out)) == 51


def test_a_bad_run_dir_or_a_changed_store_is_a_one_line_error(store, run_dir, raw_lines, tmp_path, capsys):
    rows = tmp_path / "rows.txt"
    rows.write_bytes(b"".join(raw_lines[:50]))
    (tmp_path / "empty_run").mkdir()
    assert predict.main([str(tmp_path / "empty_run"), "--input", str(rows), "--out", str(tmp_path / "a.tsv")]) == 1
    err = capsys.readouterr().err
    assert "has no best.pt" in err and len(err.strip().splitlines()) == 1
    # the same dataset preprocessed again with another --min-count: same fields, other vocabularies
    other = tmp_path / "other"
    preprocess_criteo(HEAD, other, min_count=3, seed=SEED, split=RATIOS, progress=False)
    moved = tmp_path / "moved"
    preprocess_criteo(HEAD, moved, min_count=2, seed=SEED, split=RATIOS, progress=False)
    assert predict.main([str(run_dir), "--input", str(rows), "--out", str(tmp_path / "b.tsv"),
                         "--data", str(other)]) == 1
    assert "does not match the checkpoint's store" in capsys.readouterr().err  # vocab sizes differ
    assert predict.main([str(run_dir), "--input", str(rows), "--out", str(tmp_path / "c.tsv"),
                         "--data", str(moved), "--no_progress"]) == 0  # an identical store elsewhere is fine
    assert predict.main([str(run_dir), "--input", str(rows), "--out", str(tmp_path / "d.tsv"),
                         "--data", str(tmp_path / "nowhere")]) == 1
    assert "pass --data PATH" in capsys.readouterr().err


def test_same_sizes_but_other_vocabularies_are_caught_by_the_checksum(store, run_dir, raw_lines, tmp_path,
                                                                       capsys):
    """A store with the run's schema whose vocabularies differ (here: its own vocab records rewritten) is
    refused by the vocabulary checksum that config.json records."""
    import lmdb

    changed = tmp_path / "changed"
    preprocess_criteo(HEAD, changed, min_count=2, seed=SEED, split=RATIOS, progress=False)
    env = lmdb.open(str(changed), subdir=True)
    with env.begin(write=True) as txn:
        record = json.loads(txn.get(b"__vocab__/C1"))
        record["values"][0] = "00000000"  # still sorted: the first kept value swapped for another
        txn.put(b"__vocab__/C1", json.dumps(record).encode())
    env.close()
    rows = tmp_path / "rows.txt"
    rows.write_bytes(b"".join(raw_lines[:50]))
    assert predict.main([str(run_dir), "--input", str(rows), "--out", str(tmp_path / "a.tsv"),
                         "--data", str(changed)]) == 1
    err = capsys.readouterr().err
    assert "other vocabularies than the one the run was trained on" in err and "pass --data" in err
