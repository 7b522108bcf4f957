"""amazon: DIN's Amazon protocol on S3Rec's Beauty file -> a behaviour-sequence store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import ROOT, SHARED_DATA
from dataset.amazon import InputError, preprocess_amazon
from dataset.loader import make_loader
from dataset.store import SPLITS, StoreReader

BEAUTY = SHARED_DATA / "amazon" / "Beauty.txt"
BEAUTY_ATTRS = SHARED_DATA / "amazon" / "Beauty_item2attributes.json"

# user 3 has 2 reviews (skipped, line 3); line 4 has a bad id; line 5 repeats user 2; user 5 has exactly 3
# reviews (a valid and a test target, no train target); item 18 has no attributes; item 19 is never reviewed.
TINY = "1 10 11 12 13\n2 11 12 14 15 16 17\n3 13 10\n4 x 5\n2 1 2 3\n\n5 14 16 18\n"
TINY_ATTRS = {"10": [7, 100, 101], "11": [100, 102], "12": [8, 101], "13": [102], "14": [7, 103, 104, 105],
              "15": [100], "16": [9, 104], "17": [101], "19": [100, 102]}
TINY_USERS = {1: [10, 11, 12, 13], 2: [11, 12, 14, 15, 16, 17], 5: [14, 16, 18]}
OOV = "<oov>"


def write_tiny(directory: Path, text: str = TINY, attrs: dict | None = None) -> Path:
    path = directory / "Tiny.txt"
    path.write_text(text)
    (directory / "Tiny_item2attributes.json").write_text(json.dumps(TINY_ATTRS if attrs is None else attrs))
    return path


def run(argv: list[str], out: Path) -> int:
    """``python preprocess.py amazon ARGV --out OUT`` in this process -> exit code (errors print one line)."""
    return preprocess.main(["amazon", *argv, "--out", str(out)])


def decoder(reader: StoreReader, vocab: str) -> np.ndarray:
    """id -> raw value string (OOV for 0, None for missing 1), as an object array to index with ids."""
    return np.array([OOV, None] + reader.vocabulary(vocab)["values"], dtype=object)


def decoded_rows(store: Path) -> list[dict]:
    """Every row of the store, its ids turned back into raw values through the kept vocabularies."""
    reader = StoreReader(store)
    slices = reader.schema.seq_slices
    users, items, cates, attrs = (decoder(reader, v) for v in ("user", "item", "cate", "attr"))
    rows = []
    for split in SPLITS:
        r = reader.read_split(split)
        for sparse, seq, lens, label in zip(r["sparse"], r["seq"], r["seq_len"], r["label"]):
            fields = {}
            for (name, s), n, table in zip(slices.items(), lens, (attrs, items, cates)):
                assert not seq[s][n:].any(), f"{name}: padding past the length must be 0"
                fields[name] = tuple(table[seq[s][:n]])
            rows.append({"split": split, "user": users[sparse[0]], "item": items[sparse[1]], "cate": cates[sparse[2]],
                         "label": int(label[0]), **fields})
    return rows


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    out = tmp_path / "store"
    assert run(["--input", str(write_tiny(tmp_path)), "--max-len", "2"], out) == 0
    return out


def test_tiny_protocol(tiny: Path) -> None:
    reader = StoreReader(tiny)
    schema = reader.schema
    assert schema.sparse_fields == ("user_id", "item_id", "cate_id") and schema.user_field == "user_id"
    assert [(s.name, s.vocab, s.max_len) for s in schema.sequence_fields] == [
        ("item_attrs", "attr", 4), ("hist_item_id", "item", 2), ("hist_cate_id", "cate", 2)]
    assert schema.histories() == [("item_id", "hist_item_id"), ("cate_id", "hist_cate_id")]
    assert schema.labels == ("click",) and schema.task_types == ("binary",)
    rows = decoded_rows(tiny)
    items = set(reader.vocabulary("item")["values"])

    # Vocabularies are fit on train events: the reviews train rows see and the train negatives.
    visible = {str(i) for b in TINY_USERS.values() if len(b) >= 4 for i in b[:len(b) - 2]}
    train_negatives = {r["item"] for r in rows if r["split"] == "train" and r["label"] == 0}
    assert items == visible | train_negatives
    assert reader.vocabulary("user")["values"] == ["1", "2"]  # user 5 has no train target: OOV
    assert all(OOV not in (r["item"], *r["hist_item_id"]) for r in rows if r["split"] == "train")

    events = visible | train_negatives
    cates = set(reader.vocabulary("cate")["values"])
    attrs = set(reader.vocabulary("attr")["values"])
    assert cates == {str(TINY_ATTRS[i][-1]) for i in events if i in TINY_ATTRS}
    assert attrs == {str(a) for i in events for a in TINY_ATTRS.get(i, [])}

    def known(item: int) -> str:
        return str(item) if str(item) in items else OOV

    def cate(item: int) -> str | None:
        values = TINY_ATTRS.get(str(item), [])
        if not values:
            return None  # missing
        return str(values[-1]) if str(values[-1]) in cates else OOV  # the main category is the last attribute

    expected, raw_user = [], {}
    key = ("split", "user", "hist_item_id")
    for user, reviews in TINY_USERS.items():
        n = len(reviews)
        for k in range(1, n):
            hist = reviews[:k][-2:]  # --max-len 2 keeps the latest two, oldest first
            expected.append({"split": "test" if k == n - 1 else "valid" if k == n - 2 else "train",
                             "user": str(user) if n >= 4 else OOV, "item": known(reviews[k]),
                             "cate": cate(reviews[k]), "label": 1,
                             "item_attrs": tuple(str(a) if str(a) in attrs else OOV
                                                 for a in TINY_ATTRS.get(str(reviews[k]), [])),
                             "hist_item_id": tuple(known(i) for i in hist),
                             "hist_cate_id": tuple(cate(i) for i in hist)})
            raw_user[tuple(expected[-1][k] for k in key)] = user
    positives = [r for r in rows if r["label"] == 1]
    assert sorted(map(repr, positives)) == sorted(map(repr, expected))
    # One negative per target, in the same split with the same history, of an item its user never reviewed.
    negatives = [r for r in rows if r["label"] == 0]
    assert sorted(tuple(r[k] for k in key) for r in negatives) == sorted(tuple(r[k] for k in key) for r in positives)
    for r in negatives:
        reviewed = {str(i) for i in TINY_USERS[raw_user[tuple(r[k] for k in key)]]}
        assert r["item"] not in reviewed and r["item"] in {str(i) for i in range(10, 19)} | {OOV}
    assert reader.meta["stats"]["targets"] == {"train": 4, "valid": 3, "test": 3}
    assert {s: reader.num_rows(s) for s in SPLITS} == {"train": 8, "valid": 6, "test": 6}


def test_tiny_vocabularies_are_shared_and_kept(tiny: Path) -> None:
    reader = StoreReader(tiny)
    item_values = reader.vocabulary("item")["values"]
    assert item_values == sorted(item_values)  # ids 2.. in sorted order of the decimal strings
    train = reader.read_split("train")
    s = reader.schema.seq_slices
    # A history id is the item vocabulary's id: the id of item X is the same in item_id and hist_item_id.
    first = train["seq"][:, s["hist_item_id"]][:, 0]
    assert set(first.tolist()) <= {item_values.index(v) + 2 for v in item_values}
    cate_of = {}
    for i, c in zip(train["sparse"][:, 1], train["sparse"][:, 2]):
        cate_of.setdefault(int(i), int(c))
        assert cate_of[int(i)] == int(c)
    for h_item, h_cate in zip(train["seq"][:, s["hist_item_id"]].ravel(), train["seq"][:, s["hist_cate_id"]].ravel()):
        if int(h_item) in cate_of:
            assert cate_of[int(h_item)] == int(h_cate)
    assert sorted(reader.vocabulary("attr")["values"]) == reader.vocabulary("attr")["values"]
    stats = reader.meta["stats"]
    assert stats["skipped"] == {"bad id": 1, "repeated user": 1, "short user": 1}
    assert stats["skipped_lines"] == {"bad id": [4], "repeated user": [5], "short user": [3]}
    assert stats["items_without_attributes"] == 1  # item 18
    assert reader.meta["options"]["min_count"] == 1


def test_max_attrs_cuts_and_counts(tmp_path: Path) -> None:
    meta = preprocess_amazon(write_tiny(tmp_path), tmp_path / "Tiny_item2attributes.json", tmp_path / "s", max_attrs=3)
    assert meta["schema"]["sequence_fields"][0]["max_len"] == 3
    assert meta["stats"]["items_with_attributes_cut"] == 1  # item 14 has 4


def test_same_input_same_bytes_whatever_the_hash_seed(tmp_path: Path) -> None:
    path = write_tiny(tmp_path)
    attrs = tmp_path / "Tiny_item2attributes.json"
    preprocess_amazon(path, attrs, tmp_path / "a")
    preprocess_amazon(path, attrs, tmp_path / "b")
    data = (tmp_path / "a" / "data.mdb").read_bytes()
    assert (tmp_path / "b" / "data.mdb").read_bytes() == data
    for seed in ("0", "4242"):
        code = (f"from dataset.amazon import preprocess_amazon; "
                f"preprocess_amazon({str(path)!r}, {str(attrs)!r}, {str(tmp_path / seed)!r})")
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        assert (tmp_path / seed / "data.mdb").read_bytes() == data
    preprocess_amazon(path, attrs, tmp_path / "c", seed=7)  # another seed: other negatives and order
    assert (tmp_path / "c" / "data.mdb").read_bytes() != data


def test_strict_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_tiny(tmp_path)
    assert run(["--input", str(path), "--strict"], tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert f"{path} line 4: a field is not a non-negative integer id" in err and "'4 x 5'" in err
    assert not (tmp_path / "s").exists()
    write_tiny(tmp_path, TINY.replace("4 x 5\n", ""))
    assert run(["--input", str(path), "--strict"], tmp_path / "s") == 2
    assert "line 4: the user already has a line above" in capsys.readouterr().err
    write_tiny(tmp_path, TINY.replace("4 x 5\n", "").replace("2 1 2 3\n", ""))
    assert run(["--input", str(path), "--strict"], tmp_path / "s") == 0  # a short user is not a bad line
    assert "skipped: 1 short user (fewer than 3 reviews; line 3)" in capsys.readouterr().out


def test_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no data/raw/amazon/Beauty.txt here
    assert run([], tmp_path / "s") == 2
    assert "pass --input ../shared/data/amazon/Beauty.txt" in capsys.readouterr().err
    path = write_tiny(tmp_path)
    assert run(["--input", str(path), "--split", "8,1,1"], tmp_path / "s") == 2
    assert "--split does not apply to amazon" in capsys.readouterr().err
    assert run(["--input", str(path), "--attributes", str(tmp_path / "none.json")], tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert "attributes file" in err and "--attributes" in err
    (tmp_path / "bad.json").write_text('{"10": ["a"]}')
    assert run(["--input", str(path), "--attributes", str(tmp_path / "bad.json")], tmp_path / "s") == 2
    assert "entry '10'" in capsys.readouterr().err
    write_tiny(tmp_path, "1 10 11\n2 x\n")
    assert run(["--input", str(path)], tmp_path / "s") == 2
    assert "no user with at least 3 reviews" in capsys.readouterr().err
    write_tiny(tmp_path, "1 10 11 12\n2 10 11 12 13\n")  # user 2 reviewed every item: no negative exists
    with pytest.raises(InputError, match="user 2 reviewed every one of the 4 items"):
        preprocess_amazon(path, tmp_path / "Tiny_item2attributes.json", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_min_count_default_is_per_dataset() -> None:
    parser = preprocess.build_parser()
    assert parser.parse_args(["amazon"]).min_count == 1
    assert parser.parse_args(["criteo"]).min_count == 10
    assert parser.parse_args(["census"]).split == "8,1,1"


# ------------------------------------------------------------------------------------------- real Beauty


@pytest.fixture(scope="module")
def beauty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("beauty") / "store"
    preprocess_amazon(BEAUTY, BEAUTY_ATTRS, out)
    return out


def test_beauty_end_to_end(beauty: Path) -> None:
    lists = {int(f[0]): [int(i) for i in f[1:]] for f in (line.split() for line in BEAUTY.read_text().splitlines())}
    assert len(lists) == 22_363 and sum(map(len, lists.values())) == 198_502
    reader = StoreReader(beauty)
    rows = {s: reader.num_rows(s) for s in SPLITS}
    targets = reader.meta["stats"]["targets"]
    print(f"\nBeauty: rows {rows}, targets {targets}, vocabularies {reader.schema.vocabs}")
    assert targets == {"train": sum(len(b) - 3 for b in lists.values()), "valid": 22_363, "test": 22_363}
    assert rows == {s: 2 * t for s, t in targets.items()} == {"train": 262_826, "valid": 44_726, "test": 44_726}
    assert reader.schema.vocabs == {"user": 22_365, "item": 12_103, "cate": 197, "attr": 639}
    assert [s.max_len for s in reader.schema.sequence_fields] == [6, 50, 50]

    users = np.array(reader.vocabulary("user")["values"], dtype=np.int64)
    items = np.array(reader.vocabulary("item")["values"], dtype=np.int64)
    test = reader.read_split("test")
    hist = test["seq"][:, reader.schema.seq_slices["hist_item_id"]]
    for row in np.flatnonzero(test["label"][:, 0] == 1)[:2000]:  # the last review, after the latest 50 before it
        reviews = lists[int(users[test["sparse"][row, 0] - 2])]
        assert items[test["sparse"][row, 1] - 2] == reviews[-1]
        n = test["seq_len"][row, 1]
        assert n == min(50, len(reviews) - 1) and (items[hist[row, :n] - 2] == reviews[:-1][-50:]).all()
    # Every negative, in every split, is an item its user never reviewed.
    reviewed = {(u, i) for u, b in lists.items() for i in b}
    for split in SPLITS:
        r = reader.read_split(split)
        neg = r["label"][:, 0] == 0
        assert neg.sum() == len(neg) // 2
        pairs = zip(users[r["sparse"][neg, 0] - 2].tolist(), items[r["sparse"][neg, 1] - 2].tolist())
        assert not any(p in reviewed for p in pairs)


def test_beauty_loads_in_batches_with_sequences(beauty: Path) -> None:
    loader = make_loader(beauty, "train", 512, train=True, num_workers=0)
    batch = next(iter(loader))
    assert batch["seq"].shape == (512, 106) and batch["seq_len"].shape == (512, 3)
    assert batch["sparse"].shape == (512, 3) and batch["label"].shape == (512, 1)
    assert int(batch["seq_len"][:, 1].min()) >= 1 and int(batch["seq_len"][:, 1].max()) <= 50
    assert (batch["seq_len"][:, 1] == batch["seq_len"][:, 2]).all()
