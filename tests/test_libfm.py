"""libFM and Frappe preprocessing: a per-line Python reference, field inference, bad rows, determinism,
the real Frappe files end to end, and loading the store."""
from __future__ import annotations

import gzip
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import ROOT, SHARED_DATA
from dataset.buckets import ShuffleBuckets
from dataset import frappe, libfm
from dataset.libfm import BAD_ROW_KINDS, infer_layout, parse_fields, preprocess_libfm, read_blocks, tokenize
from dataset.loader import make_loader
from dataset.raw import InputError
from dataset.split import SPLITS, SplitAssigner
from dataset.store import StoreExistsError, StoreReader

FRAPPE = [SHARED_DATA / "frappe" / "frappe.validation.libfm", SHARED_DATA / "frappe" / "frappe.test.libfm"]
FRAPPE_ROWS, FRAPPE_POSITIVES = 57_722 + 28_860, 19_063 + 9_536

# ------------------------------------------------------------------------------------------- reference


def _number(token: bytes) -> float | None:
    if any(b <= 32 for b in token):
        return None
    try:
        return float(token)
    except ValueError:
        return None


def reference_line(line: bytes) -> tuple[str | None, int, list[int]]:
    """The documented rules, one line at a time: -> (bad kind, "blank" or None; label; feature indices)."""
    words = [w for w in re.split(rb"[ \t\r]", line) if w]
    if not words:
        return "blank", 0, []
    label, features = words[0], words[1:]
    if b":" in label or any(w.count(b":") != 1 or w[:1] == b":" or w[-1:] == b":" for w in features):
        return "syntax", 0, []
    if _number(label) not in (1.0, 0.0, -1.0):
        return "label", 0, []
    pairs = [w.split(b":") for w in features]
    if not all(i.isdigit() and len(i) <= 10 and int(i) < 2**31 for i, _ in pairs):
        return "index", 0, []
    if not all(_number(v) == 1.0 for _, v in pairs):
        return "value", 0, []
    return None, int(_number(label) == 1.0), [int(i) for i, _ in pairs]


def simple_line(line: bytes) -> tuple[str | None, int, list[int]]:
    """A quicker reference for files known to be clean (the real Frappe files): split on whitespace, labels
    1 / -1, values 1."""
    label, *features = line.split()
    pairs = [w.split(b":") for w in features]
    assert label in (b"1", b"-1") and all(v == b"1" for _, v in pairs)
    return None, int(label == b"1"), [int(i) for i, _ in pairs]


def reference_rows(text: bytes, ranges: list[tuple[int, int]], parse=reference_line) -> tuple[np.ndarray, dict]:
    """Kept rows in file order as int64 [n, 1 + F] (label, then the sorted indices), and the 1-based line
    numbers of the bad rows per kind."""
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    rows, bad = [], {}
    for number, line in enumerate(lines, start=1):
        kind, label, index = parse(line)
        if kind is None and len(index) != len(ranges):
            kind = "fields"
        elif kind is None and not all(lo <= i <= hi for i, (lo, hi) in zip(sorted(index), ranges)):
            kind = "range"
        if kind is None:
            rows.append([label] + sorted(index))
        elif kind != "blank":
            bad.setdefault(kind, []).append(number)
    return np.array(rows, dtype=np.int64).reshape(-1, 1 + len(ranges)), bad


def in_order(rows: np.ndarray) -> np.ndarray:
    """Rows [n, k] sorted lexicographically (to compare multisets of rows)."""
    return rows[np.lexsort(rows.T[::-1])]


def stored_rows(path: Path) -> dict[str, np.ndarray]:
    """Every split of a store decoded back to (label, feature indices; -1 for OOV) [n, 1 + F], sorted."""
    reader = StoreReader(path)
    values = [np.array([-1, -2] + [int(v) for v in reader.vocabulary(f)["values"]])
              for f in reader.schema.sparse_fields]
    out = {}
    for split in SPLITS:
        rows = reader.read_split(split)
        index = [values[j][rows["sparse"][:, j]] for j in range(len(values))]
        out[split] = in_order(np.column_stack([rows["label"][:, 0].astype(np.int64), *index]))
    return out


def expected_splits(rows: np.ndarray, ratios: tuple[float, float, float], seed: int,
                    min_count: int = 1) -> dict[str, np.ndarray]:
    """Rows per split as the seeded draw assigns them (one draw per kept row, in file order), indices seen
    fewer than ``min_count`` times in the train rows of their field replaced by -1; sorted."""
    split = SplitAssigner(ratios, seed).assign(len(rows))
    rows = rows.copy()
    for j in range(1, rows.shape[1]):
        values, counts = np.unique(rows[split == 0, j], return_counts=True)
        rows[~np.isin(rows[:, j], values[counts >= min_count]), j] = -1
    return {name: in_order(rows[split == s]) for s, name in enumerate(SPLITS)}


def as_lists(splits: dict[str, np.ndarray]) -> dict[str, list]:
    return {name: rows.tolist() for name, rows in splits.items()}


def cli(argv: list[str]) -> int:
    return preprocess.main(argv)


# ---------------------------------------------------------------------------------------- a tiny file

TINY = [  # (line, why it is bad or None); three fields: 0-2, 3-5, 6-9
    ("-1 0:1 3:1 6:1", None),
    ("1 1:1 4:1 7:1\r", None),  # CRLF
    ("", None),  # blank: not a row
    ("0 6:1 2:1 5:1.0", None),  # features in any order, a value spelled 1.0
    ("+1 2:1 5:1 9:1", None),
    ("1.0 1:1 3:1 8:1", None),
    ("1\t0:1  4:1 \t7:1 ", None),  # tabs, runs of spaces, a trailing space
    ("+1 0:1 3:1", "fields"),
    ("1 0:1 3:1 6:2", "value"),
    ("1 0:1 3:1 x:1", "index"),
    ("2 0:1 3:1 6:1", "label"),
    ("1 0:1 3::1 6:1", "syntax"),
    ("1:1 0:1 3:1 6:1", "syntax"),
    ("1 0:1 4:1 5:1", "range"),  # two features in field 2, none in field 3
    ("-1 2:1 4:1 6:1", None),
    ("1 0:1 3:1 6:1 7:1", "fields"),
    ("0 1:1 5:1 8:1", None),  # last line, no newline
]
TINY_TEXT = "\n".join(line for line, _ in TINY)
TINY_RANGES = [(0, 2), (3, 5), (6, 9)]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.libfm"
    path.write_text(TINY_TEXT)
    return path


def test_tiny_file_fields_labels_and_bad_rows(tiny, tmp_path, capsys):
    meta = preprocess_libfm([tiny], tmp_path / "s", split=(0.5, 0.25, 0.25), seed=3)
    assert meta["options"]["fields"] == {"names": ["f0", "f1", "f2"], "ranges": [list(r) for r in TINY_RANGES],
                                         "inferred": True}
    bad = {}
    for number, (_, why) in enumerate(TINY, start=1):
        if why:
            bad.setdefault(why, []).append(number)
    rows, ref_bad = reference_rows(TINY_TEXT.encode(), TINY_RANGES)
    assert ref_bad == bad  # the reference agrees with the hand labels
    assert meta["stats"]["skipped"] == {k: len(v) for k, v in bad.items()}
    assert meta["stats"]["skipped_lines"] == {k: [f"tiny.libfm:{n}" for n in v] for k, v in bad.items()}
    assert meta["stats"]["lines"] == len(TINY) and meta["stats"]["rows"] == len(rows) == 8
    assert rows[:, 0].tolist() == [0, 1, 0, 1, 1, 1, 0, 0]  # -1 0 -> 0; 1 +1 1.0 -> 1
    assert as_lists(stored_rows(tmp_path / "s")) == as_lists(expected_splits(rows, (0.5, 0.25, 0.25), seed=3))
    out = capsys.readouterr().out
    assert "skipped 8 bad rows" in out and "2 syntax" in out and "first at tiny.libfm:12, tiny.libfm:13" in out


def test_tiny_file_with_names_ranges_and_a_split(tiny, tmp_path):
    meta = preprocess_libfm([tiny], tmp_path / "s", fields="user,item,ctx", split=(0.5, 0.25, 0.25), seed=3)
    reader = StoreReader(tmp_path / "s")
    assert reader.schema.sparse_fields == ("user", "item", "ctx") and reader.schema.num_dense == 0
    assert reader.schema.labels == ("label",) and reader.schema.task_types == ("binary",)
    assert reader.vocabulary("ctx")["index_range"] == [6, 9]
    rows, _ = reference_rows(TINY_TEXT.encode(), TINY_RANGES)
    assert as_lists(stored_rows(tmp_path / "s")) == as_lists(expected_splits(rows, (0.5, 0.25, 0.25), seed=3))
    assert meta["options"]["split"] == pytest.approx([0.5, 0.25, 0.25])

    # explicit ranges: index 9 is now outside field 3, so its row is a range error
    meta = preprocess_libfm([tiny], tmp_path / "r", fields="a:0-2,b:3-5,c:6-8", split=(0.5, 0.25, 0.25), seed=3)
    assert meta["options"]["fields"]["inferred"] is False
    assert meta["stats"]["skipped_lines"]["range"] == ["tiny.libfm:5", "tiny.libfm:14"]


def test_strict_stops_at_the_first_bad_row_and_leaves_nothing(tiny, tmp_path, capsys):
    with pytest.raises(InputError, match=r"tiny\.libfm:8: wrong number of features .*'\+1 0:1 3:1'.*--strict"):
        preprocess_libfm([tiny], tmp_path / "s", strict=True)
    assert cli(["libfm", "--input", str(tiny), "--out", str(tmp_path / "s"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "tiny.libfm:8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.libfm"]  # no store, no temporary files


def test_several_files_are_one_stream_and_lines_name_their_file(tiny, tmp_path):
    lines = TINY_TEXT.split("\n")
    (tmp_path / "a.libfm").write_text("\n".join(lines[:9]) + "\n")
    (tmp_path / "b.libfm").write_text("\n".join(lines[9:]))
    meta = preprocess_libfm([tmp_path / "a.libfm", tmp_path / "b.libfm"], tmp_path / "ab", split=(0.5, 0.3, 0.2))
    single = preprocess_libfm([tiny], tmp_path / "one", split=(0.5, 0.3, 0.2))
    assert as_lists(stored_rows(tmp_path / "ab")) == as_lists(stored_rows(tmp_path / "one"))
    assert meta["stats"]["skipped"] == single["stats"]["skipped"]
    assert meta["stats"]["skipped_lines"]["value"] == ["a.libfm:9"]
    assert meta["stats"]["skipped_lines"]["index"] == ["b.libfm:1"]
    assert meta["options"]["input"] == ["a.libfm", "b.libfm"]
    with pytest.raises(InputError, match=r"b\.libfm:1: a feature index"):
        preprocess_libfm([tmp_path / "b.libfm"], tmp_path / "x", fields="a:0-2,b:3-5,c:6-9", strict=True)


def test_gzip_input_gives_the_same_rows(tiny, tmp_path):
    (tmp_path / "tiny.libfm.gz").write_bytes(gzip.compress(tiny.read_bytes()))
    meta = preprocess_libfm([tmp_path / "tiny.libfm.gz"], tmp_path / "gz", split=(0.5, 0.3, 0.2))
    plain = preprocess_libfm([tiny], tmp_path / "plain", split=(0.5, 0.3, 0.2))
    assert as_lists(stored_rows(tmp_path / "gz")) == as_lists(stored_rows(tmp_path / "plain"))
    assert meta["stats"]["skipped"] == plain["stats"]["skipped"]


def test_split_by_file(tiny, tmp_path, capsys):
    paths = []
    for name, rows in (("train", ["1 0:1 3:1 6:1", "-1 1:1 4:1 7:1", "1 2:1 5:1 8:1"]),
                       ("valid", ["1 0:1 3:1 9:1"]), ("test", ["-1 1:1 3:1 6:1", "1 2:1 4:1 6:1"])):
        paths.append(tmp_path / f"{name}.libfm")
        paths[-1].write_text("\n".join(rows) + "\n")
    meta = preprocess_libfm(paths, tmp_path / "s", split_by_file=True)
    assert meta["options"]["split"] == "by file"
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 3, "valid": 1, "test": 2}
    assert stored_rows(tmp_path / "s")["valid"].tolist() == [[1, 0, 3, -1]]  # 9 is not in train: OOV
    assert cli(["libfm", "--input", *map(str, paths[:2]), "--out", str(tmp_path / "t"), "--split-by-file"]) == 2
    assert "three inputs" in capsys.readouterr().err


def test_min_count_and_train_only_vocabulary(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ranges = [(0, 49), (50, 59), (60, 1059)]
    lines = []
    for _ in range(3000):
        index = [int(rng.integers(lo, hi + 1)) for lo, hi in ranges]
        lines.append(f"{rng.choice(['1', '-1'])} " + " ".join(f"{i}:1" for i in rng.permutation(index)))
    (tmp_path / "r.libfm").write_text("\n".join(lines) + "\n")
    meta = preprocess_libfm([tmp_path / "r.libfm"], tmp_path / "s", min_count=3, split=(0.6, 0.2, 0.2), seed=7)
    rows, _ = reference_rows((tmp_path / "r.libfm").read_bytes(), ranges)
    want = expected_splits(rows, (0.6, 0.2, 0.2), seed=7, min_count=3)
    assert as_lists(stored_rows(tmp_path / "s")) == as_lists(want)
    assert (want["train"] == -1).any() and (want["test"] == -1).any()
    kept = [len(np.unique(want["train"][:, j][want["train"][:, j] >= 0])) for j in (1, 2, 3)]
    assert meta["schema"]["vocab_sizes"] == [k + 2 for k in kept]
    monkeypatch.setattr(libfm, "TABLE_MAX", 100)  # field 3 (1000 indices wide) encodes by binary search
    preprocess_libfm([tmp_path / "r.libfm"], tmp_path / "searched", min_count=3, split=(0.6, 0.2, 0.2), seed=7)
    assert (tmp_path / "searched" / "data.mdb").read_bytes() == (tmp_path / "s" / "data.mdb").read_bytes()


def test_field_flags_and_ungrouped_indices_are_clear_errors(tmp_path):
    for text, message in (("a,a", "twice"), ("a:0-2,b", "a range to every field"),
                          ("a:0-5,b:3-9", "ascending and disjoint"), ("a:x-2", "NAME or NAME:LO-HI"),
                          ("a:5-2", "ascending"), ("a:0-2,:3-4", "NAME or NAME:LO-HI")):
        with pytest.raises(InputError, match=message):
            parse_fields(text)
    assert parse_fields("u:0-9,i:10-19")[1].spec() == "u:0-9,i:10-19"
    (tmp_path / "mixed.libfm").write_text("1 0:1 3:1\n1 5:1 8:1\n-1 0:1 8:1\n")  # fields {0, 5} and {3, 8}
    with pytest.raises(InputError, match="not grouped by field.*index 3 is mostly feature 2 .*index 5 is mostly "
                                         "feature 1.*--fields NAME:LO-HI"):
        preprocess_libfm([tmp_path / "mixed.libfm"], tmp_path / "s")
    (tmp_path / "junk.libfm").write_text("hello world\n\n")
    with pytest.raises(InputError, match="no well-formed row"):
        preprocess_libfm([tmp_path / "junk.libfm"], tmp_path / "s")
    with pytest.raises(InputError, match="none of its 2 lines is a row"):
        preprocess_libfm([tmp_path / "junk.libfm"], tmp_path / "s", fields="a:0-1")
    (tmp_path / "empty.libfm").write_text("")
    with pytest.raises(InputError, match="is empty"):
        preprocess_libfm([tmp_path / "empty.libfm"], tmp_path / "s")
    with pytest.raises(InputError, match="does not exist"):
        preprocess_libfm([tmp_path / "nope.libfm"], tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_tokenizer_matches_the_reference_on_random_lines():
    rnd = random.Random(5)
    bad_labels = ["2", "x", "1:1", "0.5", "\x0c1", "-", "--1", "1e0:"]
    separators = [" ", " ", " ", "\t", "  ", " \t"]

    def index() -> int:
        return rnd.choice([rnd.randint(0, 99), rnd.randint(0, 10**8), rnd.randint(10**8, 2**31 - 1), 2**31 - 1, 0])

    def bad_feature(i: int) -> str:
        return rnd.choice([f"{i}:2", f"{i}", f":{i}", f"{i}:", f"{i}::1", f"{i}:1:1", f"x{i}:1", f"-{i}:1",
                           f"{i}:1\x00", f"{i}:0", f"{i}:1.5", "1e3:1", f"{i}\x0b:1", f"{i:011d}:1",
                           f"{2**31 + i}:1", f"{i}:1x", f"{i}:x1"])

    lines = []
    for _ in range(3000):  # mostly good lines with one random defect, so every check is reached
        words = [rnd.choice(["1", "-1", "0", "+1", "1.0", "-1.0", "1e0"])]
        words += [rnd.choice([f"{i}:1"] * 6 + [f"{i}:1.0", f"{i}:+1", f"0{i}:1"]) for i in
                  (index() for _ in range(rnd.choice([0, 1, 3, 3, 3, 10])))]
        defect = rnd.random()
        if defect < 0.15:
            words[0] = rnd.choice(bad_labels)
        elif defect < 0.6 and len(words) > 1:
            words[rnd.randrange(1, len(words))] = bad_feature(index())
        line = "".join(w + rnd.choice(separators) for w in words).rstrip(" ") if rnd.random() > 0.03 else ""
        lines.append(line + ("\r" if rnd.random() < 0.1 else ""))
    text = ("\n".join(lines) + "\n").encode("latin-1")
    parsed = tokenize(text)
    first = np.cumsum(parsed.n_features) - parsed.n_features
    codes = {0: None, libfm.BLANK: "blank", **{i + 1: k for i, k in enumerate(BAD_ROW_KINDS)}}
    seen = Counter()
    for n, line in enumerate(text.split(b"\n")[:-1]):
        kind, label, index = reference_line(line)
        assert codes[int(parsed.kind[n])] == kind, line
        seen[kind] += 1
        if kind is None:
            assert parsed.label[n] == label and parsed.n_features[n] == len(index)
            assert parsed.index[first[n]:first[n] + len(index)].tolist() == index, line
    assert all(seen[k] > 50 for k in (None, "blank", "syntax", "label", "index", "value")), seen


def test_blocks_and_the_last_line(tmp_path):
    text = b"1 0:1\r\n-1 2:1\n\n0 1:1\n1 3:1"
    (tmp_path / "f.libfm").write_bytes(text)
    for size in (1, 3, 7, 64):
        blocks = list(read_blocks([tmp_path / "f.libfm"], size))
        assert b"".join(b.text for b in blocks) == text + b"\n"
        assert [b.first_line for b in blocks] == list(np.cumsum([1] + [b.text.count(b"\n") for b in blocks[:-1]]))
        assert np.concatenate([b.lines.label for b in blocks]).tolist() == [1, 0, 0, 0, 1]


# -------------------------------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def frappe_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frappe") / "store"
    assert cli(["frappe", "--input", *map(str, FRAPPE), "--out", str(out)]) == 0
    return out


def test_frappe_end_to_end(frappe_store: Path):
    reader = StoreReader(frappe_store)
    meta, schema = reader.meta, reader.schema
    assert meta["dataset"] == "frappe" and meta["stats"]["lines"] == FRAPPE_ROWS
    assert meta["stats"]["skipped"] == {} and meta["stats"]["rows"] == FRAPPE_ROWS
    assert schema.sparse_fields == frappe.FIELDS == ("user", "item", "daytime", "weekday", "isweekend",
                                                     "homework", "cost", "weather", "country", "city")
    assert schema.user_field == "user" and schema.num_dense == 0 and schema.labels == ("label",)
    assert meta["options"]["min_count"] == 1 and meta["options"]["split"] == pytest.approx([0.7, 0.2, 0.1])
    assert meta["options"]["fields"]["ranges"][1] == [957, 5038]
    sizes = dict(zip(schema.sparse_fields, schema.vocab_sizes))
    print(f"\nFrappe vocab sizes (7:2:1 split, seed 2018, min count 1, OOV and missing included): {sizes}")
    assert sizes == {"user": 888, "item": 4084, "daytime": 9, "weekday": 9, "isweekend": 4, "homework": 5,
                     "cost": 4, "weather": 10, "country": 78, "city": 226}
    rows = {s: reader.num_rows(s) for s in SPLITS}
    print(f"Frappe split sizes: {rows}")
    assert rows == {"train": 60_720, "valid": 17_130, "test": 8_732}
    for split, share in zip(SPLITS, (0.7, 0.2, 0.1)):
        assert abs(rows[split] / FRAPPE_ROWS - share) < 0.01
    for field in schema.sparse_fields:
        vocab = reader.vocabulary(field)
        assert len(vocab["values"]) + 2 == sizes[field]


def test_frappe_store_equals_the_reference(frappe_store: Path):
    text = b"".join(p.read_bytes() for p in FRAPPE)
    ranges = [tuple(r) for r in StoreReader(frappe_store).meta["options"]["fields"]["ranges"]]
    rows, bad = reference_rows(text, ranges, parse=simple_line)
    assert not bad and len(rows) == FRAPPE_ROWS and rows[:, 0].sum() == FRAPPE_POSITIVES
    stored, want = stored_rows(frappe_store), expected_splits(rows, (0.7, 0.2, 0.1), seed=2018)
    assert all(np.array_equal(stored[s], want[s]) for s in SPLITS)


def test_frappe_ranges_inferred_from_the_data_are_the_documented_ones():
    assert frappe.FIELD_SPEC.startswith("user:0-956,item:957-5038,") and frappe.FIELD_SPEC.endswith("city:5149-5381")
    assert infer_layout(FRAPPE, frappe.FIELDS).spec() == frappe.FIELD_SPEC
    assert infer_layout(FRAPPE, ()).names == tuple(f"f{k}" for k in range(10))


def test_frappe_store_is_byte_identical_whatever_the_blocks_spills_and_hash_seed(frappe_store, tmp_path, monkeypatch):
    monkeypatch.setattr(libfm, "SPILL_BYTES", 100_000)  # every few blocks go to bucket files
    spills = []
    spill = ShuffleBuckets._spill
    monkeypatch.setattr(ShuffleBuckets, "_spill", lambda self: (spills.append(1), spill(self)))
    preprocess_libfm(FRAPPE, tmp_path / "small_blocks", dataset="frappe", fields=frappe.FIELD_SPEC,
                     split=(0.7, 0.2, 0.1), user_field="user", block_bytes=50_000)
    assert len(spills) > 5 and not list(tmp_path.glob("*buckets*"))
    code = ("import sys; import preprocess; "
            f"sys.exit(preprocess.main(['frappe', '--input', *{list(map(str, FRAPPE))!r}, '--out', "
            f"{str(tmp_path / 'other_seed')!r}]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True).returncode == 0
    want = (frappe_store / "data.mdb").read_bytes()
    assert (tmp_path / "small_blocks" / "data.mdb").read_bytes() == want
    assert (tmp_path / "other_seed" / "data.mdb").read_bytes() == want


def test_frappe_store_loads(frappe_store: Path):
    reader = StoreReader(frappe_store)
    sizes = np.array(reader.schema.vocab_sizes)
    seen, positives = 0, 0.0
    for batch in make_loader(frappe_store, "train", 4096, train=True, num_workers=0):
        assert batch["sparse"].dtype.is_floating_point is False and batch["sparse"].shape[1] == 10
        assert batch["dense"].shape == (len(batch["label"]), 0) and batch["label"].shape[1] == 1
        assert (batch["sparse"].numpy() < sizes).all() and (batch["sparse"].numpy() >= 0).all()
        seen += len(batch["label"])
        positives += float(batch["label"].sum())
    assert seen == reader.num_rows("train")
    assert positives == pytest.approx(reader.meta["stats"]["label_rates"]["train"] * seen)
    test_rows = sum(len(b["label"]) for b in make_loader(frappe_store, "test", 1000, train=False, num_workers=1))
    assert test_rows == reader.num_rows("test")


# -------------------------------------------------------------------------------------------- the CLI


def test_frappe_defaults_do_not_leak_into_other_subcommands():
    parser = preprocess.build_parser()
    criteo, census = parser.parse_args(["criteo"]), parser.parse_args(["census"])
    assert (criteo.min_count, criteo.split, census.min_count, census.split) == (10, "8,1,1", 10, "8,1,1")
    lf, fr = parser.parse_args(["libfm", "--input", "x"]), parser.parse_args(["frappe"])
    assert (lf.min_count, lf.split, lf.fields) == (1, "8,1,1", None)
    assert (fr.min_count, fr.split, fr.fields, fr.input) == (1, "7,2,1", frappe.FIELD_SPEC, None)
    assert parser.parse_args(["frappe", "--min-count", "5", "--split", "8,1,1"]).min_count == 5


def test_frappe_without_input_says_where_the_files_are(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["frappe"]) == 2
    err = capsys.readouterr().err
    assert "../shared/data/frappe/frappe.validation.libfm" in err and "data/raw/frappe" in err
    raw = tmp_path / "data" / "raw" / "frappe"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)  # synthetic rows in Frappe's layout: the real files are never copied
    ranges = [tuple(r) for r in parse_fields(frappe.FIELD_SPEC)[1].to_dict()["ranges"]]
    (raw / "frappe.test.libfm").write_text("".join(
        f"{rng.choice(['1', '-1'])} " + " ".join(f"{rng.integers(lo, hi + 1)}:1" for lo, hi in ranges) + "\n"
        for _ in range(300)))
    assert cli(["frappe", "--out", "s"]) == 0
    reader = StoreReader(tmp_path / "s")
    assert reader.meta["options"]["input"] == ["frappe.test.libfm"] and reader.meta["stats"]["rows"] == 300


def test_existing_store_needs_overwrite(tiny, tmp_path, capsys):
    args = ["libfm", "--input", str(tiny), "--out", str(tmp_path / "s"), "--split", "2,1,1", "--seed", "3"]
    assert cli(args) == 0
    assert cli(args) == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(StoreExistsError):
        preprocess_libfm([tiny], tmp_path / "s")
    assert cli(args[:-4] + ["--overwrite", "--split", "1,1,2", "--seed", "3"]) == 0
    assert StoreReader(tmp_path / "s").meta["options"]["split"] == pytest.approx([0.25, 0.25, 0.5])
