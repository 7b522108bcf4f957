"""The spec-driven table reader (dataset/table.py): every column kind, streaming, spilling, bad rows."""
from __future__ import annotations

import gzip
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import ROOT
from dataset.buckets import ShuffleBuckets
from dataset.loader import make_loader
from dataset.raw import InputError
from dataset.store import SPLITS, StoreReader
from dataset.table import preprocess_table
from dataset.table_read import TextBlock, tokenize
from dataset.table_spec import parse_spec
from dataset.vocab import hash_strings

SPEC = """
name = "toy"
user_field = "user"

[format]
separator = ","
missing = ["NA"]

[columns]
row_id = { kind = "categorical", min_count = 1 }
user = { kind = "categorical", min_count = 1 }
item = { kind = "categorical", vocab = "item", min_count = 1 }
clicked = { kind = "categorical", vocab = "item" }
site = { kind = "categorical", hash_buckets = 7 }
price = "numeric"
count = { kind = "numeric", transform = "log1p" }
raw = { kind = "numeric", transform = "none" }
age = { kind = "numeric", transform = "bucketize", buckets = 2 }
genres = { kind = "multi", sep = "|", max_len = 2, min_count = 1 }
tags = { kind = "multi", max_len = 3, weights = true, min_count = 1 }
ts = "drop"
click = { kind = "label", positive = ["yes"], negative = ["no"] }
rating = { kind = "label", task = "regression" }
junk = "drop"

[derived]
hour = { from = "ts", time = "unix", part = "hour", min_count = 1 }
"""
HEADER = "row_id,user,item,clicked,site,price,count,raw,age,genres,tags,ts,click,rating,junk"
ROWS = [  # ts 0 = 1970-01-01 00:00 UTC, 3600 * 5 = 05:00
    "r0,u1,a,b,s1,1,0,-2,10,x|y|z,t1:0.5|t2,0,yes,4.5,q",
    "r1,u1,b,a,s2,2,9,0,20,y,t2:2,18000,no,3,q",
    "r2,u2,a,c,s1,3,,1.5,30,,,18000,yes,1,q",
    "r3,u3,NA,a,s9,,99,,40,z|x,t3|t1:1.5|t2|t4,,no,2,q",
    "r4,u2,c,NA,,5,-3,7,,x||y,t1,3600,yes,5,q",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Path]:
    spec = write(tmp_path / "toy.toml", SPEC)
    data = write(tmp_path / "toy.csv", "\n".join([HEADER, *ROWS]) + "\n")
    return spec, data


def one_row_files(tmp_path: Path, header: str, row: str) -> dict[str, Path]:
    """Valid and test files of one row each (a copy of a train row): every split needs rows, and these leave
    the train file whole in the train split, where the tests read it."""
    return {s: write(tmp_path / f"{s}.csv", f"{header}\n{row}\n") for s in ("valid", "test")}


def build(spec: Path, inputs: dict, out: Path, **kw) -> dict:
    if "split" not in kw:  # every split needs rows: the train file again as valid and test keeps it whole in train
        inputs = {"valid": inputs["train"], "test": inputs["train"], **inputs}
    return preprocess_table(spec, inputs, out, progress=False, **kw)


def by_row_id(store: Path, split: str = "train") -> tuple[StoreReader, dict[str, dict[str, np.ndarray]]]:
    """The stored rows of ``split`` keyed by their raw row_id (field 0 holds it with min_count 1)."""
    reader = StoreReader(store)
    rows = reader.read_split(split)
    values = reader.vocabulary("row_id")["values"]
    out = {}
    for i, rid in enumerate(rows["sparse"][:, 0]):
        out[values[rid - 2]] = {k: v[i] for k, v in rows.items()}
    return reader, out


def test_every_column_kind(toy: tuple[Path, Path], tmp_path: Path) -> None:
    spec, data = toy
    build(spec, {"train": data}, tmp_path / "s")
    reader, rows = by_row_id(tmp_path / "s")
    schema = reader.schema
    assert schema.sparse_fields == ("row_id", "user", "item", "clicked", "site", "age", "hour")
    assert schema.sparse_vocabs == ("row_id", "user", "item", "item", "site", "age", "hour")
    assert schema.dense_fields == ("price", "count", "raw")
    assert schema.labels == ("click", "rating") and schema.task_types == ("binary", "regression")
    assert [(s.name, s.vocab, s.max_len, s.weighted) for s in schema.sequence_fields] == [
        ("genres", "genres", 2, False), ("tags", "tags", 3, True)]
    assert schema.user_field == "user"
    f = {name: j for j, name in enumerate(schema.sparse_fields)}

    # shared vocabulary: "a" has one id in item and clicked; "NA" is missing (1)
    item = {v: i + 2 for i, v in enumerate(reader.vocabulary("item")["values"])}
    assert item == {"a": 2, "b": 3, "c": 4}
    assert rows["r0"]["sparse"][f["item"]] == rows["r1"]["sparse"][f["clicked"]] == item["a"]
    assert rows["r3"]["sparse"][f["item"]] == rows["r4"]["sparse"][f["clicked"]] == 1

    # hashed: the same value gets the same id, the one hash_strings gives (so an unseen value gets one too)
    site = {r: rows[r]["sparse"][f["site"]] for r in rows}
    assert site["r0"] == site["r2"] == hash_strings(np.array(["s1"], object), 7)[0]
    assert site["r3"] == hash_strings(np.array(["s9"], object), 7)[0] and site["r4"] == 1
    assert 2 <= hash_strings(np.array(["never seen"], object), 7)[0] <= 8
    assert reader.vocabulary("site")["hash_buckets"] == 7 and schema.vocab_sizes[f["site"]] == 9

    # numeric: standardize with train mean/std (missing -> 0), log1p of max(x, 0), none, bucketize
    prices = np.array([1, 2, 3, 5.0])
    z = {r: rows[r]["dense"][0] for r in rows}
    assert z["r1"] == pytest.approx((2 - prices.mean()) / prices.std(), rel=1e-6) and z["r3"] == 0
    assert [rows[r]["dense"][1] for r in ("r0", "r1", "r2", "r4")] == pytest.approx([0, math.log(10), 0, 0])
    assert [rows[r]["dense"][2] for r in ("r0", "r2", "r3", "r4")] == pytest.approx([-2, 1.5, 0, 7])
    assert reader.meta["stats"]["dense_transforms"]["age"]["edges"] == [25.0]  # the train median of 10..40
    assert [rows[r]["sparse"][f["age"]] for r in ("r0", "r1", "r2", "r3", "r4")] == [2, 2, 3, 3, 1]

    # multi-value: the first max_len values kept, empty elements dropped, padding 0, weights default 1
    genres = {v: i + 2 for i, v in enumerate(reader.vocabulary("genres")["values"])}
    seq = {r: (rows[r]["seq"][:2].tolist(), rows[r]["seq_len"][0]) for r in rows}
    assert seq["r0"] == ([genres["x"], genres["y"]], 2)  # z truncated
    assert seq["r1"] == ([genres["y"], 0], 1) and seq["r2"] == ([0, 0], 0)
    assert seq["r4"] == ([genres["x"], genres["y"]], 2)  # "x||y": the empty element dropped
    tags = {v: i + 2 for i, v in enumerate(reader.vocabulary("tags")["values"])}
    assert rows["r3"]["seq"][2:].tolist() == [tags["t3"], tags["t1"], tags["t2"]]  # t4 truncated
    assert rows["r3"]["seq_weight"].tolist() == pytest.approx([1, 1.5, 1])
    assert rows["r0"]["seq_weight"].tolist() == pytest.approx([0.5, 1, 0]) and rows["r0"]["seq_len"][1] == 2

    # labels: configured spellings, regression floats; derived hour of a unix time, missing -> 1
    assert {r: tuple(rows[r]["label"]) for r in rows} == {
        "r0": (1, 4.5), "r1": (0, 3), "r2": (1, 1), "r3": (0, 2), "r4": (1, 5)}
    hour = {v: i + 2 for i, v in enumerate(reader.vocabulary("hour")["values"])}
    assert hour == {"0": 2, "1": 3, "5": 4}
    assert [rows[r]["sparse"][f["hour"]] for r in ("r0", "r1", "r3", "r4")] == [2, 4, 1, 3]
    assert reader.meta["options"]["spec"]["name"] == "toy"  # the spec travels with the store

    batch = next(iter(make_loader(tmp_path / "s", "train", 4, train=False, num_workers=0)))
    assert batch["sparse"].shape == (4, 7) and batch["seq"].shape == (4, 5) and batch["seq_weight"].shape == (4, 3)


def test_min_count_fits_on_train_only_and_given_split_files(toy: tuple[Path, Path], tmp_path: Path) -> None:
    spec, data = toy
    valid = write(tmp_path / "valid.csv", HEADER + "\nv0,u9,d,a,s1,1,1,1,1,w,t9,0,no,1,q\n")
    test = write(tmp_path / "test.csv",
                 HEADER + "\nt0,u1,a,b,s1,1,1,1,1,x,t1,0,yes,2,q\nt1,u1,a,b,s1,1,1,1,1,x,t1,0,no,2,q\n")
    meta = build(spec, {"train": data, "valid": valid, "test": test}, tmp_path / "s", split=(0.8, 0.1, 0.1))
    assert {s: meta["splits"][s]["rows"] for s in SPLITS} == {"train": 5, "valid": 1, "test": 2}
    reader = StoreReader(tmp_path / "s")
    assert reader.vocabulary("item")["values"] == ["a", "b", "c"]  # "d" is only in the valid file
    v = reader.read_split("valid")
    assert v["sparse"][0, 1] == 0 and v["sparse"][0, 2] == 0  # user u9 and item d: OOV
    # --min-count applies where a column has none: clicked shares "item", which says 1; user says 1
    build(spec, {"train": data}, tmp_path / "m", min_count=3)
    assert StoreReader(tmp_path / "m").vocabulary("item")["values"] == ["a", "b", "c"]


def test_split_of_one_file_is_seeded_and_complete(toy: tuple[Path, Path], tmp_path: Path) -> None:
    spec, _ = toy
    data = write(tmp_path / "big.csv", "\n".join([HEADER] + [f"r{i},u{i % 7},a,b,s1,1,1,1,1,x,t1,0,yes,1,q"
                                                             for i in range(400)]) + "\n")
    meta = build(spec, {"train": data}, tmp_path / "s", split=(0.8, 0.1, 0.1))
    rows = {s: meta["splits"][s]["rows"] for s in SPLITS}
    assert sum(rows.values()) == 400 and 280 < rows["train"] < 360 and rows["valid"] > 20 and rows["test"] > 20
    ids = np.concatenate([StoreReader(tmp_path / "s").read_split(s)["sparse"][:, 0] for s in SPLITS])
    assert sorted(ids.tolist()) != ids.tolist()  # shuffled
    assert len(set(ids.tolist()) - {0}) == rows["train"]  # row ids outside train are OOV: vocab fit on train


def test_streaming_and_spilling_give_the_same_bytes(toy: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec, _ = toy
    spills = []
    spill = ShuffleBuckets._spill
    monkeypatch.setattr(ShuffleBuckets, "_spill", lambda self: (spills.append(self.directory), spill(self)))
    lines = [HEADER] + [f"r{i},u{i % 13},{'abc'[i % 3]},b,s{i % 5},{i},{i % 9},1,{i % 17},x|y,t1:{i % 4},{i * 3600},"
                        f"{'yes' if i % 3 else 'no'},{i % 5 / 7},q" for i in range(60)]
    data = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    outs = {}
    for name, kw in {"one_block": {"block_bytes": 1 << 30}, "tiny_blocks": {"block_bytes": 1},
                     "spill": {"buffer_bytes": 0}}.items():
        build(spec, {"train": data}, tmp_path / name, split=(0.8, 0.1, 0.1), **kw)
        outs[name] = (tmp_path / name / "data.mdb").read_bytes()
        assert bool(spills) == (name == "spill")
    assert outs["one_block"] == outs["tiny_blocks"] == outs["spill"]
    assert spills[0].name.startswith("spill.tmp-") and not spills[0].exists()
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress(data.read_bytes()))
    build(spec, {"train": gz}, tmp_path / "gz", split=(0.8, 0.1, 0.1))
    for split in SPLITS:  # the same rows (the metadata names the other input file)
        plain = StoreReader(tmp_path / "one_block").read_split(split)
        packed = StoreReader(tmp_path / "gz").read_split(split)
        assert all((plain[k] == packed[k]).all() for k in plain)
    gz.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "gz", "one_block", "spill", "tiny_blocks",
                                                          "toy.csv", "toy.toml"]  # no temporary file left


def test_temporary_files_removed_on_failure(toy: tuple[Path, Path], tmp_path: Path) -> None:
    spec, data = toy
    bad = write(tmp_path / "bad.csv", "\n".join([HEADER, *ROWS, "r9,u1,a,b,s1,1,1,1,1,x,t1,0,maybe,1,q"]) + "\n")
    with pytest.raises(InputError, match="line 7: bad label in 'click'"):
        build(spec, {"train": data, "test": bad}, tmp_path / "s", buffer_bytes=0, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "toy.csv", "toy.toml"]


PROGRAM = ("import sys; sys.path.insert(0, '.'); from dataset.table import preprocess_table; "
           "preprocess_table(sys.argv[1], {s: sys.argv[2] for s in ('train', 'valid', 'test')}, sys.argv[3], progress=False)")


def test_same_bytes_whatever_the_hash_seed(toy: tuple[Path, Path], tmp_path: Path) -> None:
    spec, data = toy
    for seed in ("0", "12345"):
        subprocess.run([sys.executable, "-c", PROGRAM, str(spec), str(data), str(tmp_path / seed)], cwd=ROOT,
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed})
    assert (tmp_path / "0" / "data.mdb").read_bytes() == (tmp_path / "12345" / "data.mdb").read_bytes()


def test_bad_rows_counted_with_line_numbers(toy: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    spec, clean = toy
    good = "r{},u1,a,b,s1,1,1,1,1,x,t1,0,yes,1,q"
    lines = [HEADER] + [good.format(i) for i in range(12)]
    lines[2] = "r1,u1,a,b"  # line 3: 4 columns
    lines[4] = good.format(3).replace(",1,1,1,1,", ",one,1,1,1,")  # line 5: price
    lines[6] = good.format(5).replace("yes", "maybe")  # line 7: label
    lines[8] = good.format(7).replace("t1", "t1:heavy")  # line 9: weight
    lines[10] = good.format(9).replace(",0,yes", ",noon,yes")  # line 11: time
    lines[11] = good.format(10).replace(",1,q", ",,q")  # line 12: a missing regression label
    lines.insert(6, "")  # a blank line is no row (the rows after it move down one line)
    data = write(tmp_path / "bad.csv", "\n".join(lines) + "\n")
    meta = build(spec, {"train": data, "valid": clean, "test": clean}, tmp_path / "s")
    assert meta["stats"]["skipped_by_reason"] == {
        "wrong number of columns (expected 15)": 1, "non-numeric value in 'price'": 1, "bad label in 'click'": 1,
        "bad weight in 'tags'": 1, "bad time in 'ts'": 1, "bad label in 'rating'": 1}
    assert meta["stats"]["skipped_first_lines"]["bad label in 'click'"] == ["bad.csv:8"]
    assert meta["stats"]["skipped_first_lines"]["bad time in 'ts'"] == ["bad.csv:12"]
    assert meta["splits"]["train"]["rows"] == 6

    for fix, message in [(None, "line 3: wrong number of columns (expected 15): 'r1,u1,a,b'"),
                         ("r1,u1,a,b,s1,1,1,1,1,x,t1,0,yes,1,q", "line 5: non-numeric value in 'price'")]:
        if fix:
            lines[2] = fix
            write(data, "\n".join(lines) + "\n")
        assert preprocess.main(["table", "--spec", str(spec), "--input", str(data), "--strict",
                                "--out", str(tmp_path / "strict")]) == 2
        assert f"error: {data} {message}" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_cli_errors_are_one_line(toy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec, data = toy
    typo = write(tmp_path / "typo.toml", SPEC.replace("max_len = 2,", "max_lenn = 2,"))
    other = write(tmp_path / "other.csv", HEADER.replace("junk", "extra") + "\n" + ROWS[0] + "\n")
    for argv, message in [(["--spec", str(typo), "--input", str(data)], "column 'genres': unknown key(s) ['max_lenn']"),
                          (["--spec", str(spec), "--input", str(other)], "columns the spec does not list: ['extra']"),
                          (["--spec", str(spec), "--input", str(tmp_path / "nope.csv")], "does not exist")]:
        assert preprocess.main(["table", *argv, "--out", str(tmp_path / "s")]) == 2
        last = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
        assert last.startswith("error: ") and message in last
    argv = ["table", "--spec", str(spec), "--input", str(data), "--valid-input", str(data), "--test-input", str(data),
            "--out", str(tmp_path / "s")]
    assert preprocess.main(argv) == 0
    assert preprocess.main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_min_count_flag_defaults() -> None:
    """The spec-driven subcommands default --min-count to None (the spec's, else 10) without changing the
    default of the other subcommands, which share the flag's argparse action."""
    parser = preprocess.build_parser()
    args = {name: parser.parse_args([name, *extra]) for name, extra in
            [("table", ["--spec", "s", "--input", "i"]), ("avazu", []), ("criteo", []), ("census", [])]}
    assert [args[n].min_count for n in ("table", "avazu", "criteo", "census")] == [None, None, 10, 10]
    assert parser.parse_args(["avazu", "--min-count", "5"]).min_count == 5


@pytest.mark.parametrize("doc, message", [
    ({"columns": {"a": "categorical"}}, "at least one column must be kind"),
    ({"columns": {"a": "label", "b": {"kind": "multi"}}}, "needs max_len"),
    ({"columns": {"a": "label", "b": {"kind": "categorical", "vocab": "v", "hash_buckets": 3},
                  "c": {"kind": "categorical", "vocab": "v"}}}, "share vocabulary 'v' but not hash_buckets"),
    ({"columns": {"a": "label", "b": "categorical"}, "user_field": "a"}, "must name a categorical field"),
    ({"columns": {"a": "label", "b": "categorical"}, "derived": {"b": {"from": "a", "time": "unix", "part": "hour"}}},
     "field names must be distinct"),
    ({"format": {"header": "maybe"}, "columns": {"a": "label", "b": "categorical"}}, "header must be"),
])
def test_spec_errors(doc: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_spec(doc)


def test_csv_quoting_and_tsv(tmp_path: Path) -> None:
    spec = write(tmp_path / "q.toml", '[format]\nseparator = "\\t"\nquoting = "csv"\nheader = false\n'
                                      '[columns]\nname = { kind = "categorical", min_count = 1 }\n'
                                      'tags = { kind = "multi", max_len = 4, sep = ",", min_count = 1 }\ny = "label"\n')
    data = write(tmp_path / "q.tsv", 'plain\ta,b\t1\r\n"quo\tted"\t"b,c"\t0\r\n"say ""hi"""\t\t1\r\n"odd\tx\t1\r\n')
    clean = write(tmp_path / "ok.tsv", "plain\ta,b\t1\r\n")
    meta = build(spec, {"train": data, "valid": clean, "test": clean}, tmp_path / "s")
    reader = StoreReader(tmp_path / "s")
    assert reader.vocabulary("name")["values"] == ["plain", "quo\tted", 'say "hi"']
    assert reader.vocabulary("tags")["values"] == ["a", "b", "c"]
    assert meta["stats"]["skipped_by_reason"] == {"unbalanced quotes": 1}


def test_tokenizer_lines_and_cells() -> None:
    block = TextBlock.of(b"a,b,c\n\nd,,f\r\ng,h\n\r\ni,j,k", first_line=10)
    rows, bad, n_lines = tokenize(block, 3, ",", "none")
    assert n_lines == 6 and rows.lines.tolist() == [10, 12, 15] and bad["wrong number of columns"].tolist() == [13]
    cells = [[block.text[s:s + n].tobytes() for s, n in zip(rows.starts[c], rows.lens[c])] for c in range(3)]
    assert cells == [[b"a", b"d", b"i"], [b"b", b"", b"j"], [b"c", b"f", b"k"]]


MOVIELENS = """user_id,movie_id,gender,age,occupation,zip,genres,rating
1,1193,F,1,10,48067,Drama,5
1,661,F,1,10,48067,Animation|Children's|Musical,3
1,914,F,1,10,48067,Musical|Romance,3
2,1357,M,56,16,70072,Drama|Romance,5
2,3068,M,56,16,70072,Drama,4
2,1193,M,56,16,70072,Drama,5
3,1196,M,25,15,55117,Action|Adventure|Drama|Sci-Fi|War,4
3,1210,M,25,15,55117,Action|Adventure|Romance|Sci-Fi|War,4
3,2355,M,25,15,55117,Animation|Children's|Comedy,5
4,3468,M,45,7,02460,Drama,5
4,1210,M,45,7,02460,Action|Adventure|Romance|Sci-Fi|War,3
5,2987,M,25,20,55455,Adventure|Animation|Children's|Comedy|Crime|Fantasy|Mystery,4
"""


def test_movielens_spec_end_to_end(tmp_path: Path) -> None:
    data = write(tmp_path / "ratings.csv", MOVIELENS)
    spec = ROOT / "dataset" / "specs" / "movielens.toml"
    out = tmp_path / "ml"
    given = one_row_files(tmp_path, *MOVIELENS.strip().splitlines()[:2])
    assert preprocess.main(["table", "--spec", str(spec), "--input", str(data), "--out", str(out),
                            "--valid-input", str(given["valid"]), "--test-input", str(given["test"])]) == 0
    reader = StoreReader(out)
    schema = reader.schema
    assert schema.sparse_fields == ("user_id", "movie_id", "gender", "age", "occupation", "zip")
    assert schema.labels == ("rating",) and schema.task_types == ("regression",) and schema.user_field == "user_id"
    (genres,) = schema.sequence_fields
    assert (genres.name, genres.vocab, genres.max_len, genres.weighted) == ("genres", "genres", 6, False)
    vocab = reader.vocabulary("genres")["values"]
    assert len(vocab) == 12 and genres.vocab_size == 14  # min_count 1; Mystery is only ever past max_len
    assert "Mystery" not in vocab
    rows = reader.read_split("train")
    assert sorted(rows["label"][:, 0].tolist()) == sorted([5, 3, 3, 5, 4, 5, 4, 4, 5, 5, 3, 4])
    zips = reader.vocabulary("zip")["values"]
    assert "02460" in zips  # categorical text, the leading zero kept
    lengths = sorted(rows["seq_len"][:, 0].tolist())
    assert lengths == sorted([1, 3, 2, 2, 1, 1, 5, 5, 3, 1, 5, 6])  # the 7-genre movie keeps its first 6
    long = int(np.flatnonzero(rows["seq_len"][:, 0] == 6)[0])
    assert [vocab[i - 2] for i in rows["seq"][long]] == ["Adventure", "Animation", "Children's", "Comedy",
                                                         "Crime", "Fantasy"]
    batch = next(iter(make_loader(out, "train", 8, train=True, num_workers=0)))
    assert set(batch) >= {"sparse", "dense", "label", "seq", "seq_len"} and batch["seq"].shape == (8, 6)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_short_and_long_cells_and_encodings_agree(tmp_path: Path, encoding: str) -> None:
    """Cells of at most 8 bytes are counted and encoded as packed codes, longer ones as strings: a value
    gets one id whichever way its block went (one line per block here), in any encoding."""
    spec = write(tmp_path / "e.toml", f'[format]\nencoding = "{encoding}"\n[columns]\n'
                                      'a = { kind = "categorical", vocab = "v", min_count = 1 }\n'
                                      'b = { kind = "categorical", vocab = "v" }\ny = "label"\n')
    long = "a value longer than 8 bytes"
    data = tmp_path / "e.csv"
    data.write_bytes("\n".join(["a,b,y", f"été,{long},1", f"{long},été,0", "x,été,1"]).encode(encoding) + b"\n")
    build(spec, {"train": data}, tmp_path / "s", block_bytes=1)
    reader = StoreReader(tmp_path / "s")
    assert reader.vocabulary("v")["values"] == sorted([long, "x", "été"])
    ids = {v: i + 2 for i, v in enumerate(reader.vocabulary("v")["values"])}
    rows = sorted(map(tuple, reader.read_split("train")["sparse"].tolist()))
    assert rows == sorted([(ids["été"], ids[long]), (ids[long], ids["été"]), (ids["x"], ids["été"])])
