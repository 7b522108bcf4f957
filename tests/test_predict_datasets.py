"""Predicting on raw files of the datasets besides Criteo (dataset/table_predict.py: Avazu;
dataset/libfm_predict.py: Frappe and libFM; dataset/criteo_predict.py: the BARS Criteo_x4 CSV): new raw rows encode
exactly as preprocessing encoded the same rows, bad rows keep their line numbers, labelled and unlabelled
input, and scripts/predict.py on the test split's raw rows reproduces train.py --eval_only, on the real rows in
../shared/data/avazu and ../shared/data/frappe."""
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
from dataset import frappe
from dataset.avazu import SPEC as AVAZU_SPEC
from dataset.avazu import RawRows as AvazuRows
from dataset.criteo import CSV_HEADER, preprocess_criteo
from dataset.libfm import preprocess_libfm
from dataset.predict_encode import raw_rows
from dataset.raw import InputError
from dataset.split import SplitAssigner
from dataset.store import SPLITS, StoreReader
from dataset.table import preprocess_table

sys.path.insert(0, str(ROOT / "scripts"))
import predict  # noqa: E402

SEED = 2018
AVAZU = SHARED_DATA / "avazu"
AVAZU_FILES = {"train": AVAZU / "avazu_train.csv", "valid": AVAZU / "avazu_dev.csv", "test": AVAZU / "avazu_test.csv"}


@pytest.fixture(scope="module")
def avazu_store(tmp_path_factory) -> Path:
    """Each split from its own file, so a split's stored rows are exactly its file's rows."""
    out = tmp_path_factory.mktemp("predict_avazu") / "avazu"
    preprocess_table(AVAZU_SPEC, AVAZU_FILES, out, progress=False)
    return out


@pytest.fixture(scope="module")
def avazu_run(avazu_store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict_avazu") / "run"
    argv = ["--model", "DeepFM", "--hidden_units", "16", "--embed_size", "4", "--data", str(avazu_store),
            "--max_steps", "20", "--batch_size", "256", "--gpu_ids", "", "--num_workers", "0",
            "--model_save_dir", str(out)]
    assert train.main(argv) == 0
    return out


def encode_all(encoder, path: Path, labelled: bool, block_bytes: int | None = None):
    """Every block of ``path`` -> (line numbers [n], sparse [n, F], dense [n, D], label [n, T], bad kind ->
    lines, number of lines)."""
    with ThreadPoolExecutor(2) as pool:
        blocks = list(encoder.blocks(path, labelled, pool, block_bytes))
    bad: dict[str, list[int]] = {}
    for b in blocks:
        for kind, lines in b.bad.items():
            bad.setdefault(kind, []).extend(lines.tolist())
    return (np.concatenate([b.lines for b in blocks]), np.concatenate([b.sparse for b in blocks]),
            np.concatenate([b.dense for b in blocks]), np.concatenate([b.label for b in blocks]), bad,
            sum(b.n_lines for b in blocks))


def sorted_rows(*arrays: np.ndarray) -> np.ndarray:
    """Rows of the arrays side by side [n, k] (float64), sorted: compares two row sets as multisets."""
    table = np.concatenate([a.astype(np.float64).reshape(len(a), -1) for a in arrays], axis=1)
    return table[np.lexsort(table.T[::-1])]


def without_click(line: bytes) -> bytes:
    """An Avazu CSV line less its second cell (``click``), as the Kaggle test.csv has it."""
    cells = line.split(b",")
    return b",".join(cells[:1] + cells[2:])


def test_avazu_raw_rows_get_exactly_the_ids_preprocessing_wrote(avazu_store):
    """Each split's file (train.csv with its header line) encoded by the store's encoder equals the split's
    stored rows, as multisets (the store shuffles); small blocks on threads; lines numbered as in the file."""
    reader = StoreReader(avazu_store)
    encoder = raw_rows(reader)
    assert isinstance(encoder, AvazuRows)
    for split, path in AVAZU_FILES.items():
        lines, sparse, dense, label, bad, n_lines = encode_all(encoder, path, True, block_bytes=1 << 14)
        first = 2 if split == "train" else 1  # the header line
        n = len(path.read_bytes().splitlines())
        assert not bad and n_lines == n - first + 1 and lines.tolist() == list(range(first, n + 1))
        stored = reader.read_split(split)
        assert np.array_equal(sorted_rows(sparse, dense, label),
                              sorted_rows(stored["sparse"], stored["dense"], stored["label"])), split


def test_avazu_unlabelled_rows_and_the_service_members(avazu_store, tmp_path):
    """Rows without ``click`` (with Kaggle test.csv's header, or none) give the same ids and zero labels;
    ``columns`` names them and ``line`` rebuilds each raw line from its cells."""
    encoder = raw_rows(StoreReader(avazu_store))
    raw = AVAZU_FILES["test"].read_bytes().splitlines(keepends=True)
    header = AVAZU_FILES["train"].read_bytes().split(b"\n", 1)[0] + b"\n"
    assert encoder.columns == without_click(header).decode().strip().split(",")
    assert encoder.columns[:3] == ["id", "hour", "C1"]
    plain, headed = tmp_path / "test.csv", tmp_path / "test_header.csv"
    plain.write_bytes(b"".join(without_click(line) for line in raw))
    headed.write_bytes(without_click(header) + plain.read_bytes())
    want = encode_all(encoder, AVAZU_FILES["test"], True)
    assert encoder.is_labelled(AVAZU_FILES["test"]) and encoder.is_labelled(AVAZU_FILES["train"])
    for path, first in ((plain, 1), (headed, 2)):
        assert not encoder.is_labelled(path)
        lines, sparse, _, label, bad, _ = encode_all(encoder, path, False)
        assert not bad and lines.tolist() == list(range(first, len(raw) + first))
        assert np.array_equal(sparse, want[1]) and not label.any()
    rebuilt = [encoder.line(without_click(line).decode().rstrip("\n").split(",")) for line in raw]
    assert b"".join(rebuilt) == plain.read_bytes()
    with pytest.raises(InputError, match="a row has 23 cells"):
        encoder.line(["1", "2"])
    odd = tmp_path / "odd.csv"
    odd.write_bytes(b"a,b,c\n")
    with pytest.raises(InputError, match=r"odd.csv:1: 3 ','-separated columns; avazu rows have 24"):
        encoder.is_labelled(odd)


def test_avazu_bad_rows_keep_their_line_numbers(avazu_store, tmp_path):
    """A wrong cell count, a bad label, a bad hour and a blank line are each reported at their own line, in
    any block, and every other row is encoded as in the clean file."""
    encoder = raw_rows(StoreReader(avazu_store))
    raw = AVAZU_FILES["test"].read_bytes().splitlines(keepends=True)
    lines = list(raw)
    lines[99] = b"1,0,14102100\n"  # line 100: 3 cells
    cells = lines[199].split(b",")
    lines[199] = b",".join([cells[0], b"7", *cells[2:]])  # line 200: click 7
    cells = lines[299].split(b",")
    lines[299] = b",".join([cells[0], cells[1], b"notahour", *cells[3:]])  # line 300
    lines[349] = b"\r\n"  # line 350: blank
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(b"".join(lines))
    got = encode_all(encoder, dirty, True, block_bytes=1 << 12)
    clean = encode_all(encoder, AVAZU_FILES["test"], True, block_bytes=1 << 12)
    assert got[4] == {"wrong number of columns": [100], "bad label in 'click'": [200],
                      "bad time in 'hour'": [300], "blank": [350]}
    keep = ~np.isin(clean[0], [100, 200, 300, 350])
    assert np.array_equal(got[0], clean[0][keep]) and np.array_equal(got[1], clean[1][keep])
    assert encoder.reason("bad time in 'hour'", True) == "bad time in 'hour'"
    assert encoder.reason("blank", True) == "blank line"
    assert encoder.reason("wrong number of columns", True) == "wrong number of columns (a labelled row has 24)"
    assert encoder.reason("wrong number of columns", False) == "wrong number of columns (an unlabelled row has 23)"


def test_avazu_predict_reproduces_eval_only_and_keeps_bad_lines(avazu_store, avazu_run, tmp_path, capsys):
    """predict.py on the test split's raw file gives --eval_only's AUC and logloss; a bad row gets its output
    line with the reason and no prediction, and the other lines are unchanged."""
    assert train.main(["--eval_only", str(avazu_run), "--num_workers", "0", "--gpu_ids", ""]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    result = predict.predict_file(avazu_run, AVAZU_FILES["test"], tmp_path / "p.tsv", progress=False)
    assert result["rows"] == evaluated["rows"] == 432  # every row of avazu_test.csv
    assert result["metrics"]["auc"] == pytest.approx(evaluated["auc"], abs=1e-6)
    assert result["metrics"]["logloss"] == pytest.approx(evaluated["logloss"], abs=1e-6)
    lines = AVAZU_FILES["test"].read_bytes().splitlines(keepends=True)
    lines[9] = b"1,0\n"
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(b"".join(lines))
    assert predict.main([str(avazu_run), "--input", str(dirty), "--out", str(tmp_path / "d.tsv"),
                         "--no_progress"]) == 0
    want = (tmp_path / "p.tsv").read_text().splitlines()
    got = (tmp_path / "d.tsv").read_text().splitlines()
    assert got[10] == "10\t\twrong number of columns (a labelled row has 24)"
    assert got[:10] == want[:10] and got[11:] == want[11:]
    assert predict.main([str(avazu_run), "--input", str(dirty), "--out", str(tmp_path / "s.tsv"), "--strict",
                         "--no_progress"]) == 1
    assert f"{dirty}:10: wrong number of columns" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ Frappe (libFM)

FRAPPE = SHARED_DATA / "frappe" / "frappe.test.libfm"
FRAPPE_LINES = 3000  # of NFM's test file: a store in a second


@pytest.fixture(scope="module")
def frappe_raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict_frappe") / "frappe.libfm"
    path.write_bytes(b"".join(FRAPPE.read_bytes().splitlines(keepends=True)[:FRAPPE_LINES]))
    return path


@pytest.fixture(scope="module")
def frappe_store(frappe_raw: Path) -> Path:
    out = frappe_raw.parent / "frappe"
    preprocess_libfm([frappe_raw], out, dataset="frappe", fields=frappe.FIELD_SPEC, split=(0.7, 0.2, 0.1),
                     seed=SEED, user_field=frappe.USER_FIELD)
    return out


def frappe_split(store: Path, n: int) -> np.ndarray:
    """The split preprocessing gave each of ``n`` valid rows: one seeded draw per row in file order."""
    return SplitAssigner(tuple(StoreReader(store).meta["options"]["split"]), SEED).assign(n)


def unlabelled(line: bytes) -> bytes:
    return line.split(b" ", 1)[1]


def test_frappe_raw_lines_get_exactly_the_ids_preprocessing_wrote(frappe_store, frappe_raw, tmp_path):
    """Labelled lines, encoded with the store's kept indices, equal the stored rows split by split (as
    multisets); unlabelled lines (no label word) give the same ids; ``line`` rebuilds them from ``columns``."""
    reader = StoreReader(frappe_store)
    encoder = raw_rows(reader)
    lines, sparse, _, label, bad, n_lines = encode_all(encoder, frappe_raw, True, block_bytes=1 << 14)
    assert not bad and n_lines == FRAPPE_LINES and lines.tolist() == list(range(1, FRAPPE_LINES + 1))
    split = frappe_split(frappe_store, len(lines))
    for k, name in enumerate(SPLITS):
        stored = reader.read_split(name)
        assert np.array_equal(sorted_rows(sparse[split == k], label[split == k]),
                              sorted_rows(stored["sparse"], stored["label"])), name
    raw = frappe_raw.read_bytes().splitlines(keepends=True)
    bare = tmp_path / "bare.libfm"
    bare.write_bytes(b"".join(unlabelled(line) for line in raw))
    assert encoder.is_labelled(frappe_raw) and not encoder.is_labelled(bare)
    got = encode_all(encoder, bare, False, block_bytes=1 << 14)
    assert np.array_equal(got[0], lines) and np.array_equal(got[1], sparse) and not got[3].any() and not got[4]
    assert encoder.columns == list(frappe.FIELDS)
    assert b"".join(encoder.line(unlabelled(line).decode().split()) for line in raw) == \
        bare.read_bytes().replace(b"\r\n", b"\n")  # NFM's files end their lines with \r\n


def test_frappe_bad_and_blank_lines_keep_their_line_numbers(frappe_store, frappe_raw, tmp_path):
    encoder = raw_rows(StoreReader(frappe_store))
    raw = frappe_raw.read_bytes().splitlines(keepends=True)[:500]
    lines = list(raw)
    lines[99] = b"2 " + lines[99].split(b" ", 1)[1]  # line 100: label 2
    lines[199] = lines[199].rsplit(b" ", 1)[0] + b"\n"  # line 200: nine features
    lines[299] = b"\n"  # line 300: blank
    lines[399] = lines[399].rsplit(b" ", 1)[0] + b" 1:1\n"  # line 400: two users, no city
    dirty = tmp_path / "dirty.libfm"
    dirty.write_bytes(b"".join(lines))
    got = encode_all(encoder, dirty, True, block_bytes=1 << 12)
    clean = encode_all(encoder, frappe_raw, True)
    assert got[4] == {"label": [100], "fields": [200], "blank": [300], "range": [400]}
    keep = ~np.isin(clean[0][:500], [100, 200, 300, 400])
    assert np.array_equal(got[0], clean[0][:500][keep]) and np.array_equal(got[1], clean[1][:500][keep])
    bare = tmp_path / "bare.libfm"
    bare.write_bytes(b"".join(unlabelled(line) if line.strip() else line for line in lines[100:]))
    got = encode_all(encoder, bare, False, block_bytes=1 << 12)
    assert got[4] == {"fields": [100], "blank": [200], "range": [300]}
    assert "no label word" in encoder.reason("syntax", False)


def test_frappe_predict_reproduces_eval_only(frappe_store, frappe_raw, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--model", "DeepFM", "--hidden_units", "16", "--embed_size", "4", "--data", str(frappe_store),
                       "--max_steps", "20", "--batch_size", "256", "--gpu_ids", "", "--num_workers", "0",
                       "--model_save_dir", str(run)]) == 0
    capsys.readouterr()
    assert train.main(["--eval_only", str(run), "--num_workers", "0", "--gpu_ids", ""]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    raw = frappe_raw.read_bytes().splitlines(keepends=True)
    split = frappe_split(frappe_store, len(raw))
    test_rows = tmp_path / "test.libfm"
    test_rows.write_bytes(b"".join(line for line, s in zip(raw, split) if s == 2))
    result = predict.predict_file(run, test_rows, tmp_path / "p.tsv", progress=False)
    assert result["rows"] == evaluated["rows"] == int((split == 2).sum())
    assert result["metrics"]["auc"] == pytest.approx(evaluated["auc"], abs=1e-6)
    assert result["metrics"]["logloss"] == pytest.approx(evaluated["logloss"], abs=1e-6)


# ------------------------------------------------------------------------------------- Criteo_x4 CSV


def criteo_x4_files(tmp_path: Path) -> dict[str, Path]:
    """head8k.txt's rows as BARS Criteo_x4 CSV split files (header, commas; valid's integers as ``5.0``, as
    pandas writes a column with NaN; test gzip), 6000 / 1000 / 1000 rows."""
    rows = [line.rstrip(b"\n").split(b"\t") for line in (SHARED_DATA / "criteo" / "head8k.txt").read_bytes()
            .splitlines(keepends=True)]
    parts = {"train": rows[:6000], "valid": rows[6000:7000], "test": rows[7000:]}
    paths = {}
    for split, part in parts.items():
        if split == "valid":
            part = [[r[0], *(c + b".0" if c else c for c in r[1:14]), *r[14:]] for r in part]
        text = b"\n".join([",".join(CSV_HEADER).encode(), *(b",".join(r) for r in part)]) + b"\n"
        paths[split] = tmp_path / f"{split}.csv{'.gz' if split == 'test' else ''}"
        paths[split].write_bytes(gzip.compress(text) if split == "test" else text)
    return paths


def test_criteo_x4_csv_rows_get_exactly_the_ids_preprocessing_wrote(tmp_path):
    """Each given split file, labelled or (without its Label column) unlabelled, encodes to the split's stored
    rows; its header line is line 1 and gets no row; a bad row keeps its line number; TSV still reads."""
    paths = criteo_x4_files(tmp_path)
    out = tmp_path / "store"
    preprocess_criteo(paths, out, min_count=2, progress=False)
    reader = StoreReader(out)
    encoder = raw_rows(reader)
    for split, path in paths.items():
        assert encoder.is_labelled(path)
        lines, sparse, dense, label, bad, n_lines = encode_all(encoder, path, True, block_bytes=1 << 15)
        assert not bad and lines.tolist() == list(range(2, n_lines + 2))
        stored = reader.read_split(split)
        assert np.array_equal(sorted_rows(sparse, dense, label),
                              sorted_rows(stored["sparse"], stored["dense"], stored["label"])), split
    raw = paths["train"].read_bytes().splitlines(keepends=True)
    bare = tmp_path / "bare.csv"
    bare.write_bytes(b"".join(line.split(b",", 1)[1] for line in raw))  # the header loses Label too
    raw[99] = b"1,2,3\n"  # line 100
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(b"".join(raw))
    want = encode_all(encoder, paths["train"], True)
    got = encode_all(encoder, bare, False, block_bytes=1 << 15)
    assert not encoder.is_labelled(bare) and np.array_equal(got[1], want[1]) and not got[3].any()
    got = encode_all(encoder, dirty, True, block_bytes=1 << 15)
    assert got[4] == {"columns": [100]} and np.array_equal(got[1], want[1][want[0] != 100])
    assert encoder.is_labelled(SHARED_DATA / "criteo" / "head8k.txt")
