"""The LMDB store: one environment per preprocessed dataset, rows kept in chunks.

Layout of an environment (a directory holding ``data.mdb``):

* key ``__meta__``: a JSON record (see :func:`StoreWriter.close`)::

      {"format_version": 1, "dataset": "criteo",
       "schema": {"sparse_fields": [...], "vocab_sizes": [...], "dense_fields": [...], "labels": [...]},
       "splits": {"train": {"rows": 800, "chunks": 1}, "valid": {...}, "test": {...}},
       "chunk_size": 8192, "options": {...preprocessing flags...}, "stats": {...}}

* key ``<split>/<index:08d>``: one chunk of up to ``chunk_size`` rows, three contiguous C-order blocks
  back to back: ``sparse`` int32 [n, F_sparse], ``dense`` float32 [n, F_dense], ``label`` float32 [n, T].
  ``n`` follows from the value's length, so a chunk needs no header.

One ``get`` returns thousands of rows, which is what lets a loader reach millions of rows per second
(one key per row caps it near 150k rows/s). The writer never shuffles: rows must arrive in the order
they should be stored (preprocessing shuffles them once, at write time).

Atomicity: a store is built in ``<path>.tmp-<pid>`` and renamed to ``<path>`` only after the metadata
record, which is written last, has been committed. A killed run leaves only the ``.tmp-`` directory,
which :class:`StoreReader` never opens.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from dataset.schema import Schema

FORMAT_VERSION = 1
META_KEY = b"__meta__"
SPLITS = ("train", "valid", "test")
_MAP_SIZE = 1 << 40  # address space only: LMDB files are sparse and grow with the data


def chunk_key(split: str, index: int) -> bytes:
    return f"{split}/{index:08d}".encode()


def encode_chunk(sparse: np.ndarray, dense: np.ndarray, label: np.ndarray) -> bytearray:
    """Pack one chunk: int32 [n, F] + float32 [n, D] + float32 [n, T] -> one buffer, each block cast and
    copied into place once (LMDB takes any bytes-like value)."""
    blocks = [(np.int32, sparse), (np.float32, dense), (np.float32, label)]
    out = bytearray(4 * sum(a.size for _, a in blocks))
    offset = 0
    for dtype, a in blocks:
        np.frombuffer(out, dtype=dtype, count=a.size, offset=offset).reshape(a.shape)[...] = a
        offset += 4 * a.size
    return out


def decode_chunk(buf: bytes | memoryview, schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unpack one chunk without copying: -> sparse int32 [n, F], dense float32 [n, D], label float32 [n, T]."""
    f, d, t = schema.num_sparse, schema.num_dense, schema.num_tasks
    n = len(buf) // (4 * (f + d + t))
    sparse = np.frombuffer(buf, dtype=np.int32, count=n * f).reshape(n, f)
    dense = np.frombuffer(buf, dtype=np.float32, count=n * d, offset=4 * n * f).reshape(n, d)
    label = np.frombuffer(buf, dtype=np.float32, count=n * t, offset=4 * n * (f + d)).reshape(n, t)
    return sparse, dense, label


class StoreExistsError(FileExistsError):
    pass


class StoreWriter:
    """Write a store atomically, chunk by chunk.

    >>> with StoreWriter("data/criteo", schema, dataset="criteo", chunk_size=8192) as w:
    ...     w.add("train", sparse, dense, label)   # any number of rows, any number of calls
    ...     w.meta["options"] = {...}              # extra metadata, written on close
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: Schema,
        dataset: str,
        chunk_size: int = 8192,
        overwrite: bool = False,
        commit_every: int = 64,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise StoreExistsError(f"store {self.path} already exists; pass --overwrite to replace it")
        self.schema = schema
        self.chunk_size = int(chunk_size)
        self.commit_every = commit_every
        self.meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "dataset": dataset, "options": {}, "stats": {}}
        self._tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(self._tmp), map_size=_MAP_SIZE, subdir=True, sync=False, metasync=False)
        self._txn = self._env.begin(write=True)
        self._pending: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in SPLITS}
        self._pending_rows = {s: 0 for s in SPLITS}
        self._rows = {s: 0 for s in SPLITS}
        self._chunks = {s: 0 for s in SPLITS}
        self._puts = 0

    def add(self, split: str, sparse: np.ndarray, dense: np.ndarray, label: np.ndarray) -> None:
        """Append rows (sparse [n, F], dense [n, D], label [n, T]) to ``split``; full chunks are written."""
        if split not in self._pending:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        n = len(sparse)
        if not (len(dense) == len(label) == n):
            raise ValueError(f"row counts differ: sparse {n}, dense {len(dense)}, label {len(label)}")
        if n == 0:
            return
        self._pending[split].append((sparse, dense.reshape(n, -1), label.reshape(n, -1)))
        self._pending_rows[split] += n
        if self._pending_rows[split] >= self.chunk_size:
            self._write_full_chunks(split)

    def _write_full_chunks(self, split: str, final: bool = False) -> None:
        """Join the pending rows once, write every full chunk (and, if ``final``, the partial rest)."""
        parts = self._pending[split]
        sparse, dense, label = (np.concatenate([p[i] for p in parts]) for i in range(3))
        total, start = len(sparse), 0
        while total - start >= self.chunk_size or (final and start < total):
            end = min(start + self.chunk_size, total)
            self._put(chunk_key(split, self._chunks[split]), encode_chunk(sparse[start:end], dense[start:end],
                                                                          label[start:end]))
            self._chunks[split] += 1
            self._rows[split] += end - start
            start = end
        self._pending[split] = [(sparse[start:], dense[start:], label[start:])] if start < total else []
        self._pending_rows[split] = total - start

    def _put(self, key: bytes, value: bytes | bytearray) -> None:
        self._txn.put(key, value)
        self._puts += 1
        if self._puts % self.commit_every == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)

    def close(self) -> dict[str, Any]:
        """Flush partial chunks, write the metadata record last, and move the store into place."""
        for split in SPLITS:
            if self._pending_rows[split]:
                self._write_full_chunks(split, final=True)
        self.meta.update(
            schema=self.schema.to_dict(),
            chunk_size=self.chunk_size,
            splits={s: {"rows": self._rows[s], "chunks": self._chunks[s]} for s in SPLITS},
        )
        self._txn.put(META_KEY, json.dumps(self.meta, sort_keys=True).encode())
        self._txn.commit()
        self._env.sync(True)
        self._env.close()
        if self.path.exists():  # only reachable with overwrite=True
            _evict(self.path)
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self._tmp, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self._tmp, self.path)
        return self.meta

    def abort(self) -> None:
        try:
            self._txn.abort()
            self._env.close()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}  # resolved path -> (pid, env): one handle per process


def _env(path: Path) -> lmdb.Environment:
    """This process's read-only handle on a store (py-lmdb allows one per environment and process).
    Keyed by pid too, so a forked worker opens its own instead of using its parent's."""
    key = str(path.resolve())
    hit = _ENVS.get(key)
    if hit is None or hit[0] != os.getpid():
        if hit is not None:  # inherited over fork: py-lmdb refuses a second open while this one is registered
            hit[1].close()  # closes the child's copy only; the parent's handle is unaffected
        env = lmdb.open(key, readonly=True, lock=False, readahead=False, subdir=True, max_readers=512)
        _ENVS[key] = (os.getpid(), env)
    return _ENVS[key][1]


def _evict(path: Path) -> None:
    """Drop this process's handle on a store that is about to be replaced."""
    hit = _ENVS.pop(str(path.resolve()), None)
    if hit is not None and hit[0] == os.getpid():
        hit[1].close()


def _read_meta(path: Path) -> bytes | None:
    """The metadata record, read without leaving a handle open in this process (unless one already is)."""
    hit = _ENVS.get(str(path.resolve()))
    if hit is not None and hit[0] == os.getpid():
        with hit[1].begin() as txn:
            return txn.get(META_KEY)
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return txn.get(META_KEY)
    finally:
        env.close()


class StoreReader:
    """Read-only access to a store. Holds no LMDB handle itself: chunks are read through a per-process
    handle opened on first use, so a reader can be pickled into DataLoader workers and no handle is ever
    used across a fork."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise FileNotFoundError(
                f"no store at {self.path}: create it with `python preprocess.py <dataset> --out {self.path}` "
                f"(datasets: criteo, census, aliexpress, aliccp), or pass --data pointing to an existing store"
            )
        raw = _read_meta(self.path)
        if raw is None:
            raise ValueError(f"{self.path} has no metadata record: it is not a complete store; preprocess it again")
        self.meta: dict[str, Any] = json.loads(raw)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.path} has store format {self.meta.get('format_version')}, this code reads {FORMAT_VERSION}; "
                f"preprocess it again"
            )
        self.schema = Schema.from_dict(self.meta["schema"])

    def num_rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    def num_chunks(self, split: str) -> int:
        return int(self.meta["splits"][split]["chunks"])

    def read_split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row of ``split`` in stored order, loaded whole (for inspection, tests and small stores;
        training reads chunk by chunk through dataset/loader.py) -> sparse int32 [n, F], dense float32
        [n, D], label float32 [n, T]."""
        chunks = [self.read_chunk(split, i) for i in range(self.num_chunks(split))]
        if not chunks:
            s = self.schema
            return (np.zeros((0, s.num_sparse), np.int32), np.zeros((0, s.num_dense), np.float32),
                    np.zeros((0, s.num_tasks), np.float32))
        return tuple(np.concatenate([c[k] for c in chunks]) for k in range(3))  # type: ignore[return-value]

    def read_chunk(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> sparse int32 [n, F], dense float32 [n, D], label float32 [n, T] (copies, safe to keep)."""
        with _env(self.path).begin(buffers=True) as txn:
            buf = txn.get(chunk_key(split, index))
            if buf is None:
                raise KeyError(f"{self.path}: chunk {index} of split {split!r} is missing")
            return tuple(a.copy() for a in decode_chunk(buf, self.schema))  # type: ignore[return-value]
