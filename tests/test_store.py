"""The store contract: chunk layout, metadata, atomic writes."""
from __future__ import annotations

import json
import pickle

import lmdb
import numpy as np
import pytest

from dataset import store
from dataset.schema import Schema
from dataset.store import META_KEY, StoreExistsError, StoreReader, StoreWriter, chunk_key

SCHEMA = Schema(("C1", "C2", "C3"), (5, 6, 7), ("I1", "I2"), ("click", "conversion"))


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
        for got, want in zip(r.read_split(split), rows):
            np.testing.assert_array_equal(got, want[sl])
    assert [len(r.read_chunk("train", i)[0]) for i in range(6)] == [128] * 5 + [60]


def test_data_file_holds_only_the_pages_in_use(tmp_path):
    """The 1 TB map size is address space only: the file holds the stored pages and little more."""
    rows = random_rows(20_000)
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", chunk_size=1000) as w:
        w.add("train", *rows)
    size = (tmp_path / "s" / "data.mdb").stat().st_size
    payload = sum(a.nbytes for a in rows)  # int32 and float32, as stored
    assert payload < size < payload * 1.2 + (1 << 20)
    for got, want in zip(StoreReader(tmp_path / "s").read_split("train"), rows):
        np.testing.assert_array_equal(got, want)


def test_readers_pickle_and_share_one_handle(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("train", *random_rows(10))
    r = StoreReader(tmp_path / "s")
    assert str((tmp_path / "s").resolve()) not in store._ENVS  # reading the metadata leaves nothing open
    r.read_chunk("train", 0)
    clone = pickle.loads(pickle.dumps(r))  # a second reader of the same store in the same process
    np.testing.assert_array_equal(clone.read_chunk("train", 0)[0], r.read_chunk("train", 0)[0])
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
    assert old.num_rows("train") == 10 and len(old.read_chunk("train", 0)[0]) == 10
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy", overwrite=True) as w:
        w.add("train", *random_rows(3))
    new = StoreReader(tmp_path / "s")  # reads the new store, not a stale handle on the replaced one
    assert new.num_rows("train") == 3 and len(new.read_chunk("train", 0)[0]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_meta_is_json(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("valid", *random_rows(5))
    env = lmdb.open(str(tmp_path / "s"), readonly=True, lock=False)
    with env.begin() as txn:
        meta = json.loads(txn.get(META_KEY))
    env.close()
    assert meta["format_version"] == 1 and meta["dataset"] == "toy" and meta["schema"] == SCHEMA.to_dict()


def test_read_split_of_an_empty_split_has_the_schema_widths(tmp_path):
    with StoreWriter(tmp_path / "s", SCHEMA, dataset="toy") as w:
        w.add("train", *random_rows(5))
    sparse, dense, label = StoreReader(tmp_path / "s").read_split("valid")
    assert (sparse.shape, dense.shape, label.shape) == ((0, 3), (0, 2), (0, 2))
    assert (sparse.dtype, dense.dtype, label.dtype) == (np.int32, np.float32, np.float32)
