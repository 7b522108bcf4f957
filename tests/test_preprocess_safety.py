"""preprocess.py never loses what the user owns, and fails in one line: faults injected for real.

Process faults are real preprocess runs killed with SIGKILL, held at the moment that matters by a wrapper
around preprocess.main (an audit hook, or a patched method, that waits there); two runs racing for one --out
are real processes too. Disk faults are a small tmpfs in a private mount namespace (root only) or a file-size
limit (``setrlimit(RLIMIT_FSIZE)``); damaged inputs are real damaged files.
"""
from __future__ import annotations

import gzip
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import ROOT, SHARED_DATA
from dataset.criteo import preprocess_criteo
from dataset.store import StoreReader

CRITEO = SHARED_DATA / "criteo" / "head8k.txt"
CENSUS_GZ = SHARED_DATA / "census" / "census-income.test.gz"
CCP_TRAIN = SHARED_DATA / "aliccp" / "ali_ccp_train_sample.csv"
AE_TRAIN = SHARED_DATA / "aliexpress" / "aliexpress_train_sample.csv"
BOM = b"\xef\xbb\xbf"


# -------------------------------------------------------------------------------------------------- helpers


def criteo_rows(path: Path, n: int = 2000) -> Path:
    """The first ``n`` rows of head8k.txt at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(CRITEO, "rb") as f:
        path.write_bytes(b"".join(f.readline() for _ in range(n)))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python preprocess.py argv`` in this process -> (exit code, stderr)."""
    code = preprocess.main(argv)
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one ``error:`` line of ``err`` (notes and progress bars may come before it); fails on a traceback
    or more lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line and not line.startswith("note: ")
             and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------ 5. bad input and --out: one line, no traceback


def damaged_gzip(source: Path, path: Path, kind: str) -> Path:
    """``source`` gzip-compressed and cut in half (``truncated``), or gzip's magic bytes then junk."""
    if kind == "truncated":
        data = gzip.compress(source.read_bytes())
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize("dataset", ["criteo", "census", "aliccp"])
@pytest.mark.parametrize("kind", ["truncated", "junk"])
def test_damaged_gzip_input_is_one_line(tmp_path, capsys, dataset, kind):
    source = {"criteo": criteo_rows(tmp_path / "rows.txt"), "aliccp": CCP_TRAIN}.get(dataset)
    if dataset == "census":
        source = tmp_path / "census.txt"
        with gzip.open(CENSUS_GZ, "rb") as f:
            source.write_bytes(b"".join(f.readline() for _ in range(300)))
    bad = damaged_gzip(source, tmp_path / "bad.gz", kind)
    code, err = run_cli([dataset, "--input", str(bad), "--out", str(tmp_path / "s")], capsys)
    assert code == 2
    if kind == "truncated":
        assert error_line(err) == (f"error: input {bad} is a truncated gzip file (it ends inside its compressed "
                                   f"data); copy or download it again, then pass it with --input")
    else:
        assert re.fullmatch(rf"error: input {bad} is a damaged gzip file \(.+\); copy or download it again, "
                            r"then pass it with --input", error_line(err)), err
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob("s.*"))


# ------------------------------------------------------------------- 6. every split gets rows, or no store


@pytest.mark.parametrize("split", ["nan,1,1", "inf,1,1", "8,-1,1", "8,1,0", "8,0,1", "0,1,1", "8,1", "a,b,c"])
@pytest.mark.parametrize("dataset", ["criteo", "census"])
def test_split_must_give_every_split_rows(tmp_path, capsys, split, dataset):
    raw = criteo_rows(tmp_path / "rows.txt") if dataset == "criteo" else CENSUS_GZ
    code, err = run_cli([dataset, "--input", str(raw), "--out", str(tmp_path / "s"), "--split", split], capsys)
    assert code == 2 and error_line(err) == (
        f"error: --split must be three positive numbers train,valid,test (every split needs rows: train.py needs "
        f"valid rows for early stopping and test rows for the final score), got {split!r}")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("dataset", ["criteo", "census"])
def test_a_split_left_without_rows_is_refused(tmp_path, capsys, dataset):
    raw = tmp_path / "rows.txt"
    if dataset == "criteo":
        criteo_rows(raw, 20)
    else:
        with gzip.open(CENSUS_GZ, "rb") as f:
            raw.write_bytes(b"".join(f.readline() for _ in range(20)))
    code, err = run_cli([dataset, "--input", str(raw), "--out", str(tmp_path / "s"), "--split", "1000,1,1",
                         "--min-count", "1"], capsys)
    source = str(raw) if dataset == "criteo" else "census input (20 rows)"
    assert code == 2 and re.fullmatch(
        rf"error: {re.escape(source)}: split valid and test got no rows \(train 20, valid 0, test 0\); every split "
        r"needs rows \(train.py needs valid rows for early stopping and test rows for the final score\): give more "
        r"rows or raise its part of --split", error_line(err)), err
    assert listing(tmp_path) == ["rows.txt"]


# --------------------------------------------------------------- 7. a UTF-8 byte-order mark costs no row


def test_bom_costs_no_criteo_row(tmp_path):
    text = criteo_rows(tmp_path / "rows.txt").read_bytes()
    for name, data in (("plain", text), ("bom", BOM + text), ("bomgz", gzip.compress(BOM + text))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rows.txt").write_bytes(data)
        preprocess_criteo(tmp_path / name / "rows.txt", tmp_path / name / "s", min_count=1, progress=False)
    meta = StoreReader(tmp_path / "bom" / "s").meta
    assert meta["stats"]["skipped"] == {} and meta["stats"]["rows"] == 2000
    plain = (tmp_path / "plain" / "s" / "data.mdb").read_bytes()
    assert (tmp_path / "bom" / "s" / "data.mdb").read_bytes() == plain  # the very same store
    assert (tmp_path / "bomgz" / "s" / "data.mdb").read_bytes() == plain


@pytest.mark.parametrize("dataset, source", [("census", CENSUS_GZ), ("aliccp", CCP_TRAIN),
                                             ("aliexpress", AE_TRAIN)])
def test_bom_costs_no_table_row(tmp_path, capsys, dataset, source):
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as f:
        text = b"".join(f.readline() for _ in range(300))
    for name, data in (("plain", text), ("bom", BOM + text)):
        (tmp_path / f"{name}.csv").write_bytes(data)
        code, err = run_cli([dataset, "--input", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / name),
                             "--min-count", "1", "--split", "1,1,1"], capsys)
        assert code == 0, err
    plain, bom = (StoreReader(tmp_path / name) for name in ("plain", "bom"))
    assert bom.meta["stats"]["skipped_rows"] == plain.meta["stats"]["skipped_rows"]
    assert bom.schema == plain.schema
    for split in ("train", "valid", "test"):
        for got, want in zip(bom.read_split(split), plain.read_split(split)):
            np.testing.assert_array_equal(got, want)
