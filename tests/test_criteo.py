"""Criteo preprocessing: the store holds exactly what a brute-force per-row Python reference computes."""
from __future__ import annotations

import gzip
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import ROOT, SHARED_DATA
from dataset import criteo
from dataset.criteo import TextBlock, bucketize, parse_block, preprocess_criteo
from dataset.raw import InputError
from dataset.split import SPLITS, SplitAssigner
from dataset.store import StoreExistsError, StoreReader, StoreWriter
from dataset.vocab import Vocabulary

INT_RE = re.compile(r"-?[0-9]{1,10}")
HEX_RE = re.compile(r"[0-9a-f]{8}")


# ------------------------------------------------------------------------------------- reference


def reference_kind(cells: list[str], last_unterminated: bool) -> str | None:
    """Why a raw line is rejected (None if valid), checked in the documented order."""
    if len(cells) != 40:
        return "truncated" if last_unterminated else "columns"
    if cells[0] not in ("0", "1"):
        return "label"
    if not all(c == "" or (INT_RE.fullmatch(c) and -2**31 <= int(c) < 2**31) for c in cells[1:14]):
        return "dense"
    if not all(c == "" or HEX_RE.fullmatch(c) for c in cells[14:]):
        return "categorical"
    return None


def reference_rows(text: str) -> tuple[list[list[str]], dict[str, list[int]]]:
    """Valid rows as cell lists, and the 1-based line numbers of the bad ones per kind."""
    lines = text.split("\n")
    unterminated = lines[-1] != ""
    if not unterminated:
        lines.pop()
    rows, bad = [], {}
    for number, line in enumerate(lines, start=1):
        cells = (line[:-1] if line.endswith("\r") else line).split("\t")
        kind = reference_kind(cells, unterminated and number == len(lines))
        if kind is None:
            rows.append(cells)
        else:
            bad.setdefault(kind, []).append(number)
    return rows, bad


def reference_bucket(cell: str) -> str:
    x = int(cell)
    return str(int(math.floor(math.log(x) ** 2))) if x > 2 else str(x)


def reference_store(text: str, min_count: int, dense: str, seed: int = 2018,
                    ratios=(0.8, 0.1, 0.1)) -> dict[str, Counter]:
    """Per split, a multiset of rows (sparse ids..., dense values..., label), encoded one row at a time."""
    rows, _ = reference_rows(text)
    split = SplitAssigner(ratios, seed).assign(len(rows))
    if dense == "bucketize":
        sparse = [[reference_bucket(c) if c else "" for c in r[1:14]] + r[14:] for r in rows]
        dense_values = [()] * len(rows)
    else:
        sparse = [r[14:] for r in rows]
        dense_values = [tuple(float(np.float32(math.log1p(max(int(c), 0)))) if c else 0.0 for c in r[1:14])
                        for r in rows]
    ids_of = []  # per field: value -> id (0 OOV, 1 missing, 2.. kept values in sorted order)
    for j in range(len(sparse[0])):
        counts = Counter(s[j] for s, sp in zip(sparse, split) if sp == 0 and s[j] != "")
        ids_of.append({v: i + 2 for i, v in enumerate(Vocabulary.fit(dict(counts), min_count).values())})
    ids = [[1 if v == "" else ids_of[j].get(v, 0) for j, v in enumerate(s)] for s in sparse]
    out = {name: Counter() for name in SPLITS}
    for i, s in enumerate(split):
        out[SPLITS[s]][(*ids[i], *dense_values[i], float(rows[i][0]))] += 1
    return out


def stored_rows(path: Path) -> dict[str, Counter]:
    reader = StoreReader(path)
    out = {}
    for split in SPLITS:
        counter = Counter()
        for i in range(reader.num_chunks(split)):
            chunk = reader.read_chunk(split, i)
            sparse, dense, label = chunk["sparse"], chunk["dense"], chunk["label"]
            for s, d, y in zip(sparse.tolist(), dense.tolist(), label.tolist()):
                counter[(*s, *d, *y)] += 1
        assert sum(counter.values()) == reader.num_rows(split)
        out[split] = counter
    return out


# ---------------------------------------------------------------------------------------- inputs


def crafted_text(n: int = 400, seed: int = 0) -> str:
    """Rows with small vocabularies (so min-count matters), missing cells, negatives, 9-10 digit ints,
    values <= 2 and a few CRLF line ends."""
    rng = np.random.default_rng(seed)
    ints = ["", "-3", "-1", "0", "1", "2", "3", "7", "8", "20", "1000", "123456789", "2147483647", "0042"]
    lines = []
    for i in range(n):
        cells = [str(rng.integers(0, 2))]
        cells += [ints[k] for k in rng.integers(0, len(ints), 13)]
        cells += ["" if rng.random() < 0.1 else f"{int(rng.zipf(1.5)) * 2654435761 % 2**32:08x}" for _ in range(26)]
        lines.append("\t".join(cells) + ("\r\n" if i % 50 == 7 else "\n"))
    return "".join(lines)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("dense, block_bytes", [("bucketize", 2000), ("numeric", 2000), ("bucketize", 50)])
def test_store_equals_row_by_row_reference(tmp_path, monkeypatch, dense, block_bytes):
    monkeypatch.setattr(criteo, "BLOCK_BYTES", block_bytes)  # lines cross blocks, or outgrow them (50)
    monkeypatch.setattr(criteo, "BUCKET_BYTES", 10_000)  # several shuffle buckets
    monkeypatch.setattr(criteo, "SPILL_BYTES", 20_000)  # which spill to files
    monkeypatch.setattr(criteo, "COUNT_ROWS", 50)  # and partial counts that are merged
    text = crafted_text()
    meta = preprocess_criteo(write(tmp_path / "raw.txt", text), tmp_path / "s", min_count=3, dense=dense,
                             chunk_size=64, progress=False)
    want = reference_store(text, 3, dense)
    assert stored_rows(tmp_path / "s") == want
    assert {s: meta["splits"][s]["rows"] for s in SPLITS} == {s: sum(c.values()) for s, c in want.items()}
    schema = StoreReader(tmp_path / "s").schema
    ints = tuple(f"I{i}" for i in range(1, 14))
    cats = tuple(f"C{i}" for i in range(1, 27))
    assert schema.labels == ("click",)
    assert (schema.sparse_fields, schema.dense_fields) == ((ints + cats, ()) if dense == "bucketize" else (cats, ints))
    assert meta["options"] == {"input": "raw.txt", "min_count": 3, "dense": dense, "split": [0.8, 0.1, 0.1],
                               "seed": 2018, "chunk_size": 64, "hashed": {}}


def test_gzip_input_gives_the_same_rows(tmp_path):
    text = crafted_text(200, seed=1)
    (tmp_path / "raw.gz").write_bytes(gzip.compress(text.encode()))
    preprocess_criteo(tmp_path / "raw.gz", tmp_path / "s", min_count=2, progress=False)
    assert stored_rows(tmp_path / "s") == reference_store(text, 2, "bucketize")


def test_real_criteo_rows(tmp_path):
    for name in ("head8k.txt", "spread4k.txt"):
        path = SHARED_DATA / "criteo" / name
        meta = preprocess_criteo(path, tmp_path / name, min_count=2, progress=False)
        lines = path.read_text().count("\n")
        assert sum(s["rows"] for s in meta["splits"].values()) == lines == meta["stats"]["rows"]
        assert meta["stats"]["skipped"] == {}
        assert stored_rows(tmp_path / name) == reference_store(path.read_text(), 2, "bucketize")


def test_oov_min_count_missing_and_train_only_vocabulary(tmp_path):
    n, seed = 400, 7
    split = SplitAssigner((0.8, 0.1, 0.1), seed).assign(n)
    train = np.flatnonzero(split == 0)
    rare, kept = set(train[:4]), set(train[4:9])  # min_count 5: 4 train rows are too few, 5 are enough
    lines = []
    for i in range(n):
        if split[i] != 0:
            c1 = "aaaaaaaa"  # frequent, but only outside train
        else:
            c1 = "bbbbbbbb" if i in rare else "cccccccc" if i in kept else ""
        lines.append("\t".join(["1", str(i)] + [""] * 12 + [c1] + ["dddddddd"] * 25))
    preprocess_criteo(write(tmp_path / "raw.txt", "\n".join(lines) + "\n"), tmp_path / "s", min_count=5,
                      dense="numeric", seed=seed, progress=False)
    reader = StoreReader(tmp_path / "s")
    assert reader.schema.vocab_sizes[0] == 3  # OOV, missing, cccccccc
    seen = []
    for s in SPLITS:
        for k in range(reader.num_chunks(s)):
            chunk = reader.read_chunk(s, k)
            sparse, dense = chunk["sparse"], chunk["dense"]
            assert (dense[:, 1:] == 0).all() and (sparse[:, 1:] == 2).all()  # missing dense -> 0
            for ids, d in zip(sparse, dense):
                row = int(round(math.expm1(float(d[0]))))  # I1 carries the row number
                want = 0 if split[row] != 0 or row in rare else 2 if row in kept else 1
                assert (ids[0], s) == (want, SPLITS[split[row]])
                seen.append(row)
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("bucket_bytes", [10_000, 10**9])  # several shuffle buckets, or one
def test_each_split_is_stored_in_a_seeded_random_order(tmp_path, monkeypatch, bucket_bytes):
    monkeypatch.setattr(criteo, "BUCKET_BYTES", bucket_bytes)
    n = 3000
    raw = write(tmp_path / "raw.txt", "".join(f"0\t{i}" + "\t" * 38 + "\n" for i in range(n)))  # I1 = line

    def stored_order(seed: int) -> dict[str, list[int]]:
        out = tmp_path / f"s{seed}"
        preprocess_criteo(raw, out, dense="numeric", seed=seed, chunk_size=100, progress=False)
        reader = StoreReader(out)
        return {s: [int(round(math.expm1(float(d)))) for k in range(reader.num_chunks(s))
                    for d in reader.read_chunk(s, k)["dense"][:, 0]] for s in SPLITS}

    order = stored_order(1)
    split = SplitAssigner((0.8, 0.1, 0.1), 1).assign(n)
    for s, rows in order.items():
        assert sorted(rows) == np.flatnonzero(split == SPLITS.index(s)).tolist()
    assert abs(np.corrcoef(order["train"], np.arange(len(order["train"])))[0, 1]) < 0.1  # not file order
    assert stored_order(2)["train"] != order["train"]


def test_bucketize_matches_autoint_rule():
    x = np.array([-2**31, -5, -1, 0, 1, 2, 3, 7, 8, 20, 1000, 2**31 - 1], dtype=np.int64)
    assert bucketize(x).tolist() == [int(reference_bucket(str(v))) for v in x.tolist()]
    assert bucketize(x).tolist()[6:] == [1, 3, 4, 8, 47, 461]


@pytest.mark.parametrize("column", ["I5", "C7"])
def test_cells_are_validated_and_decoded_like_the_reference(column):
    rng = np.random.default_rng(0)
    alphabet = list("0123456789abcdef" * 3 + "ABCDEF-+ gx:`/@\r") + ["\xe9"]
    cells = ["".join(rng.choice(alphabet, size=rng.integers(0, 12))) for _ in range(4000)]
    cells += ["", "0", "-0", "-", "00000000", "ffffffff", "2147483647", "2147483648", "-2147483648",
              "-2147483649", "9999999999", "12345678901", "0000000001", "0123abcd", "0123abc"]
    cells += [f"{v:08x}" for v in rng.integers(0, 2**32, 500)] + [str(v) for v in rng.integers(-2**31, 2**31, 500)]
    col = 1 + int(column[1:]) - 1 if column[0] == "I" else 14 + int(column[1:]) - 1
    rows = []
    for c in cells:
        row = ["1"] + [""] * 39
        row[col] = c
        rows.append(row)
    got, bad, n_lines = parse_block(TextBlock.from_bytes("\n".join("\t".join(r) for r in rows).encode("latin-1")))
    assert n_lines == len(cells)
    kinds: list[str | None] = [None] * len(cells)
    for kind, index in bad.items():
        for i in index:
            kinds[i] = kind
    assert kinds == [reference_kind(r, False) for r in rows]
    valid = [c for c, k in zip(cells, kinds) if k is None]
    assert len(got) == len(valid) > 800
    if column[0] == "I":
        values, missing = got.ints[:, col - 1], got.int_missing[:, col - 1]
        want = [int(c) if c else 0 for c in valid]
    else:
        values, missing = got.cats[:, col - 14], got.cat_missing[:, col - 14]
        want = [int(c, 16) if c else 0 for c in valid]
    assert np.where(missing, 0, values).tolist() == want
    assert missing.tolist() == [c == "" for c in valid]


def test_bad_rows_are_skipped_counted_and_located(tmp_path, capsys):
    good = "\t".join(["0", "1"] + [""] * 12 + ["0123abcd"] * 26)
    bad_lines = {
        "columns": [good + "\textra", "", "0\t1\t2"],
        "label": ["2" + good[1:], "x" + good[1:], "01" + good[1:]],
        "dense": [good.replace("0\t1\t", "0\t1.5\t", 1), good.replace("0\t1\t", "0\tabc\t", 1),
                  good.replace("0\t1\t", "0\t99999999999\t", 1)],
        "categorical": [good.replace("0123abcd", "0123ABCD", 1), good.replace("0123abcd", "0123abc", 1),
                        good.replace("0123abcd", "0123abcg", 1)],
    }
    lines = [good] * 5
    where = {}
    for kind, rows in bad_lines.items():
        for row in rows:
            lines.append(row)
            where.setdefault(kind, []).append(len(lines))
            lines.extend([good] * 3)
    text = "\n".join(lines) + "\n0\t1\t2"  # a cut-off last line without newline
    meta = preprocess_criteo(write(tmp_path / "bad.txt", text), tmp_path / "s", min_count=1, progress=False)
    assert meta["stats"]["skipped"] == {"columns": 3, "label": 3, "dense": 3, "categorical": 3, "truncated": 1}
    assert meta["stats"]["skipped_lines"] == {**where, "truncated": [len(lines) + 1]}
    assert meta["stats"]["rows"] == 5 + 12 * 3 == sum(s["rows"] for s in meta["splits"].values())
    assert reference_rows(text)[1] == {**where, "truncated": [len(lines) + 1]}
    out = capsys.readouterr().out
    assert "skipped 13 bad rows" in out and f"first at lines {', '.join(map(str, where['dense']))}" in out

    with pytest.raises(InputError, match=rf"bad\.txt:{where['columns'][0]}: wrong number of columns"):
        preprocess_criteo(tmp_path / "bad.txt", tmp_path / "strict", strict=True, progress=False)
    assert not (tmp_path / "strict").exists()


def test_empty_and_unusable_inputs_are_errors(tmp_path):
    with pytest.raises(InputError, match="is empty"):
        preprocess_criteo(write(tmp_path / "empty.txt", ""), tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="none of its 2 lines is a valid Criteo row"):
        preprocess_criteo(write(tmp_path / "junk.txt", "a\tb\nc\n"), tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="--split"):
        preprocess_criteo(SHARED_DATA / "criteo" / "spread4k.txt", tmp_path / "s", split=(0, 1, 1), progress=False)
    assert not (tmp_path / "s").exists()


def test_missing_input_explains_where_to_get_criteo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert preprocess.main(["criteo"]) == 2
    err = capsys.readouterr().err
    assert "data/raw/criteo/train.txt" in err and "kaggle.com/c/criteo-display-ad-challenge" in err
    assert "python preprocess.py criteo --synthetic 100000" in err


def test_synthetic_flag_generates_once_and_preprocesses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert preprocess.main(["criteo", "--synthetic", "3000", "--out", "store", "--min-count", "2"]) == 0
    raw = tmp_path / "data" / "raw" / "criteo_synthetic_3000.txt"
    assert raw.read_text().count("\n") == 3000 and StoreReader(tmp_path / "store").meta["stats"]["rows"] == 3000
    stamp = raw.stat().st_mtime_ns
    assert preprocess.main(["criteo", "--synthetic", "3000", "--out", "store", "--overwrite"]) == 0
    assert raw.stat().st_mtime_ns == stamp and "reusing" in capsys.readouterr().out
    assert preprocess.main(["criteo", "--synthetic", "3000", "--input", "x.txt"]) == 2
    assert "either --input or --synthetic" in capsys.readouterr().err


def test_existing_store_needs_overwrite(tmp_path, capsys):
    path = SHARED_DATA / "criteo" / "spread4k.txt"
    preprocess_criteo(path, tmp_path / "s", progress=False)
    with pytest.raises(StoreExistsError, match="--overwrite"):
        preprocess_criteo(path, tmp_path / "s", progress=False)
    assert preprocess.main(["criteo", "--input", str(path), "--out", str(tmp_path / "s")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    meta = preprocess_criteo(path, tmp_path / "s", dense="numeric", overwrite=True, progress=False)
    assert StoreReader(tmp_path / "s").meta == meta


def run_in_subprocess(code: str, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def test_same_input_gives_byte_identical_store_whatever_the_hash_seed(tmp_path):
    path = SHARED_DATA / "criteo" / "head8k.txt"
    for name, hash_seed in (("a", "0"), ("b", "12345")):
        code = (f"from dataset.criteo import preprocess_criteo; "
                f"preprocess_criteo({str(path)!r}, {str(tmp_path / name)!r}, min_count=2, progress=False)")
        assert run_in_subprocess(code, hash_seed).wait(timeout=60) == 0
    assert (tmp_path / "a" / "data.mdb").read_bytes() == (tmp_path / "b" / "data.mdb").read_bytes()


def test_failure_while_writing_leaves_no_store(tmp_path, monkeypatch):
    path = SHARED_DATA / "criteo" / "head8k.txt"
    calls = []

    def failing_add(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original_add(self, *args)

    original_add = StoreWriter.add
    monkeypatch.setattr(StoreWriter, "add", failing_add)
    with pytest.raises(RuntimeError, match="disk full"):
        preprocess_criteo(path, tmp_path / "s", chunk_size=100, progress=False)
    assert list(tmp_path.iterdir()) == []  # no store, no temporary store, no bucket files
    monkeypatch.setattr(StoreWriter, "add", original_add)
    assert preprocess_criteo(path, tmp_path / "s", progress=False)["stats"]["rows"] == 8000


def test_killed_run_leaves_no_loadable_store_and_a_rerun_succeeds(tmp_path, capsys):
    path = SHARED_DATA / "criteo" / "head8k.txt"
    out = tmp_path / "s"
    code = (  # a writer slowed down after each chunk, so the kill lands mid-write
        "import time; from dataset import store; from dataset.criteo import preprocess_criteo; "
        "put = store.StoreWriter._put; "
        "store.StoreWriter._put = lambda self, *a: (put(self, *a), time.sleep(0.02)); "
        f"preprocess_criteo({str(path)!r}, {str(out)!r}, chunk_size=50, progress=False)"
    )
    proc = run_in_subprocess(code, "0")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("s.tmp-*[0-9]")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert list(tmp_path.glob("s.tmp-*[0-9]")), "the kill did not land during the write"
    with pytest.raises(FileNotFoundError):
        StoreReader(out)
    meta = preprocess_criteo(path, out, progress=False)
    assert StoreReader(out).meta == meta and meta["stats"]["rows"] == 8000
    assert "which is no longer running" in capsys.readouterr().err  # the leftovers are removed, and said so
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_hashed_fields_get_their_stable_bucket_and_the_rest_is_unchanged(tmp_path):
    """--hash: a hashed C field holds 2 + splitmix64(hex value) mod N (missing 1), a hashed bucketized I field
    the hash of its bucket; every other field is exactly what the vocabulary run stores; no counting needed."""
    from dataset.vocab import hash_codes
    src = SHARED_DATA / "criteo" / "head8k.txt"
    plain = preprocess_criteo(src, tmp_path / "plain", min_count=2, progress=False)
    hashed = preprocess_criteo(src, tmp_path / "hashed", min_count=2, progress=False, hashed={"C3": 97, "I2": 5})
    assert hashed["options"]["hashed"] == {"C3": 97, "I2": 5}
    fields = plain["schema"]["sparse_fields"]
    c3, i2 = fields.index("C3"), fields.index("I2")
    sizes = hashed["schema"]["vocab_sizes"]
    assert sizes[c3] == 99 and sizes[i2] == 7
    assert [v for j, v in enumerate(sizes) if j not in (c3, i2)] == \
        [v for j, v in enumerate(plain["schema"]["vocab_sizes"]) if j not in (c3, i2)]
    a, b = StoreReader(tmp_path / "plain").read_split("test"), StoreReader(tmp_path / "hashed").read_split("test")
    others = [j for j in range(len(fields)) if j not in (c3, i2)]
    np.testing.assert_array_equal(a["sparse"][:, others], b["sparse"][:, others])  # same rows, same order
    raw = [line.split("\t") for line in src.read_text().splitlines()]
    c3_values = {r[1 + 13 + 2] for r in raw}
    codes = np.array([int(v, 16) for v in sorted(c3_values) if v], np.uint32)
    allowed = set(hash_codes(codes, np.zeros(len(codes), bool), 97).tolist()) | {1}
    assert set(b["sparse"][:, c3].tolist()) <= allowed and 1 in b["sparse"][:, c3]
    assert b["sparse"][:, i2].max() <= 6


def test_every_field_hashed_and_bad_hash_flags(tmp_path, capsys):
    src = SHARED_DATA / "criteo" / "head8k.txt"
    code = preprocess.main(["criteo", "--input", str(src), "--out", str(tmp_path / "s"), "--hash-buckets", "64",
                            "--dense", "numeric"])
    assert code == 0
    assert StoreReader(tmp_path / "s").schema.vocab_sizes == (66,) * 26
    for flags, message in ((["--hash", "C99=4"], "C99 is not a sparse field"), (["--hash", "C9=x"], "FIELD=BUCKETS"),
                           (["--hash", "I1=4", "--dense", "numeric"], "I1 is not a sparse field"),
                           (["--hash-buckets", "0"], "must be >= 1")):
        assert preprocess.main(["criteo", "--input", str(src), "--out", str(tmp_path / "t"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
