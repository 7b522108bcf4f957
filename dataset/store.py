"""The LMDB store: one environment per preprocessed dataset, rows kept in chunks.

Layout of an environment (a directory holding ``data.mdb``):

* key ``__meta__``: a JSON record (see :func:`StoreWriter.close`)::

      {"format_version": 2, "dataset": "criteo",
       "schema": {...Schema.to_dict(): fields, vocabularies, sequence fields, labels and task types...},
       "splits": {"train": {"rows": 800, "chunks": 1}, "valid": {...}, "test": {...}},
       "chunk_size": 8192, "options": {...preprocessing flags...}, "stats": {...},
       "vocab_checksum": "<sha256 of the kept vocabularies and the options, or null>"}

* key ``<split>/<index:08d>``: one chunk of up to ``chunk_size`` rows: a 24-byte header (row count and the
  :func:`checksum` of the rest), then the blocks of :meth:`Schema.blocks`, contiguous C-order arrays back to back:
  ``sparse`` int32 [n, F], ``dense`` float32 [n, D], ``label`` float32 [n, T], and for stores with sequence
  fields ``seq`` int32 [n, L_total], ``seq_len`` int32 [n, S], ``seq_weight`` float32 [n, L_weighted].
  Format 1 chunks (still readable) had no header and no sequence blocks.

Every chunk is verified where it is read: its checksum (format 2), or its ids against the vocabulary sizes
(format 1, which has none; a format 2 writer refuses such ids, so a matching checksum vouches for them), so
a damaged file is an error naming the chunk, never zeros trained on or an IndexError in a model.

One ``get`` returns thousands of rows, which is what lets a loader reach millions of rows per second
(one key per row caps it near 150k rows/s). The writer never shuffles: rows must arrive in the order
they should be stored (preprocessing shuffles them once, at write time).

Atomicity: a store is built in ``<path>.tmp-<pid>`` and renamed to ``<path>`` only after the metadata
record, which is written last, has been committed. A killed run leaves only the ``.tmp-`` directory,
which :class:`StoreReader` never opens, and the next run on the same path removes. Where a store may be
written, and how it takes its place without replacing anything else, is the last section of this file.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import lmdb
import numpy as np

from dataset.raw import InputError
from dataset.schema import Schema

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1: no chunk header, no sequences, every label binary
META_KEY = b"__meta__"
VOCAB_PREFIX = b"__vocab__/"
SPLITS = ("train", "valid", "test")
_MAP_SIZE = 1 << 40  # address space only: LMDB files are sparse and grow with the data
HEADER = np.dtype([("rows", "<u4"), ("reserved", "<u4"), ("sum", "<u8"), ("weighted_sum", "<u8")])  # format 2

Chunk = dict[str, np.ndarray]  # block name (Schema.blocks) -> [n, width] array


def chunk_key(split: str, index: int) -> bytes:
    return f"{split}/{index:08d}".encode()


class StoreCorruptError(ValueError):
    """A store's bytes do not match what its writer wrote (checksum, size or id range)."""


BLOCK_WORDS = 512  # checksum blocks: 4 KB, LMDB's page size


def checksum(payload: bytes | bytearray | memoryview) -> tuple[int, int]:
    """A Fletcher-style 64-bit checksum of a chunk's bytes (a multiple of 4 long): with ``b_i`` the sum of the
    64-bit words of the i-th 4 KB block (an odd 4-byte tail counts as one more word of the last), the sum of
    the ``b_i`` and the sum of ``i * b_i`` (i = 1, 2, ...), both mod 2^64. Any change of the bytes changes it
    except with probability ~2^-64, a block moved or swapped included.

    One pass over the bytes, at memory speed (about 20 ns per 160-byte Criteo row here), where zlib.crc32
    runs at 2.5 GB/s (about 60 ns per row, a sixth of the loader's whole budget per row)."""
    view = memoryview(payload).cast("B")
    whole = len(view) // 8
    words = np.frombuffer(view, np.uint64, whole)
    full = whole - whole % BLOCK_WORDS
    with np.errstate(over="ignore"):
        blocks = np.append(words[:full].reshape(-1, BLOCK_WORDS).sum(axis=1), words[full:].sum())
        if len(view) % 8:
            blocks[-1] += np.uint64(np.frombuffer(view, np.uint32, 1, 8 * whole)[0])
        weights = np.arange(1, len(blocks) + 1, dtype=np.uint64)
        return int(blocks.sum()), int((blocks * weights).sum())


def encode_chunk(arrays: Chunk, schema: Schema) -> bytearray:
    """Pack one chunk: a 24-byte header (rows, then :func:`checksum` of the rest), then every block of
    :meth:`Schema.blocks` as a C-order ``[n, width]`` array of its store dtype, back to back. Each block is
    cast and copied into place once (LMDB takes any bytes-like value)."""
    blocks = schema.blocks()
    n = len(arrays["sparse"])
    out = bytearray(HEADER.itemsize + sum(n * b.width * b.store_dtype.itemsize for b in blocks))
    offset = HEADER.itemsize
    for b in blocks:
        if b.width:
            np.frombuffer(out, b.store_dtype, n * b.width, offset).reshape(n, b.width)[...] = arrays[b.name]
            offset += n * b.width * b.store_dtype.itemsize
    np.frombuffer(out, HEADER, 1)[0] = (n, 0, *checksum(memoryview(out)[HEADER.itemsize:]))
    return out


def decode_chunk(buf: bytes | memoryview, schema: Schema, version: int = FORMAT_VERSION,
                 verify: bool = True) -> Chunk:
    """Unpack one chunk without copying -> block name -> ``[n, width]`` view of ``buf``. Format 2 checks the
    row count and, with ``verify``, the checksum (:class:`StoreCorruptError` on a mismatch)."""
    blocks = schema.blocks()
    row_bytes = sum(b.width * b.store_dtype.itemsize for b in blocks)
    offset = HEADER.itemsize if version >= 2 else 0
    n = (len(buf) - offset) // row_bytes
    if version >= 2:
        if len(buf) < offset:
            raise StoreCorruptError(f"{len(buf)} bytes are shorter than a chunk header")
        header = np.frombuffer(buf, HEADER, 1)[0]
        if header["rows"] != n or len(buf) != offset + n * row_bytes:
            raise StoreCorruptError(f"{len(buf)} bytes do not hold the {header['rows']} rows its header says")
        if verify and checksum(memoryview(buf)[offset:]) != (int(header["sum"]), int(header["weighted_sum"])):
            raise StoreCorruptError("checksum mismatch")
    out = {}
    for b in blocks:
        out[b.name] = np.frombuffer(buf, b.store_dtype, n * b.width, offset).reshape(n, b.width)
        offset += n * b.width * b.store_dtype.itemsize
    return out


def id_problem(arrays: Chunk, schema: Schema) -> str | None:
    """Which id lies outside its vocabulary, or which sequence length outside ``0..max_len``; None if none.
    One comparison per value (negative values read as huge unsigned ones)."""
    sparse_bound, seq_bound = schema.id_bounds()
    lens = np.array([s.max_len for s in schema.sequence_fields], np.int64)
    for name, bound in (("sparse", sparse_bound), ("seq", seq_bound), ("seq_len", lens + 1)):
        a = np.asarray(arrays[name])
        if a.size:
            bad = (a.astype(np.int64, copy=False).view(np.uint64) >= bound.astype(np.uint64)) if a.dtype != np.int32 \
                else (a.view(np.uint32) >= bound.astype(np.uint32))
            if bad.any():
                row, col = np.argwhere(bad)[0]
                return f"{name} column {col} holds {a[row, col]}, outside 0..{bound[col] - 1}"
    return None


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
        expected_rows: int | None = None,
    ) -> None:
        """``overwrite``: replace a store already at ``path`` (never anything else: see :func:`check_out`).
        ``expected_rows``: the rows that will be added, if known; a full disk is then reported with the
        space the store needs."""
        self.path = Path(path)
        check_out(self.path, overwrite)
        self.overwrite = overwrite
        self.expected_rows = expected_rows
        self.schema = schema
        self.chunk_size = int(chunk_size)
        self.commit_every = commit_every
        self.meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "dataset": dataset, "options": {}, "stats": {}}
        self._tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        try:
            self._tmp.parent.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(str(self._tmp), map_size=_MAP_SIZE, subdir=True, sync=False, metasync=False)
        except (OSError, lmdb.Error) as e:
            reason = space_failure(e, self._tmp)
            shutil.rmtree(self._tmp, ignore_errors=True)
            if reason:
                raise out_of_space(reason, self._tmp, self._need()) from None
            raise OutPathError(f"cannot create the store {self._tmp}: {e}; pass an --out in a writable directory") \
                from None
        self._txn = self._env.begin(write=True)
        self._pending: dict[str, list[Chunk]] = {s: [] for s in SPLITS}
        self._pending_rows = {s: 0 for s in SPLITS}
        self._rows = {s: 0 for s in SPLITS}
        self._chunks = {s: 0 for s in SPLITS}
        self._puts = 0

    def add(self, split: str, sparse: np.ndarray, dense: np.ndarray, label: np.ndarray, *,
            seq: np.ndarray | None = None, seq_len: np.ndarray | None = None,
            seq_weight: np.ndarray | None = None) -> None:
        """Append rows to ``split``: sparse [n, F], dense [n, D], label [n, T] and, for a schema with
        sequence fields, seq [n, L_total] (every sequence field's ids side by side, left-aligned), seq_len
        [n, S] and seq_weight [n, L_weighted] (weighted fields only). Full chunks are written. Sequence
        positions at or after a row's length are stored as 0 whatever they held."""
        if split not in self._pending:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        n = len(sparse)
        given = {"sparse": sparse, "dense": dense, "label": label, "seq": seq, "seq_len": seq_len,
                 "seq_weight": seq_weight}
        rows: Chunk = {}
        for b in self.schema.blocks():
            a = given[b.name]
            if a is None and b.width:
                raise ValueError(f"the schema has sequence fields: pass {b.name} [n, {b.width}]")
            a = np.zeros((n, 0), b.store_dtype) if a is None else np.asarray(a)
            if len(a) != n or a.size != n * b.width:
                raise ValueError(f"{b.name} has shape {a.shape}, the schema needs ({n}, {b.width})")
            rows[b.name] = a.reshape(n, b.width)
        if n == 0:
            return
        if self.schema.num_sequences:
            _check_lengths(rows["seq_len"], self.schema)
            rows["seq"] = _zero_padding(rows["seq"], rows["seq_len"], self.schema)
        problem = id_problem(rows, self.schema)
        if problem:
            raise ValueError(f"rows for {split}: {problem} (the schema's vocabulary size); a store never holds ids "
                             f"its embedding tables cannot look up")
        self._pending[split].append(rows)
        self._pending_rows[split] += n
        if self._pending_rows[split] >= self.chunk_size:
            self._write_full_chunks(split)

    def _write_full_chunks(self, split: str, final: bool = False) -> None:
        """Join the pending rows once, write every full chunk (and, if ``final``, the partial rest)."""
        parts = self._pending[split]
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        total, start = len(rows["sparse"]), 0
        while total - start >= self.chunk_size or (final and start < total):
            end = min(start + self.chunk_size, total)
            chunk = {k: a[start:end] for k, a in rows.items()}
            self._put(chunk_key(split, self._chunks[split]), encode_chunk(chunk, self.schema))
            self._chunks[split] += 1
            self._rows[split] += end - start
            start = end
        self._pending[split] = [{k: a[start:] for k, a in rows.items()}] if start < total else []
        self._pending_rows[split] = total - start

    def put_vocabulary(self, name: str, values: list[str], spec: dict[str, Any] | None = None) -> None:
        """Keep a vocabulary with the store, so that new raw rows can be encoded as preprocessing did:
        ``values[i]`` has id ``i + 2`` (0 = OOV, 1 = missing), ``spec`` any parameters of the encoding (a
        hashed vocabulary: its bucket count and hash, and no values). Key ``__vocab__/<name>``, JSON."""
        record = {"values": list(values), **(spec or {})}
        self._put(VOCAB_PREFIX + name.encode(), json.dumps(record).encode())

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
        raws = {name: self._txn.get(VOCAB_PREFIX + name.encode()) for name in self.schema.vocabs}
        records = None if None in raws.values() else {name: json.loads(raw) for name, raw in raws.items()}
        self.meta.update(
            schema=self.schema.to_dict(),
            chunk_size=self.chunk_size,
            splits={s: {"rows": self._rows[s], "chunks": self._chunks[s]} for s in SPLITS},
            vocab_checksum=vocabulary_checksum(records, self.meta.get("options", {})),
        )
        self._txn.put(META_KEY, json.dumps(self.meta, sort_keys=True).encode())
        self._txn.commit()
        self._env.sync(True)
        self._env.close()
        _move_into_place(self._tmp, self.path, self.overwrite)
        return self.meta

    def abort(self) -> None:
        """Drop what was written: nothing of this writer is left on disk. Safe after a failed ``close``."""
        try:
            self._txn.abort()  # no-op on a finished transaction or a closed environment
            self._env.close()
        except lmdb.Error:
            pass
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _need(self) -> str:
        """The space the store needs, in words (the row width of the schema's blocks: see encode_chunk)."""
        row_bytes = sum(b.width * b.store_dtype.itemsize for b in self.schema.blocks())
        if self.expected_rows is None:
            return f"the store needs {row_bytes} bytes per row"
        return (f"the store needs about {human_size(self.expected_rows * row_bytes)} "
                f"({self.expected_rows:,} rows x {row_bytes} bytes)")

    def _fail(self, e: BaseException) -> None:
        """Remove the partial store; a full disk becomes an :class:`OutOfSpaceError` saying how much is needed."""
        reason = space_failure(e, self._tmp)  # judged before the partial store is removed: that frees space
        self.abort()
        if reason:
            raise out_of_space(reason, self._tmp, self._need()) from None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._fail(exc)
            return
        try:
            self.close()
        except BaseException as e:
            self._fail(e)
            raise


def vocabulary_checksum(records: dict[str, dict[str, Any]] | None, options: dict[str, Any]) -> str | None:
    """sha256 of what encoding new rows takes from a store: its vocabularies (name -> the record
    :meth:`StoreWriter.put_vocabulary` kept: values in id order, hash specs) and its preprocessing options (the
    dense transform among them); None without vocabularies. Computed once, when the store is written
    (``meta["vocab_checksum"]``); runs record it, so a run is never scored with a store preprocessed again."""
    if records is None:
        return None
    text = json.dumps({"vocabularies": records, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}  # resolved path -> (pid, env): one handle per process


def _open_readonly(path: Path, **options: Any) -> lmdb.Environment:
    """Open a store read-only, after checking that ``data.mdb`` holds every page LMDB will map: reading a
    page past the end of a truncated file is a SIGBUS, which would kill a loader worker with a misleading
    shared-memory message."""
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True, **options)
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < needed:
        env.close()
        raise StoreCorruptError(f"store {path} is corrupt: data.mdb has {size} bytes, its pages need {needed} "
                                f"(the file was truncated); re-run preprocess.py")
    return env


def _env(path: Path) -> lmdb.Environment:
    """This process's read-only handle on a store (py-lmdb allows one per environment and process).
    Keyed by pid too, so a forked worker opens its own instead of using its parent's."""
    key = str(path.resolve())
    hit = _ENVS.get(key)
    if hit is None or hit[0] != os.getpid():
        if hit is not None:  # inherited over fork: py-lmdb refuses a second open while this one is registered
            hit[1].close()  # closes the child's copy only; the parent's handle is unaffected
        env = _open_readonly(Path(key), readahead=False, max_readers=512)
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
    env = _open_readonly(path)
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
                f"(`python preprocess.py --help` lists the datasets), or pass --data pointing to an existing store"
            )
        raw = _read_meta(self.path)
        if raw is None:
            raise ValueError(f"{self.path} has no metadata record: it is not a complete store; preprocess it again")
        self.meta: dict[str, Any] = json.loads(raw)
        self.version = self.meta.get("format_version")
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"{self.path} has store format {self.version}, this code reads formats "
                             f"{list(READABLE_VERSIONS)}; preprocess it again (python preprocess.py ...)")
        self.schema = Schema.from_dict(self.meta["schema"])

    def num_rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    def num_chunks(self, split: str) -> int:
        return int(self.meta["splits"][split]["chunks"])

    def vocabulary(self, name: str) -> dict[str, Any]:
        """What :meth:`StoreWriter.put_vocabulary` kept: ``{"values": [...], ...spec}``."""
        with _env(self.path).begin() as txn:
            raw = txn.get(VOCAB_PREFIX + name.encode())
        if raw is None:
            raise KeyError(f"store {self.path} keeps no vocabulary {name!r} (stores keep the vocabularies of the "
                           f"datasets that write them; preprocess again with this version)")
        return json.loads(raw)

    def read_split(self, split: str) -> Chunk:
        """Every row of ``split`` in stored order, loaded whole (for inspection, tests and small stores;
        training reads chunk by chunk through dataset/loader.py) -> block name -> [n, width] array."""
        if not self.num_chunks(split):
            return {b.name: np.zeros((0, b.width), b.store_dtype) for b in self.schema.blocks()}
        return self.read_chunks(split, range(self.num_chunks(split)))

    def read_chunk(self, split: str, index: int, verify: bool = True) -> Chunk:
        """-> block name -> [n, width] array (copies, safe to keep). ``verify`` checks the chunk (its checksum;
        the ids of a format 1 chunk): a corrupt chunk is a :class:`StoreCorruptError` naming it."""
        return self.read_chunks(split, [index], verify)

    def read_chunks(self, split: str, indices: Sequence[int], verify: bool = True) -> Chunk:
        """Several chunks' rows back to back (one copy out of the store, however many chunks) -> block name
        -> [n, width] array; each chunk verified as by :meth:`read_chunk`."""
        with _env(self.path).begin(buffers=True) as txn:
            views = [self._decoded(txn, split, int(i), verify) for i in indices]
            if len(views) == 1:
                return {k: a.copy() for k, a in views[0].items()}
            return {k: np.concatenate([v[k] for v in views]) for k in views[0]}

    def _decoded(self, txn: lmdb.Transaction, split: str, index: int, verify: bool) -> Chunk:
        """A chunk's blocks as views of the store's memory (valid while ``txn`` is open), verified."""
        key = chunk_key(split, index)
        buf = txn.get(key)
        if buf is None:
            raise StoreCorruptError(f"store {self.path} is corrupt: chunk {key.decode()} is missing; "
                                    f"re-run preprocess.py")
        try:
            chunk = decode_chunk(buf, self.schema, self.version, verify)
            problem = id_problem(chunk, self.schema) if verify and self.version < 2 else None
            if problem:  # format 2 needs no such check: its writer refused these ids and the checksum vouches
                raise StoreCorruptError(problem)
        except StoreCorruptError as e:
            raise StoreCorruptError(f"store {self.path} is corrupt at chunk {key.decode()} ({e}): "
                                    f"re-run preprocess.py") from None
        return chunk


def _zero_padding(seq: np.ndarray, seq_len: np.ndarray, schema: Schema) -> np.ndarray:
    """Ids at or after each row's length set to 0 (a copy): the store holds one canonical padding."""
    pos = np.concatenate([np.arange(s.max_len) for s in schema.sequence_fields])
    field = np.repeat(np.arange(schema.num_sequences), [s.max_len for s in schema.sequence_fields])
    return np.where(pos < seq_len[:, field], seq, 0)


def _check_lengths(seq_len: np.ndarray, schema: Schema) -> None:
    max_len = np.array([s.max_len for s in schema.sequence_fields])
    if (seq_len < 0).any() or (seq_len > max_len).any():
        raise ValueError(f"sequence lengths must lie in 0..max_len {max_len.tolist()}")



# ------------------------------------------------------------------------------ where a store may be written
#
# DESIGN.md, Safety: nothing the user owns is replaced without --overwrite, --overwrite replaces only a store
# (never the raw data, nor a directory of other files), and a store appears whole and exclusively. Names next
# to a store ``<dir>/<name>``, each ending in the id of the process that owns it:
#
#   <name>.tmp-<pid>          the store being written (StoreWriter)
#   <name>.tmp-<pid>-buckets  scratch files of the run (criteo's shuffle buckets: :func:`scratch_dir`)
#   <name>.old-<pid>          the replaced store, for the instant of an --overwrite swap
#
# A run that finds one of these from a process that is gone removes it, or, for an ``.old-`` store whose
# replacement never arrived, puts it back (:func:`check_out`).

LMDB_FILES = ("data.mdb", "lock.mdb")  # every file LMDB writes in a store's directory
_LEFTOVER = r"\.(tmp|old)-(\d+)(-buckets)?"
_FULL_BELOW = 64 << 20  # free bytes under which a failed write is put down to a full disk
_RENAME_NOREPLACE = 1  # renameat2 flag (linux/fs.h)
_AT_FDCWD = -100


class OutPathError(InputError):
    """``--out`` names a path where no store may be written; the message names it and the fix."""


class OutOfSpaceError(RuntimeError):
    """The disk filled up (or the file-size limit was reached) while writing; the message names the path,
    the space needed and the fix. Whatever the run was writing has been removed."""


def scratch_dir(path: str | os.PathLike) -> Path:
    """Where this process may keep scratch files while it writes the store at ``path`` (removed by the next
    run on ``path`` if this one is killed)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-buckets")


MISSING_PATH = "it does not exist"


def store_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a store written by this repo, or None if it is: a directory holding LMDB's files
    and nothing else, whose ``data.mdb`` has a metadata record (of any format version: an old store may be
    replaced). Reading the record leaves no LMDB handle open."""
    path = Path(path)
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is a file" if path.exists() else MISSING_PATH
    names = sorted(os.listdir(path))
    others = [n for n in names if n not in LMDB_FILES]
    if others:
        return f"it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
    if "data.mdb" not in names:
        return "it is an empty directory" if not names else "it has no data.mdb"
    try:
        meta = json.loads(_read_meta(path) or b"null")
    except StoreCorruptError:  # a truncated data.mdb: a store damaged after it was written may be replaced
        return None
    except (lmdb.Error, ValueError, FileNotFoundError):
        return MISSING_PATH if not path.exists() else "its data.mdb is not a store's"  # moved away while read?
    if not (isinstance(meta, dict) and {"format_version", "schema", "splits"} <= meta.keys()):
        return "its data.mdb has no store metadata record"
    return None


def check_out(out: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an ``--out`` a store may not be written to: the input file or a directory
    holding it, anything that is not a store (a file, a directory of other files, ``.``), a store without
    ``overwrite``, or a place this user cannot write. First removes what killed runs left at ``out``
    (saying so on stderr). Raises :class:`OutPathError` or :class:`StoreExistsError`."""
    full = Path(os.path.abspath(out))
    shown = f"{out}" if Path(out).name == full.name else f"{out} ({full})"
    if full.parent == full:
        raise OutPathError(f"--out {shown} is the root directory; pass a new directory such as --out data/<dataset>")
    for given in inputs:
        source = Path(given).resolve()
        if full.resolve() == source or full.resolve() in source.parents:
            raise OutPathError(f"--out {shown} holds the input {given}; pass an --out outside it, "
                               f"such as --out data/<dataset>")
    _clean_leftovers(full)
    if full.exists() or full.is_symlink():
        problem = store_problem(full)
        if problem:
            raise OutPathError(f"--out {shown} exists and is not a store written by preprocess.py ({problem}); "
                               f"--overwrite replaces only such stores: pass a new directory as --out")
        if not overwrite:
            raise StoreExistsError(f"store {out} already exists; pass --overwrite to replace it")
    parent = full.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise OutPathError(f"--out {shown}: {parent} is a file, not a directory; pass an --out in a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "is not writable"
        raise OutPathError(f"cannot write --out {shown}: {parent} {why}; pass an --out in a writable directory")


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie, which has exited, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _only_files(path: Path, pattern: str) -> bool:
    """Whether ``path`` is a directory holding nothing but regular files whose names match ``pattern``."""
    try:
        return path.is_dir() and not path.is_symlink() and all(
            e.is_file(follow_symlinks=False) and re.fullmatch(pattern, e.name) for e in os.scandir(path))
    except OSError:
        return False


def _clean_leftovers(full: Path) -> None:
    """Remove the ``.tmp-`` store, scratch and ``.old-`` store that killed runs left next to ``full``; put an
    ``.old-`` store back if its replacement never arrived. Leaves alone what belongs to a running process and
    anything holding files these runs do not write."""
    try:
        names = sorted(os.listdir(full.parent))
    except OSError:
        return
    for name in names:
        m = re.fullmatch(re.escape(full.name) + _LEFTOVER, name)
        if not m or _running(int(m[2])):
            continue
        leftover, pid = full.parent / name, int(m[2])
        if m[1] == "old":
            if store_problem(leftover):
                continue
            if not full.exists() and not full.is_symlink():
                try:
                    _rename_noreplace(leftover, full)
                except (FileNotFoundError, FileExistsError):  # another run got there first
                    continue
                print(f"note: restored the store {full} from {leftover}, where an --overwrite run "
                      f"(process {pid}) that was killed had moved it", file=sys.stderr)
                continue
        elif not _only_files(leftover, r"\d+\.bin" if m[3] else "|".join(map(re.escape, LMDB_FILES))):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        print(f"note: removed {leftover}, left by preprocessing process {pid}, which is no longer running",
              file=sys.stderr)


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, or raise FileExistsError if anything is at ``dst`` (an empty directory too,
    which ``os.rename`` would silently replace). One atomic renameat2(RENAME_NOREPLACE) where the kernel and
    file system have it (Linux on ext4, xfs, btrfs, tmpfs ...); elsewhere ``dst`` is first claimed with
    ``os.mkdir``, which only one process can win, and ``src`` renamed onto that empty directory."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))  # EEXIST -> FileExistsError
    os.mkdir(dst)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rmdir(dst)
        raise


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished store ``tmp`` to ``path``, never onto something that appeared meanwhile (another
    run's store: StoreExistsError) unless ``overwrite`` and it is a store. A replacement moves the old store
    aside to ``path.old-<pid>``, moves the new one in, then deletes the old one: a crash in between leaves
    the old store whole, and the next run on ``path`` puts it back."""
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    while True:
        try:
            _rename_noreplace(tmp, path)
            return
        except FileExistsError:
            if not overwrite:
                raise StoreExistsError(f"store {path} already exists; pass --overwrite to replace it") from None
        problem = store_problem(path)
        if problem == MISSING_PATH:  # a concurrent --overwrite run is moving it: try the plain rename again
            continue
        if problem:
            raise OutPathError(f"{path} appeared while this store was written and is not a store ({problem}); "
                               f"the new store was not moved in: pass another --out")
        _evict(path)
        try:
            _rename_noreplace(path, old)
        except FileNotFoundError:  # a concurrent --overwrite run moved it first: try again
            continue
        if store_problem(old):  # swapped for something else since it was checked: put that back, untouched
            _rename_noreplace(old, path)
            continue
        try:
            _rename_noreplace(tmp, path)
            placed = True
        except FileExistsError:  # a concurrent --overwrite run moved its store in: it goes the old one's way
            placed = False
        shutil.rmtree(old)
        if placed:
            return


def space_failure(e: BaseException, path: str | os.PathLike) -> str | None:
    """If ``e``, raised while writing under ``path``, means the disk is full or the file-size limit
    (``ulimit -f``) was reached, say which; None for any other error. LMDB reports both as a plain I/O error
    (a short write), so they are told apart by the free space and the limit. Call it before removing the
    partial output: that frees the space."""
    io_codes = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
    if not (isinstance(e, OSError) and e.errno in io_codes or isinstance(e, lmdb.DiskError)
            or isinstance(e, lmdb.Error) and "Input/output error" in str(e)):
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if isinstance(e, OSError) and e.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
        return f"the file-size limit (ulimit -f) of {human_size(limit)} was reached"
    if shutil.disk_usage(_existing(Path(path))).free < _FULL_BELOW:
        return "the disk is full"
    if limit != resource.RLIM_INFINITY:
        return f"the file-size limit (ulimit -f) of {human_size(limit)} was reached"
    return None


def out_of_space(reason: str, path: str | os.PathLike, need: str) -> OutOfSpaceError:
    """The one-line error for :func:`space_failure`'s ``reason``, once the partial output is removed."""
    free = shutil.disk_usage(_existing(Path(path))).free
    fix = "raise it (ulimit -f unlimited)" if "ulimit" in reason else "free some space"
    return OutOfSpaceError(f"{reason} while writing {path}: {need}, and {human_size(free)} are free there; "
                           f"removed what was written; {fix} or pass an --out on a disk with room")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def human_size(n: float) -> str:
    """A byte count in words: 512 bytes, 4.2 MB, 1.3 GB."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:,.1f} {unit}"
