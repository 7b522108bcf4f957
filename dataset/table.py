"""table: any CSV/TSV described by a declarative TOML spec -> LMDB store, streamed with bounded memory.

    python preprocess.py table --spec dataset/specs/movielens.toml --input ratings.csv \\
        [--valid-input F] [--test-input F] [--min-count N] [--buffer-mb 256]

The spec (reference in dataset/table_spec.py) names the file format and what every column is: categorical
(a vocabulary fit on train rows, or hashed), numeric (standardize / log1p / none / bucketize), multi-value
(a sequence field), label (binary or regression), dropped, or derived from a time column.

How it runs; memory holds one block of text, the vocabularies' counts and the shuffle buckets up to
``--buffer-mb``, whatever the file size:

1. Pass 1 reads the train file block by block (dataset/table_read.py), skips bad rows (counted per kind
   with their first line numbers; with ``--strict`` the first one is an error naming the file and line),
   draws each valid row's split (dataset/split.py: one seeded draw per valid row, in file order), and on
   the train rows counts every fitted vocabulary's values, sums the moments of standardized columns and
   samples the values of bucketized ones.
2. Each vocabulary keeps the values counted at least ``min_count`` times (dataset/vocab.py: 0 OOV,
   1 missing, 2.. the kept values in sorted order); hashed ones need no fit.
3. Pass 2 reads every input again, encodes each block and scatters its rows into K shuffle buckets
   picked at random (seeded). Buckets stay in memory up to ``--buffer-mb``, then spill to files in
   ``<out>.tmp-<pid>-buckets`` (removed at the end, or on failure).
4. Pass 3 loads one bucket at a time, permutes it (seeded) and appends its rows to their split. A random
   bucket and then a random place inside it is a uniform shuffle of each split, done once.

``--valid-input`` / ``--test-input`` files become their split whole; ``--input`` is split among the
splits without a file, by their part of ``--split``. Vocabularies are always fit on train rows only.
Same inputs and flags give a byte-identical ``data.mdb``: nothing depends on block sizes, the buffer
size, timing or ``PYTHONHASHSEED``.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import time
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from dataset.buckets import ShuffleBuckets, bucket_count
from dataset.raw import InputError, in_order, open_raw
from dataset.schema import Schema, SequenceField
from dataset.split import SPLITS, SplitAssigner, check_common, check_split_rows
from dataset.store import StoreWriter, check_out, scratch_dir
from dataset.table_read import (WRONG_COUNT, Cells, Codes, Decoder, Rows, TextBlock, Values, factorize_spans, pack,
                                read_blocks, read_column, split_header, split_spans, to_cells, tokenize, unpack)
from dataset.table_spec import DEFAULT_MIN_COUNT, TIME_PARTS, ColumnSpec, TableSpec, load_spec
from dataset.vocab import HASH_KEY, Vocabulary, hash_strings, ids_from_positions

BLOCK_BYTES = 4 << 20  # text tokenized at a time
WORKERS = min(4, os.cpu_count() or 1)  # threads that parse (and in pass 2 encode) blocks; numpy frees the GIL
AHEAD = WORKERS + 1  # blocks parsed ahead of the one consumed
BUFFER_BYTES = 256 << 20  # shuffle records held in memory before they spill to files (--buffer-mb)
BUCKET_BYTES = 64 << 20  # target size of one shuffle bucket (loaded whole in pass 3)
MAX_BUCKETS = 1024
SAMPLE_SIZE = 1 << 20  # train values kept per bucketized column to find its quantiles (exact below this)
MOMENT_GROUP = 1 << 16  # standardize sums add up fixed groups of values, so block sizes cannot change them
COUNT_BATCH = 1 << 20  # value counts buffered before they are merged into a vocabulary's running counts
FIRST_LINES_KEPT = 5  # line numbers remembered per kind of bad row
TIME_CACHE = 1 << 16  # parsed time strings remembered across blocks (Avazu has 240 distinct hours)


# ---------------------------------------------------------------------------------- parsing one block


@dataclass
class Multi:
    """A multi-value column of ``n`` rows: element ``e`` (of ``E``) is ``cells`` value ``e``, at place
    ``rank[e]`` of row ``row[e]``'s list; ``lengths`` int32 [n]; ``weights`` float32 [E] or None."""

    row: np.ndarray
    rank: np.ndarray
    cells: Values
    lengths: np.ndarray
    weights: np.ndarray | None

    def take(self, rows: np.ndarray) -> "Multi":
        """The rows where ``rows`` (bool [n]) holds, renumbered."""
        keep = rows[self.row]
        renumber = np.cumsum(rows) - 1
        return Multi(renumber[self.row[keep]], self.rank[keep], self.cells.take(keep), self.lengths[rows],
                     None if self.weights is None else self.weights[keep])


Column = Codes | Cells | Multi | np.ndarray  # categorical | multi | numeric float64 / label float32


@dataclass
class Parsed:
    """The valid rows of one block: line numbers [n] and every field's values."""

    lines: np.ndarray
    data: dict[str, Column]

    def __len__(self) -> int:
        return len(self.lines)

    def take(self, rows: np.ndarray) -> "Parsed":
        return Parsed(self.lines[rows], {k: _take(v, rows) for k, v in self.data.items()})


def _take(column: Column, rows: np.ndarray) -> Column:
    return column[rows] if isinstance(column, np.ndarray) else column.take(rows)


def _numbers(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels -> (float64 values, NaN where missing; bad: neither missing nor a finite number)."""
    values = pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce").to_numpy(np.float64, na_value=np.nan,
                                                                                      copy=True)
    missing = labels == ""
    values[missing] = np.nan
    return values, ~missing & ~np.isfinite(values)


def _parse_times(labels: np.ndarray, fmt: str) -> np.ndarray:
    """Time labels (``fmt``: a strptime format, or "unix" seconds, UTC) -> float64 [u, len(TIME_PARTS)], every
    part of each time; NaN for a label that is not a time (or is missing)."""
    text = pd.Series(labels, dtype=object)
    if fmt == "unix":
        t = pd.to_datetime(pd.to_numeric(text, errors="coerce"), unit="s", errors="coerce")
    else:
        t = pd.to_datetime(text, format=fmt, errors="coerce")
    weekday = (t.dt.day_of_week + 1) % 7  # Sunday 0 .. Saturday 6, as strftime's %w
    parts = {"hour": t.dt.hour, "weekday": weekday, "weekend": weekday.isin([0, 6]).astype(float).where(t.notna()),
             "day": t.dt.day, "month": t.dt.month, "year": t.dt.year}
    return np.stack([parts[p].to_numpy(np.float64, na_value=np.nan) for p in TIME_PARTS], axis=1)


def _weights(labels: np.ndarray, sep: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``value:weight`` labels -> (values, float32 weights (1 without a weight), bad: the weight is not a
    finite number)."""
    parts = [label.rpartition(sep) for label in labels]
    values = np.empty(len(labels), dtype=object)
    values[:] = [head if has else tail for head, has, tail in parts]
    weight_text = np.empty(len(labels), dtype=object)
    weight_text[:] = [tail if has else "1" for _, has, tail in parts]
    weights, bad = _numbers(weight_text)
    return values, np.nan_to_num(weights).astype(np.float32), bad | (weight_text == "")


class BlockParser:
    """Reads the fields of a spec from tokenized rows. ``index``: file column name -> its position."""

    def __init__(self, spec: TableSpec, index: dict[str, int]) -> None:
        self.spec = spec
        self.index = index
        self.decode = Decoder(spec.encoding, spec.missing, unescape=spec.quoting == "csv")
        self._times: dict[str, dict[str, np.ndarray]] = {}  # time format -> label -> its parts
        self._times_lock = threading.Lock()  # blocks are parsed on several threads

    def parse(self, rows: Rows) -> tuple[Parsed, dict[str, np.ndarray]]:
        """-> (the valid rows, line numbers of the bad ones per kind). A row is counted once, under the
        first field (in spec order) that rejects it."""
        data: dict[str, Column] = {}
        first_bad = np.full(len(rows), -1, np.int64)  # index in kinds of the first reason to reject each row
        kinds: dict[str, int] = {}  # several fields may give one reason (the derived fields of one column)
        sources: dict[str, Cells] = {}
        for col in self.spec.fields:
            data[col.name], bad, kind = self._field(col, rows, sources)
            if bad is not None:
                new = bad & (first_bad < 0)
                if new.any():
                    first_bad[new] = kinds.setdefault(kind, len(kinds))
        parsed = Parsed(rows.lines, data)
        if not kinds:
            return parsed, {}
        return parsed.take(first_bad < 0), {kind: rows.lines[first_bad == k] for kind, k in kinds.items()}

    def _cells(self, rows: Rows, name: str) -> Cells:
        i = self.index[name]
        return factorize_spans(rows.block, rows.starts[i], rows.lens[i], self.decode)

    def _time_part(self, labels: np.ndarray, fmt: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """-> (the part of each time label as a decimal string, "" where missing; bad: not missing and not
        a time). Parsed times are remembered across blocks."""
        with self._times_lock:
            cache = self._times.setdefault(fmt, {})
            new = [label for label in pd.unique(labels) if label not in cache]
            if new:
                if len(cache) + len(new) > TIME_CACHE:
                    cache.clear()
                cache.update(zip(new, _parse_times(np.array(new, dtype=object), fmt)))
            value = np.array([cache[label][TIME_PARTS.index(part)] for label in labels], np.float64)
        out = np.empty(len(labels), dtype=object)
        out[:] = ["" if v != v else str(int(v)) for v in value]
        return out, (labels != "") & np.isnan(value)

    def _field(self, col: ColumnSpec, rows: Rows,
               sources: dict[str, Cells]) -> tuple[Column, np.ndarray | None, str]:
        """-> (values, bad rows or None, the kind of bad row)."""
        if col.source is not None:  # derived: a time part of another column's text
            if col.source not in sources:
                sources[col.source] = self._cells(rows, col.source)
            cells = sources[col.source]
            labels, bad = self._time_part(cells.labels, col.time, col.part)
            return self._typed(col, cells.with_labels(labels))[0], bad[cells.inverse], f"bad time in {col.source!r}"
        if col.kind == "multi":
            i = self.index[col.name]
            row, rank, starts, lens, lengths = split_spans(rows.block, rows.starts[i], rows.lens[i], col.sep,
                                                           col.max_len)
            elements = read_column(rows.block, starts, lens, self.decode)
            if not col.weights:
                return Multi(row, rank, elements, lengths, None), None, ""
            cells = to_cells(elements, self.decode)
            values, weights, bad = _weights(cells.labels, col.weight_sep)
            bad_rows = np.bincount(row[bad[cells.inverse]], minlength=len(rows)) > 0
            return (Multi(row, rank, cells.with_labels(values), lengths, weights[cells.inverse]), bad_rows,
                    f"bad weight in {col.name!r}")
        if col.kind == "categorical":
            i = self.index[col.name]
            return read_column(rows.block, rows.starts[i], rows.lens[i], self.decode), None, ""
        cells = self._cells(rows, col.name)
        if col.kind == "label":
            if col.task == "binary":
                positive = np.isin(cells.labels, list(col.positive))
                bad = ~positive & ~np.isin(cells.labels, list(col.negative))
                values = positive.astype(np.float32)
            else:
                values, bad = _numbers(cells.labels)
                bad |= cells.labels == ""
            return values[cells.inverse].astype(np.float32), bad[cells.inverse], f"bad label in {col.name!r}"
        return (*self._typed(col, cells), f"non-numeric value in {col.name!r}")

    @staticmethod
    def _typed(col: ColumnSpec, cells: Cells) -> tuple[Column, np.ndarray | None]:
        """A categorical field (its cells) or a numeric one (float64, NaN missing; and its bad rows)."""
        if col.kind == "categorical":
            return cells, None
        values, bad = _numbers(cells.labels)
        return values[cells.inverse], bad[cells.inverse]


# ------------------------------------------------------------------------------------- reading a file


@dataclass
class BadRows:
    """Skipped rows: count per kind, and the first few as ``file:line``."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[str]] = field(default_factory=dict)

    def add(self, path: Path, bad: dict[str, np.ndarray], strict: bool) -> None:
        if not bad:
            return
        if strict:
            kind, lines = min(bad.items(), key=lambda kv: int(kv[1][0]))
            raise _bad_row_error(path, kind, int(lines[0]))
        for kind, lines in bad.items():
            self.counts[kind] = self.counts.get(kind, 0) + len(lines)
            kept = self.first.setdefault(kind, [])
            kept.extend(f"{path.name}:{int(line)}" for line in lines[:FIRST_LINES_KEPT - len(kept)])

    def summary(self) -> str:
        return "; ".join(f"{n:,} {kind} (first at {', '.join(self.first[kind])})" for kind, n in self.counts.items())


def _bad_row_error(path: Path, kind: str, line: int) -> InputError:
    stream, _ = open_raw(path)
    with stream:
        text = next((t for i, t in enumerate(stream, start=1) if i == line), b"")
    shown = text[:120].decode("utf-8", "replace").rstrip("\r\n")
    return InputError(f"{path} line {line}: {kind}: {shown!r}; fix or delete that line, "
                      f"or drop --strict to skip bad rows")


def _header(stream: Any, path: Path, spec: TableSpec) -> tuple[list[str], int, bytes]:
    """-> (the file's column names, the line number of its first data line, bytes read that are data)."""
    if spec.header is False:
        return list(spec.names), 1, b""
    first = stream.readline()
    cells = split_header(first, spec.separator, spec.quoting, spec.encoding) if first else []
    if cells:
        cells[0] = cells[0].removeprefix("\ufeff")  # a UTF-8 byte order mark
    if spec.header == "auto":
        return (list(spec.names), 2, b"") if cells == list(spec.names) else (list(spec.names), 1, first)
    if not first.strip():
        raise InputError(f"{path} has no header line; the spec says header = true")
    if len(set(cells)) != len(cells):
        raise InputError(f"{path}: the header repeats a column name ({cells}); give every column its own name")
    return cells, 2, b""


def _column_index(names: list[str], path: Path, spec: TableSpec) -> dict[str, int]:
    listed = {c.name for c in spec.columns}
    extra, absent = [n for n in names if n not in listed], sorted(listed - set(names))
    if extra or absent:
        raise InputError(f"{path} has columns the spec does not list: {extra} (add them to [columns], "
                         f'as "drop" to skip one), and lacks columns the spec lists: {absent}')
    return {name: i for i, name in enumerate(names)}


def read_table(path: Path, spec: TableSpec, bad_rows: BadRows, strict: bool, block_bytes: int = BLOCK_BYTES,
               bar: tqdm | None = None, pool: ThreadPoolExecutor | None = None,
               then: Callable[[Parsed], Any] | None = None) -> Iterator[tuple[Parsed, Any]]:
    """The valid rows of ``path``, block by block, each with ``then(rows)`` (or None); bad rows go to
    ``bad_rows`` (or raise, ``strict``) in file order. Blocks are parsed (and ``then`` run) on ``pool``."""
    stream, raw = open_raw(path)
    with stream:
        names, first_line, head = _header(stream, path, spec)
        parser = BlockParser(spec, _column_index(names, path, spec))

        def work(block: TextBlock) -> tuple[int, Parsed, dict[str, np.ndarray], Any]:
            rows, bad, _ = tokenize(block, len(names), spec.separator, spec.quoting)
            if WRONG_COUNT in bad:
                bad[f"{WRONG_COUNT} (expected {len(names)})"] = bad.pop(WRONG_COUNT)
            parsed, bad_fields = parser.parse(rows)
            return block.raw_pos, parsed, {**bad, **bad_fields}, then(parsed) if then else None

        done = 0
        blocks = read_blocks(stream, block_bytes, first_line, head, raw)
        for raw_pos, parsed, bad, extra in in_order(pool, work, blocks, ahead=AHEAD):
            bad_rows.add(path, bad, strict)
            if bar is not None:
                bar.update(raw_pos - done)
                done = raw_pos
            yield parsed, extra


# ------------------------------------------------------------------------- pass 1: train statistics


def _sum_by_key(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of repeated keys added up -> (distinct keys in order of first appearance, int64 sums)."""
    index, distinct = pd.factorize(keys)
    return np.asarray(distinct), np.bincount(index, weights=counts, minlength=len(distinct)).astype(np.int64)


class _Merged:
    """A running sum of counts per key, fed in batches that are merged once they hold as many keys as half
    the running sum (so merging stays linear in all)."""

    def __init__(self, dtype: Any) -> None:
        self.keys, self.counts = np.zeros(0, dtype), np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((keys, counts))
        self._pending_size += len(keys)
        if self._pending_size >= max(COUNT_BATCH, len(self.keys) // 2):
            self.flush()

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pending:
            keys = np.concatenate([self.keys, *(k for k, _ in self._pending)])
            counts = np.concatenate([self.counts, *(c for _, c in self._pending)])
            self.keys, self.counts = _sum_by_key(keys, counts)
            self._pending, self._pending_size = [], 0
        return self.keys, self.counts


class ValueCounts:
    """Train-row counts of one vocabulary's values: short cells counted by their code, others by string."""

    def __init__(self) -> None:
        self._codes = _Merged(np.uint64)
        self._labels = _Merged(object)

    def add(self, values: Values) -> None:
        if isinstance(values, Codes):
            inverse, unique = pd.factorize(values.codes)
            self._codes.add(unique, np.bincount(inverse, minlength=len(unique)))
        else:
            counts = np.bincount(values.inverse, minlength=len(values.labels))
            keep = counts > 0
            self._labels.add(values.labels[keep], counts[keep])

    def result(self, decode: Decoder) -> tuple[np.ndarray, np.ndarray]:
        """-> (values as strings, missing ones left out; their train counts)."""
        codes, code_counts = self._codes.flush()
        labels, label_counts = self._labels.flush()
        keys, counts = _sum_by_key(np.concatenate([decode(unpack(codes)), labels]),
                                   np.concatenate([code_counts, label_counts]))
        return keys[keys != ""], counts[keys != ""]


class Moments:
    """Count, mean and std of a column's train values (NaN skipped). Values are summed in fixed groups of
    MOMENT_GROUP in file order, so the result does not depend on how the file was cut into blocks."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0
        self.shift: float | None = None  # the first value: sums of (x - shift) lose less to cancellation
        self._held: list[np.ndarray] = []
        self._held_n = 0

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if not len(values):
            return
        if self.shift is None:
            self.shift = float(values[0])
        self._held.append(values)
        self._held_n += len(values)
        if self._held_n >= MOMENT_GROUP:
            held = np.concatenate(self._held)
            full = len(held) - len(held) % MOMENT_GROUP
            for start in range(0, full, MOMENT_GROUP):
                self._sum(held[start:start + MOMENT_GROUP])
            self._held, self._held_n = [held[full:]], len(held) - full

    def _sum(self, group: np.ndarray) -> None:
        d = group - self.shift
        self.n += len(d)
        self.total += float(d.sum())
        self.squares += float((d * d).sum())

    def result(self) -> dict[str, float]:
        if self._held_n:
            self._sum(np.concatenate(self._held))
            self._held, self._held_n = [], 0
        if not self.n:
            return {"mean": 0.0, "std": 1.0}
        mean_d = self.total / self.n
        std = math.sqrt(max(self.squares / self.n - mean_d * mean_d, 0.0))
        return {"mean": self.shift + mean_d, "std": std if std > 0 else 1.0}


class QuantileSample:
    """A seeded uniform sample of a column's train values (NaN skipped): the SAMPLE_SIZE values with the
    smallest of one uniform draw per train row. Every value while there are fewer (exact quantiles);
    the same sample whatever the block sizes."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.values = np.zeros(0)
        self.keys = np.zeros(0)

    def add(self, values: np.ndarray) -> None:
        keys = self.rng.random(len(values))  # one draw per train row, missing ones included
        ok = ~np.isnan(values)
        self.values = np.concatenate([self.values, values[ok]])
        self.keys = np.concatenate([self.keys, keys[ok]])
        if len(self.keys) >= 2 * SAMPLE_SIZE:
            self._shrink()

    def _shrink(self) -> None:
        if len(self.keys) > SAMPLE_SIZE:
            keep = np.argpartition(self.keys, SAMPLE_SIZE - 1)[:SAMPLE_SIZE]
            self.values, self.keys = self.values[keep], self.keys[keep]

    def edges(self, buckets: int) -> list[float]:
        """Distinct quantiles at ``k / buckets``, k = 1 .. buckets - 1."""
        self._shrink()
        if not len(self.values):
            return []
        return [float(e) for e in np.unique(np.quantile(self.values, np.linspace(0, 1, buckets + 1)[1:-1]))]


@dataclass
class TrainStats:
    """What pass 1 learns from the train rows."""

    counts: dict[str, ValueCounts]  # fitted vocabulary -> its value counts
    moments: dict[str, Moments]  # standardized column -> its moments
    samples: dict[str, QuantileSample]  # bucketized column -> its value sample
    rows: int = 0  # valid rows of the train file, every split
    train_rows: int = 0


def _count_block(stats: TrainStats, parsed: Parsed, spec: TableSpec, hashed: set[str]) -> None:
    """Add the train rows of one block (``parsed``: those rows only) to ``stats``."""
    for col in spec.fields:
        value = parsed.data[col.name]
        if col.kind in ("categorical", "multi") and col.vocab_name not in hashed:
            stats.counts[col.vocab_name].add(value.cells if isinstance(value, Multi) else value)
        elif col.name in stats.moments:
            stats.moments[col.name].add(value)
        elif col.name in stats.samples:
            stats.samples[col.name].add(value)


# ---------------------------------------------------------------------------------------- encoders


class FittedVocab:
    """A vocabulary fit on train counts; encodes codes through a code -> id index of its short values."""

    def __init__(self, values: np.ndarray, counts: np.ndarray, min_count: int, decode: Decoder) -> None:
        self.min_count = min_count
        self.vocab = Vocabulary(values[counts >= min_count].tolist())  # as Vocabulary.fit, from arrays
        # the kept values of at most 8 bytes by code (built here: encoding runs on several threads)
        codes, ok = pack([decode.encode(v) for v in self.vocab.index.tolist()])
        self._positions = np.flatnonzero(ok)  # code i is kept value _positions[i], id _positions[i] + 2
        self._codes = pd.Index(codes[ok])
        self._codes.get_indexer(codes[:1])  # builds the hash tables now; threads then only read them
        self.vocab.index.get_indexer(self.vocab.index[:1])
        self._missing = decode.missing_codes()

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, values: Values) -> np.ndarray:
        """-> int32 ids [n]."""
        if isinstance(values, Cells):
            return self.vocab.encode(values.labels)[values.inverse]
        found = self._codes.get_indexer(values.codes)
        positions = np.full(len(found), -1, np.int64)  # not kept
        hit = found >= 0
        positions[hit] = self._positions[found[hit]]
        missing = np.isin(values.codes, self._missing)
        return ids_from_positions(positions, missing).astype(np.int32)

    def record(self) -> tuple[list[str], dict[str, Any]]:
        return self.vocab.index.tolist(), {"min_count": self.min_count}


class HashedVocab:
    def __init__(self, buckets: int, decode: Decoder) -> None:
        self.buckets = buckets
        self.decode = decode

    def __len__(self) -> int:
        return self.buckets + 2

    def encode(self, values: Values) -> np.ndarray:
        cells = to_cells(values, self.decode)
        return hash_strings(cells.labels, self.buckets)[cells.inverse]

    def record(self) -> tuple[list[str], dict[str, Any]]:
        return [], {"hash_buckets": self.buckets, "hash": "siphash-2-4", "hash_key": HASH_KEY}


@dataclass
class Encoders:
    """Everything pass 2 needs to turn parsed rows into store rows."""

    schema: Schema
    vocabs: dict[str, FittedVocab | HashedVocab]
    transforms: dict[str, dict[str, Any]]  # numeric column -> its transform and train statistics


def _fit(spec: TableSpec, stats: TrainStats, min_count: int | None) -> Encoders:
    decode = Decoder(spec.encoding, spec.missing, unescape=spec.quoting == "csv")
    vocabs: dict[str, FittedVocab | HashedVocab] = {}
    for col in spec.fields:
        if col.kind in ("categorical", "multi") and col.vocab_name not in vocabs:
            if col.hash_buckets is not None:
                vocabs[col.vocab_name] = HashedVocab(col.hash_buckets, decode)
            else:
                explicit = [c.min_count for c in spec.fields if c.kind in ("categorical", "multi")
                            and c.vocab_name == col.vocab_name and c.min_count is not None]
                m = explicit[0] if explicit else min_count or spec.min_count or DEFAULT_MIN_COUNT
                vocabs[col.vocab_name] = FittedVocab(*stats.counts[col.vocab_name].result(decode), m, decode)
    transforms: dict[str, dict[str, Any]] = {}
    for col in spec.fields:
        if col.kind == "numeric":
            transforms[col.name] = {"transform": col.transform}
            if col.transform == "standardize":
                transforms[col.name].update(stats.moments[col.name].result())
            elif col.transform == "bucketize":
                transforms[col.name]["edges"] = stats.samples[col.name].edges(col.buckets)
    sparse = [c for c in spec.fields if c.is_sparse]
    sizes = [len(transforms[c.name]["edges"]) + 3 if c.kind == "numeric" else len(vocabs[c.vocab_name])
             for c in sparse]
    sparse_vocabs = [c.name if c.kind == "numeric" else c.vocab_name for c in sparse]
    sequences = [SequenceField(c.name, c.vocab_name, len(vocabs[c.vocab_name]), c.max_len, c.weights)
                 for c in spec.fields if c.kind == "multi"]
    labels = [c for c in spec.fields if c.kind == "label"]
    schema = Schema([c.name for c in sparse], sizes,
                    [c.name for c in spec.fields if c.kind == "numeric" and not c.is_sparse],
                    [c.name for c in labels], task_types=[c.task for c in labels], sparse_vocabs=sparse_vocabs,
                    sequence_fields=sequences, user_field=spec.user_field)
    return Encoders(schema, vocabs, transforms)


def _dense(values: np.ndarray, t: dict[str, Any]) -> np.ndarray:
    """A numeric column's values (NaN missing) -> float32 after its transform; missing -> 0."""
    if t["transform"] == "standardize":
        values = (values - t["mean"]) / t["std"]
    elif t["transform"] == "log1p":
        values = np.log1p(np.maximum(values, 0))
    return np.nan_to_num(values, nan=0.0).astype(np.float32)


def _bucket_ids(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """id = 2 + the number of edges <= x; NaN -> the missing id 1."""
    return ids_from_positions(np.searchsorted(np.asarray(edges), values, side="right"), np.isnan(values))


def record_dtype(schema: Schema) -> np.dtype:
    """One store row plus its split, as a fixed-size record (width-0 blocks left out)."""
    parts = [(b.name, b.store_dtype, (b.width,)) for b in schema.blocks() if b.width]
    return np.dtype(parts + [("split", np.uint8)])


def _encode(parsed: Parsed, spec: TableSpec, enc: Encoders, dtype: np.dtype) -> np.ndarray:
    """Valid rows of one block -> records [n] (their split still 0)."""
    rec = np.zeros(len(parsed), dtype)
    schema = enc.schema
    slices = schema.seq_slices
    weight_start = 0
    sparse_j = dense_j = label_j = seq_j = 0
    for col in spec.fields:
        value = parsed.data[col.name]
        if col.kind == "label":
            rec["label"][:, label_j] = value
            label_j += 1
        elif col.kind == "numeric" and col.transform == "bucketize":
            rec["sparse"][:, sparse_j] = _bucket_ids(value, enc.transforms[col.name]["edges"])
            sparse_j += 1
        elif col.kind == "numeric":
            rec["dense"][:, dense_j] = _dense(value, enc.transforms[col.name])
            dense_j += 1
        elif col.kind == "categorical":
            rec["sparse"][:, sparse_j] = enc.vocabs[col.vocab_name].encode(value)
            sparse_j += 1
        else:  # multi
            ids = enc.vocabs[col.vocab_name].encode(value.cells)
            rec["seq"][value.row, slices[col.name].start + value.rank] = ids
            rec["seq_len"][:, seq_j] = value.lengths
            if col.weights:
                rec["seq_weight"][value.row, weight_start + value.rank] = value.weights
                weight_start += col.max_len
            seq_j += 1
    return rec


# ------------------------------------------------------------------------------------ shuffle buckets


# -------------------------------------------------------------------------------------- entry points


def _split_ratios(split: tuple[float, float, float], inputs: dict[str, Path | None]) -> tuple[float, ...]:
    """The train file's share per split: the splits that have a file of their own get none of it."""
    kept = [0.0 if s != "train" and inputs.get(s) is not None else r for s, r in zip(SPLITS, split)]
    return tuple(r / sum(kept) for r in kept)


def _check_inputs(inputs: dict[str, str | os.PathLike | None]) -> dict[str, Path | None]:
    paths = {s: (Path(inputs[s]) if inputs.get(s) else None) for s in SPLITS}
    if paths["train"] is None:
        raise InputError("no --input given; pass the train file")
    for split, path in paths.items():
        if path is not None and not path.is_file():
            flag = "--input" if split == "train" else f"--{split}-input"
            raise InputError(f"input file {path} does not exist; check {flag}")
    return paths


def preprocess_table(spec: TableSpec | str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                     out_path: str | os.PathLike, *, min_count: int | None = None,
                     split: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 2018, chunk_size: int = 8192,
                     overwrite: bool = False, strict: bool = False, buffer_bytes: int = BUFFER_BYTES,
                     block_bytes: int = BLOCK_BYTES, progress: bool = True) -> dict[str, Any]:
    """Files described by ``spec`` -> LMDB store at ``out_path`` (see the module docstring).

    ``inputs``: ``{"train": path, "valid": path or None, "test": path or None}``. ``min_count``: the
    default of fitted vocabularies (a column's own ``min_count`` wins; None: the spec's, else 10).
    Returns the store's metadata; raises :class:`InputError` on bad input or flags and
    :class:`StoreExistsError` if ``out_path`` exists and not ``overwrite``.
    """
    start = time.perf_counter()
    spec = spec if isinstance(spec, TableSpec) else load_spec(spec)
    paths = _check_inputs(inputs)
    out = Path(out_path)
    check_out(out, overwrite, inputs=[p for p in paths.values() if p is not None])
    check_common(split, min_count, chunk_size)
    if buffer_bytes < 0:
        raise InputError(f"--buffer-mb must be >= 0, got {buffer_bytes >> 20}")
    ratios = _split_ratios(split, paths)
    hashed = {c.vocab_name for c in spec.fields if c.hash_buckets is not None}
    bucket_dir = scratch_dir(out)
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="table") if WORKERS > 1 else None
    try:
        stats = _pass1(spec, paths["train"], ratios, seed, strict, block_bytes, progress, hashed, pool)
        enc = _fit(spec, stats, min_count)
        dtype = record_dtype(enc.schema)
        total_bytes = sum(p.stat().st_size for p in paths.values() if p is not None)
        estimate = stats.rows * total_bytes / max(paths["train"].stat().st_size, 1)
        buckets = ShuffleBuckets(bucket_dir, bucket_count(int(estimate), dtype.itemsize, BUCKET_BYTES, MAX_BUCKETS),
                                 dtype, buffer_bytes)
        bad_rows = BadRows()
        split_rows = _pass2(spec, paths, ratios, seed, strict, block_bytes, progress, enc, buckets, bad_rows, pool)
        check_split_rows(split_rows, str(paths["train"]))
        with StoreWriter(out, enc.schema, spec.name, chunk_size, overwrite, expected_rows=sum(split_rows)) as writer:
            for name, (values, spec_record) in ((n, v.record()) for n, v in enc.vocabs.items()):
                writer.put_vocabulary(name, values, spec_record)
            for name, t in enc.transforms.items():
                if t["transform"] == "bucketize":
                    writer.put_vocabulary(name, [], {"bucket_edges": t["edges"]})
            label_sums = _pass3(buckets, writer, seed, progress)
            writer.meta["options"] = {
                "spec": spec.source, "spec_name": spec.name, "inputs": {s: p.name for s, p in paths.items() if p},
                "min_count": min_count, "split": list(split), "seed": seed, "chunk_size": chunk_size}
            writer.meta["stats"] = {
                "rows": sum(label_sums[s][0] for s in SPLITS),
                "skipped_rows": sum(bad_rows.counts.values()), "skipped_by_reason": dict(bad_rows.counts),
                "skipped_first_lines": dict(bad_rows.first), "dense_transforms": enc.transforms,
                "label_means": {s: {lab: (float(v) / n if n else None) for lab, v in zip(enc.schema.labels, sums)}
                                for s, (n, sums) in label_sums.items()}}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(bucket_dir, ignore_errors=True)
    print(summary(writer.meta, out, time.perf_counter() - start))
    return writer.meta


def _bar(path: Path, desc: str, progress: bool) -> tqdm:
    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc, disable=not progress)


def _pass1(spec: TableSpec, path: Path, ratios: tuple[float, ...], seed: int, strict: bool, block_bytes: int,
           progress: bool, hashed: set[str], pool: ThreadPoolExecutor | None) -> TrainStats:
    """Read the train file: splits, and the train rows' counts, moments and samples."""
    stats = TrainStats(
        counts={c.vocab_name: ValueCounts() for c in spec.fields
                if c.kind in ("categorical", "multi") and c.vocab_name not in hashed},
        moments={c.name: Moments() for c in spec.fields if c.kind == "numeric" and c.transform == "standardize"},
        samples={c.name: QuantileSample(np.random.default_rng([seed, 3, j]))
                 for j, c in enumerate(spec.fields) if c.kind == "numeric" and c.transform == "bucketize"})
    assigner = SplitAssigner(ratios, seed)
    bad_rows = BadRows()
    with _bar(path, f"{spec.name} pass 1/3: count", progress) as bar:
        for parsed, _ in read_table(path, spec, bad_rows, strict, block_bytes, bar, pool):
            train = assigner.assign(len(parsed)) == 0
            stats.rows += len(parsed)
            stats.train_rows += int(train.sum())
            _count_block(stats, parsed if train.all() else parsed.take(train), spec, hashed)
    if not stats.rows:
        detail = f": {bad_rows.summary()}" if bad_rows.counts else ""
        raise InputError(f"{path} has no valid data rows{detail}; check the file and the spec")
    if not stats.train_rows:
        raise InputError("the train split is empty: give more rows or a larger train share in --split")
    return stats


def _pass2(spec: TableSpec, paths: dict[str, Path | None], ratios: tuple[float, ...], seed: int, strict: bool,
           block_bytes: int, progress: bool, enc: Encoders, buckets: ShuffleBuckets, bad_rows: BadRows,
           pool: ThreadPoolExecutor | None) -> list[int]:
    """Read every input again, encode and scatter its rows into the buckets. -> rows per split."""
    dtype = record_dtype(enc.schema)
    split_rows = np.zeros(len(SPLITS), np.int64)
    bucket_rng = np.random.default_rng([seed, 1])
    for role, path in paths.items():
        if path is None:
            continue
        assigner = SplitAssigner(ratios, seed) if role == "train" else None
        with _bar(path, f"{spec.name} pass 2/3: encode {role}", progress) as bar:
            for parsed, rec in read_table(path, spec, bad_rows, strict, block_bytes, bar, pool,
                                          then=lambda rows: _encode(rows, spec, enc, dtype)):
                n = len(parsed)
                rec["split"] = assigner.assign(n) if assigner else SPLITS.index(role)
                split_rows += np.bincount(rec["split"], minlength=len(SPLITS))
                buckets.add(rec, (bucket_rng.random(n) * len(buckets)).astype(np.int64))
    return split_rows.tolist()


def _pass3(buckets: ShuffleBuckets, writer: StoreWriter, seed: int, progress: bool) -> dict[str, tuple[int, np.ndarray]]:
    """Each bucket permuted, its rows appended to their splits. -> per split: rows and label sums (summed
    here, bucket by bucket, because bucket contents do not depend on block sizes)."""
    sums = {s: (0, np.zeros(writer.schema.num_tasks)) for s in SPLITS}
    for k, perm in tqdm(buckets.permutations(seed), total=len(buckets), desc="pass 3/3: shuffle + write",
                        unit="bucket", disable=not progress):
        for name, part in zip(SPLITS, buckets.take_by_split(k, perm)):
            a = {b.name: part[b.name] if b.width else np.zeros((len(part), 0), b.store_dtype)
                 for b in writer.schema.blocks()}
            writer.add(name, a["sparse"], a["dense"], a["label"], seq=a["seq"], seq_len=a["seq_len"],
                       seq_weight=a["seq_weight"])
            sums[name] = (sums[name][0] + len(part), sums[name][1] + a["label"].sum(axis=0, dtype=np.float64))
    return sums


def summary(meta: dict[str, Any], out: Path, seconds: float) -> str:
    """Rows per split, label means, field sizes, skipped rows and speed, as printable text."""
    schema = Schema.from_dict(meta["schema"])
    stats = meta["stats"]
    rows = stats["rows"]
    lines = [f"{meta['dataset']}: {rows:,} rows -> {out} in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)",
             "  split  " + f"{'rows':>10}" + "".join(f"{lab:>12}" for lab in schema.labels)]
    for name in SPLITS:
        means = stats["label_means"][name]
        cells = "".join(f"{'-':>12}" if means[lab] is None else f"{means[lab]:>12.4f}" for lab in schema.labels)
        lines.append(f"  {name:<7}{meta['splits'][name]['rows']:>10,}{cells}")
    lines.append(f"  {schema.num_sparse} sparse fields: "
                 + ", ".join(f"{f} {v}" for f, v in zip(schema.sparse_fields, schema.vocab_sizes)))
    if schema.num_sequences:
        lines.append("  sequence fields: " + ", ".join(f"{s.name} (vocab {s.vocab} {s.vocab_size}, max_len "
                                                       f"{s.max_len})" for s in schema.sequence_fields))
    lines.append(f"  {schema.num_dense} dense fields" + (f": {', '.join(schema.dense_fields)}" if schema.num_dense
                                                         else ""))
    skipped = stats["skipped_rows"]
    detail = "; ".join(f"{n:,} {k} (first at {', '.join(stats['skipped_first_lines'][k])})"
                       for k, n in stats["skipped_by_reason"].items())
    lines.append(f"  skipped rows: {skipped:,}" + (f": {detail}" if skipped else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command line


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every spec-driven dataset (on top of preprocess.py's common ones)."""
    parser.add_argument("--valid-input", default=None, help="a file that becomes the valid split whole")
    parser.add_argument("--test-input", default=None, help="a file that becomes the test split whole")
    parser.add_argument("--buffer-mb", type=int, default=BUFFER_BYTES >> 20,
                        help="shuffle rows held in memory before they spill to files beside --out")
    parser.set_defaults(min_count=None)  # None: each column's own, else the spec's min_count, else 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="the TOML spec of the table (see dataset/specs/)")
    parser.add_argument("--input", required=True, help="the train file (CSV/TSV, plain or gzip)")
    add_input_arguments(parser)


def run(args: argparse.Namespace, spec: TableSpec | str | os.PathLike) -> int:
    """Preprocess with the common flags of preprocess.py and those of :func:`add_input_arguments` (errors are
    raised for preprocess.py to print)."""
    ratios = check_common(args.split, args.min_count, args.chunk_size)
    preprocess_table(spec, {"train": args.input, "valid": args.valid_input, "test": args.test_input},
                     args.out, min_count=args.min_count, split=ratios, seed=args.seed, chunk_size=args.chunk_size,
                     overwrite=args.overwrite, strict=args.strict, buffer_bytes=args.buffer_mb << 20)
    return 0


def main(args: argparse.Namespace) -> int:
    return run(args, args.spec)
