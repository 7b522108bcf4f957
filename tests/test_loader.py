"""dataset/loader.py: batch format, exactly-once epochs, DDP shards, determinism, exact resume, lazy LMDB.

Every row of the test stores carries its id in sparse column 0, so a stream of batches can be checked
row by row against what was written.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import store as store_module
from dataset.loader import CTRLoader, _SlotRing, interleave_prefix, make_loader
from dataset.schema import Schema
from dataset.store import StoreReader, StoreWriter

ROWS, CHUNK, BATCH, GROUP = 2345, 100, 64, 5  # 24 chunks (last one short), batches straddle groups
SCHEMA = Schema(("id", "c7", "c11"), (ROWS, 7, 11), ("d0", "d1"), ("click", "buy"))


def rows_of(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row i: sparse [i, i % 7, i % 11], dense [i / 2, -i], label [i % 2, i % 3 == 0]."""
    i = np.arange(n)
    sparse = np.stack([i, i % 7, i % 11], axis=1).astype(np.int32)
    dense = np.stack([i / 2, -i], axis=1).astype(np.float32)
    label = np.stack([i % 2, i % 3 == 0], axis=1).astype(np.float32)
    return sparse, dense, label


def write_numbered_store(path: Path) -> Path:
    """A store of :func:`rows_of` rows: train rows 0..ROWS-1 in chunks of CHUNK, valid rows 0..249."""
    sparse, dense, label = rows_of(ROWS)
    with StoreWriter(path, SCHEMA, dataset="test", chunk_size=CHUNK) as w:
        w.add("train", sparse, dense, label)
        w.add("valid", sparse[:250], dense[:250], label[:250])
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_numbered_store(tmp_path_factory.mktemp("loader") / "store")


def loader(store: Path, split: str = "train", train: bool = True, **kw) -> CTRLoader:
    kw = {"num_workers": 0, "shuffle_chunks": GROUP, **kw}
    return make_loader(store, split, BATCH, train=train, **kw)


def ids(batches: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [b["sparse"][:, 0].tolist() for b in batches]


def flat(batch_ids: list[list[int]]) -> list[int]:
    return [i for b in batch_ids for i in b]


def epoch(ld: CTRLoader, e: int, skip: int = 0) -> list[list[int]]:
    ld.set_epoch(e, skip)
    return ids(list(ld))


def test_interleave_prefix_is_round_robin_dropping_exhausted_streams() -> None:
    # streams of 3, 1, 2 items: order (0,0) (1,0) (2,0) (0,1) (2,1) (0,2)
    assert interleave_prefix([3, 1, 2], 0) == ([0, 0, 0], 0)
    assert interleave_prefix([3, 1, 2], 2) == ([1, 1, 0], 2)
    assert interleave_prefix([3, 1, 2], 3) == ([1, 1, 1], 0)
    assert interleave_prefix([3, 1, 2], 4) == ([2, 1, 1], 1)
    assert interleave_prefix([3, 1, 2], 5) == ([2, 1, 2], 0)
    assert interleave_prefix([3, 1, 2], 6) == ([3, 1, 2], 1)
    with pytest.raises(ValueError, match="cannot take 7"):
        interleave_prefix([3, 1, 2], 7)


@pytest.mark.parametrize("train,workers", [(True, 0), (False, 0), (True, 2)])
def test_batches_carry_the_stored_rows_with_contract_dtypes(store: Path, train: bool, workers: int) -> None:
    sparse, dense, label = rows_of(ROWS)
    batches = list(loader(store, train=train, num_workers=workers))  # all kept: worker buffers are reused
    for b in batches:
        assert list(b) == ["sparse", "dense", "label"]
        assert (b["sparse"].dtype, b["dense"].dtype, b["label"].dtype) == (torch.int64, torch.float32, torch.float32)
        n = len(b["sparse"])
        assert b["sparse"].shape == (n, 3) and b["dense"].shape == (n, 2) and b["label"].shape == (n, 2)
        i = b["sparse"][:, 0].numpy()
        np.testing.assert_array_equal(b["sparse"].numpy(), sparse[i])
        np.testing.assert_array_equal(b["dense"].numpy(), dense[i])
        np.testing.assert_array_equal(b["label"].numpy(), label[i])
    assert sum(len(b["sparse"]) < BATCH for b in batches) <= max(workers, 1)  # one partial batch per stream at most


def test_store_without_dense_fields_gives_zero_width_dense(tmp_path: Path) -> None:
    schema = Schema(("id",), (50,), (), ("click",))
    with StoreWriter(tmp_path / "s", schema, dataset="test", chunk_size=16) as w:
        w.add("train", np.arange(50, dtype=np.int32)[:, None], np.zeros((50, 0), np.float32),
              np.ones((50, 1), np.float32))
    batches = list(make_loader(tmp_path / "s", "train", 20, train=False, num_workers=0))
    assert [tuple(b["dense"].shape) for b in batches] == [(20, 0), (20, 0), (10, 0)]
    assert flat(ids(batches)) == list(range(50))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("workers", [0, 2])
def test_one_rank_sees_every_row_exactly_once(store: Path, train: bool, workers: int) -> None:
    ld = loader(store, train=train, num_workers=workers)
    batch_ids = epoch(ld, 1)
    assert sorted(flat(batch_ids)) == list(range(ROWS))
    assert len(ld) == len(batch_ids) and ld.num_rows == ROWS
    assert sum(len(b) < BATCH for b in batch_ids) <= max(workers, 1)  # one partial batch per stream at most
    if train:
        assert flat(batch_ids) != sorted(flat(batch_ids))


def test_eval_without_workers_keeps_store_order(store: Path) -> None:
    assert flat(ids(list(loader(store, "valid", train=False)))) == list(range(250))


@pytest.mark.parametrize("world_size,workers", [(2, 0), (3, 0), (2, 2)])
def test_train_shards_are_disjoint_with_equal_batch_counts(store: Path, world_size: int, workers: int) -> None:
    loaders = [loader(store, rank=r, world_size=world_size, num_workers=workers) for r in range(world_size)]
    dropped = []
    for e in (0, 1):
        shards = [epoch(ld, e) for ld in loaders]
        counts = {len(s) for s in shards} | {len(ld) for ld in loaders}
        assert len(counts) == 1, f"ranks yield different batch counts: {counts}"
        seen = [set(flat(s)) for s in shards]
        assert sum(map(len, seen)) == len(set().union(*seen)), "a row went to two ranks"
        assert [len(s) for s in seen] == [ld.num_rows for ld in loaders]
        missing = set(range(ROWS)) - set().union(*seen)
        # the documented drop: fewer than two chunks plus one batch per worker, per rank
        assert len(missing) < world_size * (2 * CHUNK + max(workers, 1) * BATCH)
        dropped.append(missing)
    assert dropped[0] != dropped[1] or not any(dropped)  # the drop moves from epoch to epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_cover_every_row_exactly_once(store: Path, world_size: int) -> None:
    shards = [epoch(loader(store, train=False, rank=r, world_size=world_size), 0) for r in range(world_size)]
    all_ids = [i for s in shards for i in flat(s)]
    assert sorted(all_ids) == list(range(ROWS))
    loaders = [loader(store, train=False, rank=r, world_size=world_size) for r in range(world_size)]
    assert [len(ld) for ld in loaders] == [len(s) for s in shards]
    assert sum(ld.num_rows for ld in loaders) == ROWS


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_is_a_function_of_seed_and_epoch(store: Path, workers: int) -> None:
    ld = loader(store, num_workers=workers)  # persistent workers: the epoch must reach their copies
    first, second, again = epoch(ld, 0), epoch(ld, 1), epoch(ld, 0)
    assert first == again and first != second
    assert sorted(flat(second)) == list(range(ROWS))
    assert epoch(loader(store, num_workers=workers), 1) == second
    assert epoch(loader(store, num_workers=workers, seed=7), 1) != second
    assert epoch(ld, 1) == second and ids(list(ld)) == second  # without a new set_epoch the epoch repeats


@pytest.mark.parametrize("workers,train,world_size", [(0, True, 1), (2, True, 1), (2, True, 2), (2, False, 1)])
def test_skip_batches_resumes_the_epoch_exactly(store: Path, workers: int, train: bool, world_size: int) -> None:
    ld = loader(store, train=train, num_workers=workers, world_size=world_size, rank=world_size - 1)
    full = epoch(ld, 3)
    assert len(ld) == len(full)
    for k in (1, 2, 7, 8, 9, 16, len(full) - 1, len(full)):  # k = 7, 8: group boundary; odd k: rotation
        rest = epoch(ld, 3, skip=k)
        assert full[:k] + rest == full, f"skip_batches={k}"
    assert epoch(ld, 3) == full  # the skip applies to one iteration only


def test_an_abandoned_iteration_does_not_leak_into_the_next(store: Path) -> None:
    ld = loader(store, num_workers=2)
    full = epoch(ld, 2)
    for taken in (1, 9):
        ld.set_epoch(2)
        batches = iter(ld)
        assert ids([next(batches) for _ in range(taken)]) == full[:taken]
        assert epoch(ld, 2) == full
    assert epoch(ld, 2, skip=5) == full[5:]


def test_a_ring_slot_is_reused_only_after_its_batch_was_taken() -> None:
    schema = Schema(("id",), (10,), (), ("click",))  # 12 bytes per row
    ring = _SlotRing(workers=1, slots=2, slot_bytes=3 * 12)
    assert ring.acquire(0, 1, lambda: True) == 1  # batches 0 and 1 fit in the two slots
    assert ring.acquire(0, 2, lambda: False) is None  # slot 0 still holds batch 0, iteration abandoned: give up
    ring.buffers[0, 0, :24].view(torch.int64)[:2] = torch.tensor([7, 8])
    ring.buffers[0, 0, 16:24].view(torch.float32)[:] = torch.tensor([0.0, 1.0])
    threading.Timer(0.05, lambda: ring.take((0, 0, 0, 2), schema, pin_memory=False)).start()
    assert ring.acquire(0, 2, lambda: True) == 0  # waits until batch 0 was taken
    assert int(ring.consumed[0]) == 1
    batch = ring.take((0, 0, 0, 2), schema, pin_memory=False)
    ring.buffers.zero_()  # the taken batch is a copy
    assert batch["sparse"].tolist() == [[7], [8]] and batch["label"].tolist() == [[0.0], [1.0]]


def test_skip_beyond_the_epoch_is_refused(store: Path) -> None:
    ld = loader(store)
    with pytest.raises(ValueError, match="skip_batches=1000 is outside"):
        ld.set_epoch(0, 1000)


def test_bad_arguments_name_the_fix(store: Path) -> None:
    with pytest.raises(ValueError, match="--chunk-size"):
        loader(store, split="valid", world_size=4, rank=0)  # 3 chunks, 4 ranks
    with pytest.raises(ValueError, match="no split 'dev'"):
        loader(store, split="dev")
    with pytest.raises(ValueError, match="rank 2 is outside"):
        loader(store, rank=2, world_size=2)


def test_lmdb_is_opened_only_where_chunks_are_read(store: Path) -> None:
    key = str(store.resolve())
    store_module._evict(store)
    ld = loader(store, num_workers=2)
    assert key not in store_module._ENVS, "building the loader opened LMDB in the parent"
    assert sorted(flat(epoch(ld, 0))) == list(range(ROWS))
    assert key not in store_module._ENVS, "the parent opened LMDB although workers read the chunks"
    list(loader(store, "valid", train=False))  # reading in the parent opens a handle here ...
    assert key in store_module._ENVS
    assert sorted(flat(epoch(loader(store, num_workers=2), 0))) == list(range(ROWS))  # ... workers still open theirs
    reader = StoreReader(store)
    assert make_loader(reader, "valid", BATCH, train=False, num_workers=0).schema == SCHEMA
