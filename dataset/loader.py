"""Batches from a store: a chunk-level IterableDataset, DDP sharding, exact mid-epoch resume.

The unit of reading is a whole LMDB chunk (thousands of rows per ``get``), never a row, and every
batch is cut out of contiguous numpy arrays, so there is no per-row Python work anywhere.

How one epoch of one rank is laid out (everything below is computed from the store's metadata
alone, so the main process knows every count without reading a chunk):

1. **Chunks -> ranks.** ``train=True``: the chunk order is a permutation seeded by ``(seed, epoch)``,
   identical on every rank, and rank ``r`` takes ``order[r::world_size]`` (disjoint sets of chunks).
   ``train=False``: rank ``r`` takes chunks ``r, r + world_size, ...`` in index order.
2. **Groups.** A rank's chunks are cut into groups of ``shuffle_chunks`` consecutive chunks (one chunk
   per group when ``train=False``). In training the rows of a group are concatenated and permuted
   with a seed of ``(seed, epoch, rank, group)``: a shuffle buffer of ``shuffle_chunks`` chunks.
3. **Streams.** Group ``g`` goes to stream ``g % S`` (``S = max(num_workers, 1)``). A stream's rows are
   its groups' rows back to back, cut into batches of ``batch_size`` rows; only its last batch can be
   partial. Each DataLoader worker produces one stream, so no chunk is decoded twice.
4. **Interleave.** The DataLoader asks its workers for batches round-robin and drops a worker once it
   is exhausted, so the rank's batch stream is stream ``w``'s ``j``-th batch for ``(j, w)`` in
   lexicographic order. That order is what :func:`interleave_prefix` computes.
5. **Equal batch counts under DDP (train only).** Ranks hold different numbers of rows (chunk counts
   differ by one, the last chunk is short), but every rank must run the same number of steps or DDP
   hangs. Every rank computes every rank's batch count, and all yield the minimum, ``M``: the first
   ``M`` batches of their stream. The surplus batches are dropped: fewer rows than two chunks plus one
   batch per stream, per rank and epoch (at most 0.3% of Criteo on 4 GPUs at the defaults), and
   different rows each epoch since the chunk order changes. With ``world_size=1`` nothing is dropped.
   Evaluation (``train=False``) never drops or pads: every row is yielded exactly once across ranks,
   and ranks may yield different batch counts.
6. **Resume.** ``set_epoch(e, skip_batches=k)`` makes the next iteration yield batches ``k..`` of
   epoch ``e``. Each stream skips its share of the first ``k`` batches (whole groups without reading
   them, then a row offset into one group), and the streams are rotated over the workers so that the
   DataLoader's round-robin, which always restarts at worker 0, continues where the epoch stopped.

Persistent workers keep their own copy of the dataset, so the epoch and skip reach them through a
small shared-memory tensor written by the main process before each iteration starts and read by a
worker when the DataLoader calls ``iter(dataset)`` in it.

Hand-over: a worker gathers each batch (sparse widened to int64) straight into a slot of a small ring
of shared-memory buffers made before the workers start, and sends only the slot's number; the main
process copies the batch out (into pinned memory when asked) and frees the slot (:class:`_SlotRing`).
This keeps the main process, the one serial stage, near 0.1 s of CPU per million rows.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dataset.schema import Schema
from dataset.store import StoreReader

Arrays = dict[str, np.ndarray]  # a chunk's blocks (Schema.blocks): sparse int32 [n, F], dense f32 [n, D], ...
Block = tuple[Arrays, "np.ndarray | None", int]  # a group's rows, their order (None: as stored), first row
Piece = tuple[Arrays, "np.ndarray | slice", int]  # rows of a block that go into a batch, and their count
Batch = dict[str, torch.Tensor]
Token = tuple[int, int, int, int]  # (worker, batch number in this iteration, ring slot, rows)
_RING_SLOTS = 4  # per worker; the DataLoader keeps prefetch_factor (2) batches in flight per worker


def interleave_prefix(counts: Sequence[int], k: int) -> tuple[list[int], int]:
    """Take the first ``k`` items of a round-robin over streams of ``counts[w]`` items that drops a
    stream once it is exhausted (the order of a DataLoader over an IterableDataset).

    Returns ``(taken, rotation)``: ``taken[w]`` items come from stream ``w``, and the next item after
    the ``k``-th belongs to the round-robin that starts at stream ``rotation``. ``k=0`` -> zeros, 0.
    """
    if not 0 <= k <= sum(counts):
        raise ValueError(f"cannot take {k} items from streams of {list(counts)} items")
    taken = [0] * len(counts)
    rotation = 0
    j = 0
    while k > 0:
        for w, n in enumerate(counts):
            if n > j and k > 0:
                taken[w] += 1
                k -= 1
                rotation = (w + 1) % len(counts)
        j += 1
    return taken, rotation


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: ``streams[w]`` lists ``(group index, chunk ids)`` of stream ``w`` in order,
    ``rows[w]`` is its row count and ``quota[w]`` the number of its batches this epoch yields."""

    streams: list[list[tuple[int, np.ndarray]]]
    rows: list[int]
    quota: list[int]
    batch_size: int

    @property
    def num_batches(self) -> int:
        return sum(self.quota)

    @property
    def num_rows(self) -> int:
        return sum(min(q * self.batch_size, r) for q, r in zip(self.quota, self.rows))


def _batch_count(rows: int, batch_size: int) -> int:
    return -(-rows // batch_size)


class _SlotRing:
    """Shared-memory batch buffers, ``slots`` per worker, reused round-robin: the hand-over from the
    workers to the main process.

    A worker writes batch ``n`` of an iteration into its slot ``n % slots`` and sends only a token
    ``(worker, n, slot, rows)`` through the DataLoader; the main process copies the batch out (into
    pinned memory when asked) and marks it consumed. Sending tensors instead would put every batch in
    a fresh shared-memory file passed by descriptor, whose set-up and page faults cost the main process
    more than building the batch costs a worker. A worker waits before overwriting a slot whose batch
    has not been consumed; ``consumed`` counts per worker are reset at the start of every iteration.
    """

    def __init__(self, workers: int, slots: int, slot_bytes: int) -> None:
        self.slots = slots
        self.buffers = torch.empty(workers, slots, slot_bytes, dtype=torch.uint8).share_memory_()
        self.consumed = torch.zeros(workers, dtype=torch.int64).share_memory_()

    def acquire(self, worker: int, item: int, current: Callable[[], bool]) -> int | None:
        """Worker side: the slot for batch ``item`` once it is free; None if the iteration was abandoned."""
        while int(self.consumed[worker]) <= item - self.slots:
            if not current():
                return None
            time.sleep(1e-4)
        return item % self.slots

    def take(self, token: Token, schema: Schema, pin_memory: bool) -> Batch:
        """Main side: copy a batch out of its slot and free the slot."""
        worker, item, slot, rows = token
        buf = torch.empty(rows * _row_bytes(schema), dtype=torch.uint8, pin_memory=pin_memory)
        # A numpy copy: one thread. Tensor.copy_ would split it over the intra-op OpenMP threads, whose
        # spin-waiting after every batch takes the cores the workers need.
        np.copyto(buf.numpy(), self.buffers[worker, slot, :len(buf)].numpy())
        self.consumed[worker] = item + 1
        return _batch_views(buf, rows, schema)


class ChunkDataset(IterableDataset):
    """Batches ``{"sparse": int64 [B, F], "dense": float32 [B, D], "label": float32 [B, T]}`` of one split
    of a store, for ``DataLoader(batch_size=None)``. See the module docstring for the order, the DDP
    sharding and the resume. Built by :func:`make_loader`.

    In the calling process it yields ready batches; in a DataLoader worker it writes each batch into its
    shared-memory slot and yields the slot's token, which :class:`CTRLoader` turns into the batch.
    """

    def __init__(self, reader: StoreReader, split: str, batch_size: int, *, train: bool, seed: int,
                 rank: int, world_size: int, num_workers: int, shuffle_chunks: int, pin_memory: bool) -> None:
        _check_args(reader, split, batch_size, train, rank, world_size, num_workers, shuffle_chunks)
        self.reader = reader
        self.schema: Schema = reader.schema
        self.split = split
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_streams = max(num_workers, 1)
        self.shuffle_chunks = shuffle_chunks if train else 1
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.chunk_rows = _chunk_rows(reader, split)
        # (epoch, skip_batches, iteration number) of the current iteration, shared with persistent workers.
        self.state = torch.zeros(3, dtype=torch.int64).share_memory_()
        slot_bytes = -(-batch_size * _row_bytes(self.schema) // 8) * 8  # every slot starts 8-byte aligned
        self.ring = _SlotRing(num_workers, _RING_SLOTS, slot_bytes) if num_workers else None

    def start(self, epoch: int, skip_batches: int) -> None:
        """Main process, before an iteration starts (that is, before workers call ``iter`` on their copy)."""
        self.state[0], self.state[1], self.state[2] = epoch, skip_batches, self.state[2] + 1
        if self.ring is not None:
            self.ring.consumed.zero_()  # after the iteration number: a stale worker sees it and stops

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's plan for ``epoch`` (metadata only, no chunk read)."""
        streams, rows = self._streams(epoch, self.rank)
        counts = [_batch_count(r, self.batch_size) for r in rows]
        if self.train:
            target = min(sum(_batch_count(r, self.batch_size) for r in self._streams(epoch, other)[1])
                         for other in range(self.world_size))
            counts = interleave_prefix(counts, target)[0]
        return EpochPlan(streams, rows, counts, self.batch_size)

    def _streams(self, epoch: int, rank: int) -> tuple[list[list[tuple[int, np.ndarray]]], list[int]]:
        n_chunks = len(self.chunk_rows)
        if self.train:
            order = np.random.default_rng([self.seed, epoch]).permutation(n_chunks)[rank::self.world_size]
        else:
            order = np.arange(rank, n_chunks, self.world_size)
        groups = [order[i:i + self.shuffle_chunks] for i in range(0, len(order), self.shuffle_chunks)]
        streams = [list(enumerate(groups))[w::self.num_streams] for w in range(self.num_streams)]
        rows = [int(sum(self.chunk_rows[c].sum() for _, c in s)) for s in streams]
        return streams, rows

    def __iter__(self) -> Iterator[Batch | Token]:
        epoch, skip, iteration = (int(v) for v in self.state)  # read now: a worker's copy of self is stale
        plan = self.plan(epoch)
        start, rotation = interleave_prefix(plan.quota, skip)
        info = get_worker_info()
        worker = 0 if info is None else info.id
        w = (rotation + worker) % self.num_streams
        pieces = islice(_cut(self._blocks(epoch, plan.streams[w], start[w] * self.batch_size), self.batch_size),
                        plan.quota[w] - start[w])
        if info is None:
            return (self._new_batch(p) for p in pieces)
        return self._to_ring(worker, iteration, pieces)

    def _blocks(self, epoch: int, groups: list[tuple[int, np.ndarray]], offset: int) -> Iterator[Block]:
        """The groups of a stream from row ``offset`` on; whole groups before it are skipped unread."""
        for g, chunks in groups:
            n = int(self.chunk_rows[chunks].sum())
            if offset >= n:
                offset -= n
                continue
            arrays = self.reader.read_chunks(self.split, chunks)  # one copy out of the store, verified
            order = np.random.default_rng([self.seed, epoch, self.rank, g]).permutation(n) if self.train else None
            yield arrays, order, offset  # type: ignore[misc]
            offset = 0

    def _new_batch(self, pieces: list[Piece]) -> Batch:
        rows = sum(m for _, _, m in pieces)
        buf = torch.empty(rows * _row_bytes(self.schema), dtype=torch.uint8, pin_memory=self.pin_memory)
        return _fill(_batch_views(buf, rows, self.schema), pieces)

    def _to_ring(self, worker: int, iteration: int, batches: Iterator[list[Piece]]) -> Iterator[Token]:
        assert self.ring is not None
        for item, pieces in enumerate(batches):
            slot = self.ring.acquire(worker, item, lambda: int(self.state[2]) == iteration)
            if slot is None:
                return
            rows = sum(m for _, _, m in pieces)
            _fill(_batch_views(self.ring.buffers[worker, slot], rows, self.schema), pieces)
            yield worker, item, slot, rows


def _cut(blocks: Iterator[Block], batch_size: int) -> Iterator[list[Piece]]:
    """Cut blocks of rows into batches of ``batch_size`` rows (the last may be partial), as lists of
    pieces ``(arrays, rows, count)``: which rows of which block, in order; nothing is copied yet."""
    pending: list[Piece] = []
    pending_rows = 0
    for arrays, order, pos in blocks:
        n = len(arrays["sparse"])
        while pos < n:
            m = min(batch_size - pending_rows, n - pos)
            pending.append((arrays, slice(pos, pos + m) if order is None else order[pos:pos + m], m))
            pending_rows += m
            pos += m
            if pending_rows == batch_size:
                yield pending
                pending, pending_rows = [], 0
    if pending:
        yield pending


def _row_bytes(schema: Schema) -> int:
    return sum(b.width * b.batch_dtype.itemsize for b in schema.blocks() if b.name in schema.batch_keys())


def _batch_views(buf: torch.Tensor, rows: int, schema: Schema) -> Batch:
    """A batch as views of one uint8 buffer, one per key of :meth:`Schema.batch_keys`, back to back,
    the int64 blocks first (sparse [rows, F], and seq [rows, L], seq_len [rows, S] when the store has
    sequences), then the float32 ones (dense [rows, D], label [rows, T], seq_weight [rows, L_weighted])."""
    batch, offset = {}, 0
    keys = schema.batch_keys()
    for b in sorted(schema.blocks(), key=lambda b: -b.batch_dtype.itemsize):  # int64 blocks first: aligned
        if b.name in keys:
            size = rows * b.width * b.batch_dtype.itemsize
            batch[b.name] = buf[offset:offset + size].view(TORCH_DTYPES[b.batch_dtype]).view(rows, b.width)
            offset += size
    return batch


# the torch dtype of each numpy dtype a store or batch block has (dataset/resident.py uses it too)
TORCH_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                np.dtype(np.float32): torch.float32}


def _fill(batch: Batch, pieces: list[Piece]) -> Batch:
    """Gather the rows of ``pieces`` into ``batch`` (ids int32 -> int64 on the way)."""
    out = {k: t.numpy() for k, t in batch.items()}
    pos = 0
    for arrays, rows, m in pieces:
        for k, o in out.items():
            o[pos:pos + m] = arrays[k][rows]
        pos += m
    return batch


def _chunk_rows(reader: StoreReader, split: str) -> np.ndarray:
    """Rows per chunk from the metadata: every chunk is full except the last (StoreWriter's layout)."""
    rows, chunks, size = reader.num_rows(split), reader.num_chunks(split), int(reader.meta["chunk_size"])
    counts = np.full(chunks, size, dtype=np.int64)
    if chunks:
        counts[-1] = rows - size * (chunks - 1)
    if chunks and not 0 < counts[-1] <= size:
        raise ValueError(f"{reader.path}: split {split!r} has {rows} rows in {chunks} chunks of {size}: "
                         f"the metadata is inconsistent; preprocess the store again")
    return counts


def _check_args(reader: StoreReader, split: str, batch_size: int, train: bool, rank: int, world_size: int,
                num_workers: int, shuffle_chunks: int) -> None:
    if split not in reader.meta["splits"]:
        raise ValueError(f"{reader.path} has no split {split!r}; it has {sorted(reader.meta['splits'])}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size} (--batch_size)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    if num_workers < 0 or shuffle_chunks < 1:
        raise ValueError(f"need num_workers >= 0 and shuffle_chunks >= 1, got {num_workers} and {shuffle_chunks}")
    chunks = reader.num_chunks(split)
    if train and chunks < world_size:
        raise ValueError(
            f"split {split!r} of {reader.path} has {chunks} chunks but training runs on {world_size} ranks, "
            f"and every rank needs at least one chunk: preprocess again with a smaller --chunk-size "
            f"(preprocess.py) or use fewer GPUs (--gpu_ids)"
        )


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker gets SIGKILL when the process that started it dies.

    A persistent worker waiting for a free ring slot never looks at its parent, so a training process
    killed with SIGKILL left its workers running as orphans. Linux only; if the parent is already gone
    (it died before the prctl took effect) the worker ends at once."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signal.SIGKILL)


class CTRLoader:
    """A DataLoader over a :class:`ChunkDataset` that knows its epoch.

    ``len(loader)`` is the exact number of batches this rank yields in the current epoch (the one set
    by :meth:`set_epoch`, 0 at first); the iteration right after ``set_epoch(e, skip_batches=k)``
    yields the ``len(loader) - k`` batches that follow the first ``k`` of epoch ``e``. An iteration
    without a new ``set_epoch`` repeats the current epoch from its start.
    """

    def __init__(self, dataset: ChunkDataset, num_workers: int) -> None:
        self.dataset = dataset
        self.schema: Schema = dataset.schema
        self._epoch = 0
        self._skip = 0
        self._plan = dataset.plan(0)
        self._loader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                                  persistent_workers=num_workers > 0, worker_init_fn=_die_with_parent)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch of the next iteration, and how many of its first batches to skip."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        plan = self.dataset.plan(epoch)
        if not 0 <= skip_batches <= plan.num_batches:
            raise ValueError(f"skip_batches={skip_batches} is outside 0..{plan.num_batches}, the batches of "
                             f"epoch {epoch}: the checkpoint does not match this data, batch size or world size")
        self._epoch, self._skip, self._plan = epoch, skip_batches, plan

    @property
    def num_rows(self) -> int:
        """Rows this rank yields in the current epoch (train DDP drops a few, see the module docstring)."""
        return self._plan.num_rows

    def __len__(self) -> int:
        return self._plan.num_batches

    def __iter__(self) -> Iterator[Batch]:
        self.dataset.start(self._epoch, self._skip)
        self._skip = 0
        ring = self.dataset.ring
        if ring is None:
            return iter(self._loader)
        tokens = iter(self._loader)
        return (ring.take(token, self.schema, self.dataset.pin_memory) for token in tokens)


def make_loader(store: str | Path | StoreReader, split: str, batch_size: int, *, train: bool, seed: int = 2018,
                rank: int = 0, world_size: int = 1, num_workers: int = 2, pin_memory: bool = False,
                shuffle_chunks: int = 4) -> CTRLoader:
    """Loader of one split for one rank. Every rank must pass the same arguments except ``rank``.

    Args:
        store: a store directory or an open :class:`StoreReader`.
        train: shuffle (chunk order and a buffer of ``shuffle_chunks`` chunks, reseeded every epoch) and
            give every rank the same batch count; ``False``: fixed order, every row exactly once.
        num_workers: DataLoader worker processes (persistent); 0 reads in the calling process.
        pin_memory: pin batches for fast, asynchronous host-to-GPU copies (ignored without CUDA).
    """
    reader = store if isinstance(store, StoreReader) else StoreReader(os.fspath(store))
    dataset = ChunkDataset(reader, split, batch_size, train=train, seed=seed, rank=rank, world_size=world_size,
                           num_workers=num_workers, shuffle_chunks=shuffle_chunks, pin_memory=pin_memory)
    return CTRLoader(dataset, num_workers)
