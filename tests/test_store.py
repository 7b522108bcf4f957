"""The store contract: chunk layout, metadata, atomic writes."""
from __future__ import annotations

import json
import os
import pickle

import lmdb
import numpy as np
import pytest

from dataset import store
from dataset.schema import Schema, SequenceField
from dataset.store import (META_KEY, StoreCorruptError, StoreExistsError, StoreReader, StoreWriter, chunk_key,
                           encode_chunk)

SCHEMA = Schema(("C1", "C2", "C3"), (5, 6, 7), ("I1", "I2"), ("click", "conversion"))


def core(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rows["sparse"], rows["dense"], rows["label"]


def random_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, v, n) for v in SCHEMA.vocab_sizes], axis=1).astype(np.int32)
    return sparse, rng.random((n, 2), dtype=np.float32), rng.integers(0, 2, (n, 2)).astype(np.float32)


def test_round_trip_chunks_and_meta(tmp_path):
    rows = random_rows(1000)
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", chunk_size=128) as w:
        for start in range(0, 700, 97):  # uneven appends must not change the stored rows
            end = min(start + 97, 700)
            w.add("train", *(a[start:end] for a in rows))
        w.add("test", *(a[700:] for a in rows))
        w.meta["options"] = {"min_count": 1}
    r = StoreReader(tmp_path / "s")
    assert r.schema == SCHEMA
    assert r.meta["splits"] == {"train": {"rows": 700, "chunks": 6}, "valid": {"rows": 0, "chunks": 0},
                                "test": {"rows": 300, "chunks": 3}}
    assert r.meta["options"] == {"min_count": 1} and r.meta["chunk_size"] == 128
    for split, sl in (("train", slice(0, 700)), ("test", slice(700, 1000))):
        for got, want in zip(core(r.read_split(split)), rows):
            np.testing.assert_array_equal(got, want[sl])
    assert [len(r.read_chunk("train", i)["sparse"]) for i in range(6)] == [128] * 5 + [60]


def test_data_file_holds_only_the_pages_in_use(tmp_path):
    """The 1 TB map size is address space only: the file holds the stored pages and little more."""
    rows = random_rows(20_000)
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", chunk_size=1000) as w:
        w.add("train", *rows)
    size = (tmp_path / "s" / "data.mdb").stat().st_size
    payload = sum(a.nbytes for a in rows)  # int32 and float32, as stored
    assert payload < size < payload * 1.2 + (1 << 20)
    for got, want in zip(core(StoreReader(tmp_path / "s").read_split("train")), rows):
        np.testing.assert_array_equal(got, want)


def test_readers_pickle_and_share_one_handle(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("train", *random_rows(10))
    r = StoreReader(tmp_path / "s")
    assert str((tmp_path / "s").resolve()) not in store._ENVS  # reading the metadata leaves nothing open
    r.read_chunk("train", 0)
    clone = pickle.loads(pickle.dumps(r))  # a second reader of the same store in the same process
    np.testing.assert_array_equal(clone.read_chunk("train", 0)["sparse"], r.read_chunk("train", 0)["sparse"])
    assert StoreReader(tmp_path / "s").num_rows("train") == 10


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", chunk_size=4) as w:
            w.add("train", *random_rows(10))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_store_without_meta_is_rejected(tmp_path):
    env = lmdb.open(str(tmp_path / "s"))
    with env.begin(write=True) as txn:
        txn.put(chunk_key("train", 0), b"x" * 40)
    env.close()
    with pytest.raises(ValueError, match="not a complete store"):
        StoreReader(tmp_path / "s")


def test_missing_store_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocess.py"):
        StoreReader(tmp_path / "nope")


def test_overwrite_is_explicit_and_atomic(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("train", *random_rows(10))
    with pytest.raises(StoreExistsError, match="--overwrite"):
        StoreWriter(tmp_path / "s", SCHEMA, dataset="toy")
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old store intact
        with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", overwrite=True) as w:
            w.add("train", *random_rows(3))
            raise RuntimeError("killed")
    old = StoreReader(tmp_path / "s")
    assert old.num_rows("train") == 10 and len(old.read_chunk("train", 0)["sparse"]) == 10
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", overwrite=True) as w:
        w.add("train", *random_rows(3))
    new = StoreReader(tmp_path / "s")  # reads the new store, not a stale handle on the replaced one
    assert new.num_rows("train") == 3 and len(new.read_chunk("train", 0)["sparse"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_meta_is_json(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("valid", *random_rows(5))
    env = lmdb.open(str(tmp_path / "s"), readonly=True, lock=False)
    with env.begin() as txn:
        meta = json.loads(txn.get(META_KEY))
    env.close()
    assert meta["format_version"] == 2 and meta["dataset"] == "toy" and meta["schema"] == SCHEMA.to_dict()


def test_read_split_of_an_empty_split_has_the_schema_widths(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("train", *random_rows(5))
    sparse, dense, label = core(StoreReader(tmp_path / "s").read_split("valid"))
    assert (sparse.shape, dense.shape, label.shape) == ((0, 3), (0, 2), (0, 2))
    assert (sparse.dtype, dense.dtype, label.dtype) == (np.int32, np.float32, np.float32)


# -- format 2: sequence blocks, checksums, id bounds, format 1 compatibility ---------------------------------

SEQ_SCHEMA = Schema(("user", "item"), (4, 9), (), ("click", "rating"), task_types=("binary", "regression"),
                    sequence_fields=(SequenceField("hist_item", "item", 9, 4),
                                     SequenceField("tags", "tags", 5, 2, weighted=True)))


def seq_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"sparse": np.stack([rng.integers(0, 4, n), rng.integers(0, 9, n)], axis=1),
            "dense": np.zeros((n, 0), np.float32), "label": rng.random((n, 2), dtype=np.float32),
            "seq": np.concatenate([rng.integers(0, 9, (n, 4)), rng.integers(0, 5, (n, 2))], axis=1),
            "seq_len": np.stack([rng.integers(0, 5, n), rng.integers(0, 3, n)], axis=1),
            "seq_weight": rng.random((n, 2), dtype=np.float32)}


def test_sequence_chunks_round_trip_with_canonical_padding(tmp_path):
    rows = seq_rows(300)
    with StoreWriter(tmp_path / "s", SEQ_SCHEMA, dataset="toy", chunk_size=64) as w:
        w.add("train", rows["sparse"], rows["dense"], rows["label"], seq=rows["seq"], seq_len=rows["seq_len"],
              seq_weight=rows["seq_weight"])
    r = StoreReader(tmp_path / "s")
    assert r.schema == SEQ_SCHEMA and r.schema.task_types == ("binary", "regression")
    got = r.read_split("train")
    for k in ("sparse", "label", "seq_len", "seq_weight"):
        np.testing.assert_array_equal(got[k], rows[k])
    for row in range(300):  # valid elements kept, padding stored as 0
        for s, cols in enumerate((slice(0, 4), slice(4, 6))):
            n = rows["seq_len"][row, s]
            want = rows["seq"][row, cols].copy()
            want[n:] = 0
            np.testing.assert_array_equal(got["seq"][row, cols], want)


def test_writer_refuses_missing_sequences_and_bad_lengths(tmp_path):
    rows = seq_rows(5)
    with StoreWriter(tmp_path / "s", SEQ_SCHEMA, dataset="toy") as w:
        with pytest.raises(ValueError, match="pass seq"):
            w.add("train", rows["sparse"], rows["dense"], rows["label"])
        with pytest.raises(ValueError, match="0..max_len"):
            w.add("train", rows["sparse"], rows["dense"], rows["label"], seq=rows["seq"],
                  seq_len=rows["seq_len"] + 5, seq_weight=rows["seq_weight"])
        w.add("train", rows["sparse"], rows["dense"], rows["label"], seq=rows["seq"], seq_len=rows["seq_len"],
              seq_weight=rows["seq_weight"])


def damage(path, chunk: dict, schema: Schema, new: bytes) -> None:
    """Overwrite bytes in the middle of ``chunk``'s value inside data.mdb (found by its exact bytes)."""
    data = bytearray((path / "data.mdb").read_bytes())
    value = bytes(encode_chunk(chunk, schema))
    at = data.find(value)
    assert at > 0
    mid = at + len(value) // 2
    data[mid:mid + len(new)] = new
    (path / "data.mdb").write_bytes(bytes(data))


@pytest.mark.parametrize("junk", [b"\0" * 64, bytes(range(7, 71))], ids=["zeros", "random"])
def test_overwritten_bytes_are_reported_with_the_chunk(tmp_path, junk):
    rows = random_rows(600)
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", chunk_size=128) as w:
        w.add("train", *rows)
    r = StoreReader(tmp_path / "s")
    damage(tmp_path / "s", r.read_chunk("train", 3), SCHEMA, junk)
    r = StoreReader(tmp_path / "s")
    for i in (0, 1, 2, 4):
        r.read_chunk("train", i)
    with pytest.raises(StoreCorruptError, match=r"store .*s is corrupt at chunk train/00000003 .*re-run preprocess.py"):
        r.read_chunk("train", 3)
    from dataset.loader import make_loader  # through DataLoader workers too
    with pytest.raises(StoreCorruptError, match="train/00000003"):
        list(make_loader(tmp_path / "s", "train", 64, train=False, num_workers=2))


def test_ids_outside_the_vocabulary_are_corruption(tmp_path):
    """A chunk whose checksum matches but whose ids exceed the vocabulary (a writer bug, or bytes damaged
    before the checksum was taken) fails where it is read, not as an IndexError inside a model."""
    sparse, dense, label = random_rows(10)
    sparse[4, 2] = 7  # vocab size of C3 is 7
    bad = Schema(("C1", "C2", "C3"), (5, 6, 8), ("I1", "I2"), ("click", "conversion"))
    with StoreWriter(tmp_path / "s", bad, dataset="toy") as w:
        w.add("train", sparse, dense, label)
    env = lmdb.open(str(tmp_path / "s"))
    with env.begin(write=True) as txn:  # the metadata now claims the smaller vocabulary
        meta = json.loads(txn.get(META_KEY))
        meta["schema"] = SCHEMA.to_dict()
        txn.put(META_KEY, json.dumps(meta).encode())
    env.close()
    with pytest.raises(StoreCorruptError, match="sparse column 2 holds a value outside 0..6"):
        StoreReader(tmp_path / "s").read_chunk("train", 0)


def test_truncated_file_is_corruption_not_a_bus_error(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", chunk_size=128) as w:
        w.add("train", *random_rows(5000))
    data = tmp_path / "s" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(StoreCorruptError, match="truncated.*re-run preprocess.py"):
        StoreReader(tmp_path / "s")
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", overwrite=True) as w:  # and re-running replaces it
        w.add("train", *random_rows(5))
    assert StoreReader(tmp_path / "s").num_rows("train") == 5


def test_format_1_stores_still_load(tmp_path):
    """A store written before sequences and checksums (format 1: no chunk header) reads as all-binary."""
    sparse, dense, label = random_rows(20)
    env = lmdb.open(str(tmp_path / "s"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(chunk_key("train", 0), sparse.astype(np.int32).tobytes() + dense.tobytes() + label.tobytes())
        txn.put(META_KEY, json.dumps({
            "format_version": 1, "dataset": "old", "chunk_size": 8192, "options": {}, "stats": {},
            "schema": {"sparse_fields": ["C1", "C2", "C3"], "vocab_sizes": [5, 6, 7], "dense_fields": ["I1", "I2"],
                       "labels": ["click", "conversion"]},
            "splits": {"train": {"rows": 20, "chunks": 1}, "valid": {"rows": 0, "chunks": 0},
                       "test": {"rows": 0, "chunks": 0}}}).encode())
    env.close()
    r = StoreReader(tmp_path / "s")
    assert r.schema == SCHEMA and r.schema.task_types == ("binary", "binary") and r.schema.num_sequences == 0
    for got, want in zip(core(r.read_chunk("train", 0)), (sparse, dense, label)):
        np.testing.assert_array_equal(got, want)


def test_vocabularies_are_kept_with_the_store(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("train", *random_rows(5))
        w.put_vocabulary("C1", ["a", "b", "c"])
        w.put_vocabulary("C2", [], {"hash_buckets": 4})
    r = StoreReader(tmp_path / "s")
    assert r.vocabulary("C1") == {"values": ["a", "b", "c"]}
    assert r.vocabulary("C2") == {"values": [], "hash_buckets": 4}
    with pytest.raises(KeyError, match="no vocabulary 'C3'"):
        r.vocabulary("C3")
