"""libfm: libFM text (``label index:value ...``), one active feature per field -> LMDB store.

    python preprocess.py libfm --input a.libfm [b.libfm ...] [--fields user,item,...] [--split-by-file]
    python preprocess.py frappe --input ../shared/data/frappe/frappe.validation.libfm \\
        ../shared/data/frappe/frappe.test.libfm        # Frappe's fields and protocol (dataset/frappe.py)

Input: one row per line, whitespace-separated: a label, then ``index:value`` features; plain or gzip,
``\\r\\n`` accepted, blank lines ignored. Several files are read as one stream in the given order: the split
draws, bad-row counts and ``--strict`` treat them as one file; line numbers name the file they are in.

**Fields.** The rows are one-hot categorical fields, as libFM stores FM / NFM data: field ``k`` owns a
contiguous range of feature indices and every row has exactly one active feature in each field, so field
``k`` of a row is its ``k``-th feature in index order. The ranges are

* given: ``--fields user:0-956,item:957-5038,...`` (ascending and disjoint), or
* inferred (``--fields user,item,...``, names only; or no ``--fields``: names ``f0, f1, ...``): a first pass
  counts, for each feature index, the positions it takes in the sorted features of the rows with F
  features (F: the number of names, or else the most common feature count); an index belongs to the position
  it takes most often. The indices of each position must form one contiguous run (else the file is not
  grouped by field: an error that asks for explicit ranges); field ``k`` then runs from its smallest index
  to just below field ``k + 1``'s smallest, the last field to the largest index seen.

A row whose F features do not fall one in each range (a field with no feature or with two, an index
between ranges) is a bad row of kind ``range``; so is a row with another feature count (kind ``fields``).

Each field becomes a sparse field of the store (no dense fields) whose raw values are the feature indices,
encoded by a :class:`~dataset.vocab.Vocabulary` fit on the train split only: id 0 = OOV (an index seen
fewer than ``--min-count`` times in train, or never), 1 = missing (never produced: every kept row has every
field), 2.. = the kept indices in sorted order of their decimal strings. Each field's vocabulary and index
range are kept with the store (``__vocab__/<field>``), so new rows can be encoded the same way.
``--min-count`` defaults to 1 here: libFM files are already encoded, and NFM and the BARS Frappe_x1
benchmark keep every feature (BARS: ``min_categr_count=1``).

**Values.** Every value must be 1 (``1``, ``1.0``, ...). A row with another value is a bad row (kind
``value``), not a dense field: a one-hot field has no value, a real-valued feature would be a dense field
this format gives no name or range to, and silently dropping the value would change the data. Frappe has
only ``:1``.

**Labels.** ``1`` (also ``+1``, ``1.0``) -> 1; ``-1`` and ``0`` -> 0: one binary label, ``label``.

**Split.** ``--split`` ratios, one seeded draw per kept row in stream order (dataset/split.py); or, with
``--split-by-file``, the three inputs are the train, valid and test files as they are.

Bad rows (:data:`BAD_ROW_KINDS`, a row counted under the first check it fails) are skipped and counted per
kind with their first line numbers; with ``--strict`` the first one is an error naming its file and line.
Same input and flags give a byte-identical ``data.mdb`` (nothing depends on hash seeds or timing).

Memory stays bounded whatever the input size. The text is read in blocks of whole lines, each tokenized by
numpy alone (:func:`tokenize`). Pass 1 (only when ranges are inferred) counts (position, index) pairs.
Pass 2 checks every row, assigns splits, counts the train indices and scatters each kept row, as a small
binary record, into one of K shuffle buckets (in memory up to ``SPILL_BYTES``, then appended to files in
``<out>.tmp-<pid>-buckets``, deleted at the end). Pass 3 loads one bucket at a time, permutes it (seeded),
encodes and writes it: a random bucket and a random order inside it shuffle each split once, at write time.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from dataset.buckets import ShuffleBuckets
from dataset.raw import InputError, is_gzip, open_raw
from dataset.schema import Schema
from dataset.split import SPLITS, SplitAssigner, check_common, check_split_rows
from dataset.store import StoreWriter, check_out, scratch_dir
from dataset.vocab import Vocabulary

LABEL = "label"
BAD_ROW_KINDS = {
    "syntax": "not `label index:value ...` (a feature without exactly one ':' inside it, or a ':' in the label)",
    "label": "label is not 1, -1 or 0",
    "index": "a feature index is not an integer in 0..2147483647",
    "value": "a feature value is not 1 (only one-hot fields are read)",
    "fields": "wrong number of features (a row has one per field)",
    "range": "the features do not fall one in each field's index range",
}
_CODE = {kind: i + 1 for i, kind in enumerate(BAD_ROW_KINDS)}  # kind code of a line; 0 = a good row
BLANK = -1
FIRST_LINES_KEPT = 10  # bad-row locations remembered per kind

BLOCK_BYTES = 1 << 20  # text tokenized at a time
COUNT_KEYS = 1 << 22  # keys buffered before they are merged into running counts (more once those grow)
BUCKET_TEXT_BYTES = 64 << 20  # input text per shuffle bucket (a row's record is smaller than its text)
MAX_BUCKETS = 512
SPILL_BYTES = 256 << 20  # bucket records held in memory before they are appended to files
MAX_LINE_BYTES = 64 << 20  # a longer line is not libFM text (and would have to be held whole)
INDEX_DIGITS = 10
MAX_INDEX = (1 << 31) - 1  # indices are stored as int32
TABLE_MAX = 1 << 24  # fields with a narrower index range encode through a lookup table (int32 each)

_SPACE = np.zeros(256, dtype=bool)
_SPACE[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def _bytes(byte: int) -> np.uint64:
    """``byte`` in each of the 8 bytes of a uint64 (SWAR constants)."""
    return np.uint64(byte * 0x0101010101010101)


# --------------------------------------------------------------------------------------------- tokenizer


@dataclass
class Lines:
    """One block of text, tokenized and checked line by line.

    Attributes:
        kind: int8 [lines]: 0 a well-formed row, ``BLANK`` an empty line, else the code (:data:`_CODE`) of
            the first syntax, label, index or value check it fails (field counts and ranges are the
            caller's: they need the field layout).
        label: uint8 [lines], 0/1 (meaningful where ``kind == 0``).
        n_features: int64 [lines], words after the label.
        index: int64 [sum n_features], the feature indices of every line, line after line, in file order
            (meaningful for lines with ``kind == 0``).
    """

    kind: np.ndarray
    label: np.ndarray
    n_features: np.ndarray
    index: np.ndarray

    def features(self, rows: np.ndarray, width: int) -> np.ndarray:
        """Feature indices of ``rows`` (line numbers in the block, each with ``width`` features), sorted
        along each row -> int64 [len(rows), width]."""
        first = np.cumsum(self.n_features) - self.n_features
        return np.sort(self.index[first[rows, None] + np.arange(width)], axis=1)


def _slow_tokens(text: bytes, starts: np.ndarray, ends: np.ndarray, parse) -> tuple[np.ndarray, np.ndarray]:
    """The rare spellings (``1.0``, ``+1``, junk): ``parse(token) -> (value, ok)`` once per distinct token."""
    tokens = [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    seen = {t: parse(t) for t in set(tokens)}
    pairs = [seen[t] for t in tokens]
    return (np.array([v for v, _ in pairs], dtype=np.int64).reshape(-1),
            np.array([ok for _, ok in pairs], dtype=bool).reshape(-1))


def _number(token: bytes) -> float | None:
    """A label or value spelled as Python reads a float (``+1``, ``1.0``, ``1e0``), else None. Control bytes
    are refused, though ``float`` would strip some."""
    if min(token) <= ord(" "):
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _parse_label(token: bytes) -> tuple[int, bool]:
    value = _number(token)
    return int(value == 1.0), value in (1.0, 0.0, -1.0)


def _parse_one(token: bytes) -> tuple[int, bool]:
    return 1, _number(token) == 1.0


def _labels(text: bytes, a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label words -> (0/1, ok). ``1``, ``0`` and ``-1`` are decoded in bulk, other spellings one by one."""
    length = ends - starts
    first = a[starts]
    second = a[np.minimum(starts + 1, len(a) - 1)]
    one = (length == 1) & (first == ord("1"))
    ok = one | ((length == 1) & (first == ord("0"))) | ((length == 2) & (first == ord("-")) & (second == ord("1")))
    value = one.astype(np.int64)
    rare = np.flatnonzero(~ok)
    if len(rare):
        value[rare], ok[rare] = _slow_tokens(text, starts[rare], ends[rare], _parse_label)
    return value, ok


def _parse_index(token: bytes) -> tuple[int, bool]:
    value = int(token) if token.isdigit() and len(token) <= INDEX_DIGITS else -1
    return value, 0 <= value <= MAX_INDEX


def _indices(padded: np.ndarray, text: bytes, starts: np.ndarray,
             ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index tokens ``text[starts:ends]`` -> (int64 value, ok: 1 to 10 decimal digits, at most MAX_INDEX).

    ``padded`` is the text after 8 zero bytes. A token of up to 8 digits is decoded from the 8 bytes that end
    it, read as one little-endian uint64 (first byte lowest), eight digits at a time (SWAR): the bytes before
    the token are zeroed (they read as leading zeros), every token byte must be 0x30..0x39, and three
    multiply-shift steps combine digit pairs, pairs of pairs, and quads. Longer tokens are parsed one by one.
    """
    length = ends - starts
    window = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))  # [i]: padded[i:i + 8]
    keep = _ALL_ONES << (np.uint64(8) * (8 - np.clip(length, 1, 8)).astype(np.uint64))
    x = window[ends] & keep  # text[end - 8:end] is padded[end:end + 8]
    ok = ((x & _bytes(0xF0)) == (_bytes(0x30) & keep)) & (length >= 1)
    digits = x & _bytes(0x0F)
    ok &= ((digits + _bytes(0x06)) & _bytes(0x10)) == 0  # every digit <= 9
    v = ((digits * np.uint64(10 << 8 | 1)) >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)
    v = ((v * np.uint64(100 << 16 | 1)) >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    value = (((v * np.uint64(10000 << 32 | 1)) >> np.uint64(32)) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    long = np.flatnonzero(length > 8)
    if len(long):
        value[long], ok[long] = _slow_tokens(text, starts[long], ends[long], _parse_index)
    return value, ok


def _values_ok(text: bytes, a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Value tokens -> ok: the value is 1 (``1`` in bulk; ``1.0`` and the like one by one)."""
    ok = (ends - starts == 1) & (a[np.minimum(starts, len(a) - 1)] == ord("1"))
    rare = np.flatnonzero(~ok)
    if len(rare):
        ok[rare] = _slow_tokens(text, starts[rare], ends[rare], _parse_one)[1]
    return ok


def tokenize(text: bytes) -> Lines:
    """Tokenize and check whole lines of libFM text (``text`` ends with ``\\n``), vectorized.

    Words are the runs of bytes other than space, tab, ``\\r`` and ``\\n``; a line's first word is its label,
    every later word must hold exactly one ``:`` with an index before it and a value after it. Other control
    bytes are part of a word, so they make a row bad (a block without them takes a faster test for spaces)."""
    a = np.frombuffer(text, dtype=np.uint8)
    padded = np.zeros(len(a) + 8, dtype=np.uint8)
    padded[8:] = a
    newlines = np.flatnonzero(a == ord("\n"))
    n_lines = len(newlines)
    space = np.ones(len(a) + 2, dtype=bool)  # with a virtual space before and after the text
    controls = np.count_nonzero(a < ord(" "))
    usual = n_lines + np.count_nonzero(a == ord("\r")) + np.count_nonzero(a == ord("\t"))
    space[1:-1] = (a <= ord(" ")) if controls == usual else _SPACE[a]
    bounds = np.flatnonzero(np.diff(space.view(np.int8)))  # space -> word at a start, word -> space at an end
    starts, ends = bounds[0::2], bounds[1::2]  # [words]; a word is text[start:end]
    before = np.searchsorted(starts, newlines)  # words that start before each line's end
    words = np.diff(before, prepend=0)
    line_of = np.repeat(np.arange(n_lines), words)
    is_label = np.zeros(len(starts), dtype=bool)
    is_label[(before - words)[words > 0]] = True

    colons = np.flatnonzero(a == ord(":"))
    feature = ~is_label
    f_start, f_end = starts[feature], ends[feature]
    f_line = np.repeat(np.arange(n_lines), np.maximum(words - 1, 0))
    # Well-formed text has exactly one colon strictly inside every feature word and none elsewhere: then
    # the i-th colon is inside the i-th feature word, and checking that pairing proves the whole block.
    # Otherwise each colon is attributed to its word and words are judged one by one.
    if len(colons) == len(f_start) and ((colons > f_start) & (colons < f_end - 1)).all():
        f_colon, well_formed = colons, np.ones(len(starts), dtype=bool)
    else:
        word_of_colon = np.searchsorted(starts, colons, side="right") - 1  # a colon is inside a word
        n_colons = np.bincount(word_of_colon, minlength=len(starts))
        colon = np.zeros(len(starts), dtype=np.int64)
        colon[word_of_colon] = colons  # exact for words with one colon, the only ones whose colon is used
        well_formed = np.where(is_label, n_colons == 0, (n_colons == 1) & (colon > starts) & (colon < ends - 1))
        f_colon = colon[feature]

    label, label_ok = _labels(text, a, starts[is_label], ends[is_label])
    index, index_ok = _indices(padded, text, f_start, f_colon)
    formed = np.flatnonzero(well_formed[feature])
    value_ok = np.ones(len(f_start), dtype=bool)
    value_ok[formed] = _values_ok(text, a, f_colon[formed] + 1, f_end[formed])

    def any_per_line(bad: np.ndarray, lines: np.ndarray) -> np.ndarray:
        return np.bincount(lines[bad], minlength=n_lines) > 0

    kind = np.zeros(n_lines, dtype=np.int8)  # assigned last check first, so the first failing check wins
    kind[any_per_line(~value_ok, f_line)] = _CODE["value"]
    kind[any_per_line(~index_ok, f_line)] = _CODE["index"]
    kind[line_of[is_label][~label_ok]] = _CODE["label"]
    kind[any_per_line(~well_formed, line_of)] = _CODE["syntax"]
    kind[words == 0] = BLANK
    line_label = np.zeros(n_lines, dtype=np.uint8)
    line_label[line_of[is_label]] = label
    return Lines(kind, line_label, np.maximum(words - 1, 0), index)


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Block:
    """Whole lines of one input file: ``text`` ends with ``\\n``; its first line is line ``first_line``
    (1-based) of file number ``file`` of the stream."""

    file: int
    first_line: int
    text: bytes
    lines: Lines


def _text_blocks(paths: Sequence[Path], block_bytes: int, bar: tqdm | None) -> Iterator[tuple[int, int, bytes]]:
    """(file number, its first line number, whole lines of text ending with ``\\n``) for the files in turn; a
    last line without its newline gets one."""
    for number, path in enumerate(paths):
        stream, raw = open_raw(path)
        line, tail, done = 1, b"", 0
        with stream:
            while True:
                data = stream.read(block_bytes)
                if bar is not None:
                    bar.update(raw.tell() - done)
                    done = raw.tell()
                if not data:
                    if tail:
                        yield number, line, tail + b"\n"
                    break
                data = tail + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no newline yet: one unfinished line
                    if len(data) > MAX_LINE_BYTES:
                        raise InputError(f"{path}:{line}: a line of more than {MAX_LINE_BYTES >> 20} MiB; "
                                         f"this is not libFM text (one row per line)")
                    tail = data
                    continue
                text, tail = data[:cut], data[cut:]
                yield number, line, text
                line += text.count(b"\n")


def read_blocks(paths: Sequence[Path], block_bytes: int, bar: tqdm | None = None) -> Iterator[Block]:
    """The input files as one stream of tokenized blocks of whole lines, in order."""
    for number, line, text in _text_blocks(paths, block_bytes, bar):
        yield Block(number, line, text, tokenize(text))


# -------------------------------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class FieldLayout:
    """Field names and the inclusive feature-index range of each: field ``k`` owns ``lo[k]..hi[k]``."""

    names: tuple[str, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    inferred: bool

    def __len__(self) -> int:
        return len(self.names)

    def contains(self, index: np.ndarray) -> np.ndarray:
        """Sorted feature indices [n, F] -> bool [n]: the k-th feature of the row lies in field k's range."""
        return ((index >= np.asarray(self.lo)) & (index <= np.asarray(self.hi))).all(axis=1)

    def spec(self) -> str:
        """The ``--fields`` text that gives this layout explicitly."""
        return ",".join(f"{n}:{lo}-{hi}" for n, lo, hi in zip(self.names, self.lo, self.hi))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "ranges": [[lo, hi] for lo, hi in zip(self.lo, self.hi)],
                "inferred": self.inferred}


def parse_fields(text: str | None) -> tuple[tuple[str, ...], FieldLayout | None]:
    """``--fields`` -> (names, the layout if ranges were given). ``name,name,...`` gives names only;
    ``name:lo-hi,...`` gives names and ranges (every field, ascending, disjoint)."""
    if not text:
        return (), None
    names, ranges = [], []
    for entry in text.split(","):
        name, sep, span = entry.strip().partition(":")
        lo, dash, hi = span.partition("-")
        if not name or (sep and not (dash and lo.strip().isdigit() and hi.strip().isdigit())):
            raise InputError(f"--fields: {entry!r} is not NAME or NAME:LO-HI (e.g. user:0-956)")
        names.append(name.strip())
        ranges.append((int(lo), int(hi)) if sep else None)
    if len(set(names)) != len(names):
        raise InputError(f"--fields names a field twice: {names}")
    if all(r is None for r in ranges):
        return tuple(names), None
    if any(r is None for r in ranges):
        raise InputError("--fields: give a range to every field (NAME:LO-HI) or to none")
    for k, (lo, hi) in enumerate(ranges):
        if lo > hi or hi > MAX_INDEX or (k and lo <= ranges[k - 1][1]):
            raise InputError(f"--fields: ranges must be ascending and disjoint, with indices up to {MAX_INDEX}; "
                             f"{names[k]}:{lo}-{hi} is not")
    return tuple(names), FieldLayout(tuple(names), tuple(r[0] for r in ranges), tuple(r[1] for r in ranges), False)


class Tally:
    """Counts of int64 keys. Keys are buffered and merged into the sorted running counts in batches that
    grow with them, so counting n keys costs about n log n whatever the number of distinct keys."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def add(self, keys: np.ndarray) -> None:
        self._buffer.append(np.asarray(keys, dtype=np.int64).ravel())
        self._buffered += self._buffer[-1].size
        if self._buffered >= max(COUNT_KEYS, len(self.keys)):
            self.flush()

    def flush(self) -> "Tally":
        if self._buffered:
            new, new_counts = np.unique(np.concatenate(self._buffer), return_counts=True)
            keys = np.concatenate([self.keys, new])
            counts = np.concatenate([self.counts, new_counts])
            order = np.argsort(keys, kind="stable")
            keys, counts = keys[order], counts[order]
            first = np.flatnonzero(np.diff(keys, prepend=keys[0] - 1) != 0)
            self.keys, self.counts = keys[first], np.add.reduceat(counts, first)
        self._buffer, self._buffered = [], 0
        return self


def _pair_keys(index: np.ndarray) -> np.ndarray:
    """Sorted feature indices [n, F] -> keys ``position << 32 | index`` [n * F]."""
    return ((np.arange(index.shape[1], dtype=np.int64) << 32) + index).ravel()


def infer_layout(paths: Sequence[Path], names: Sequence[str], block_bytes: int = BLOCK_BYTES) -> FieldLayout:
    """Pass 1: the field ranges from the data (see the module docstring). ``names`` fixes the number of
    fields; empty: the most common feature count, fields named ``f0, f1, ...``."""
    rows_with: dict[int, int] = {}
    pairs: dict[int, Tally] = {}
    with tqdm(total=_input_bytes(paths), unit="B", unit_scale=True, desc="libfm pass 1/3: infer fields",
              disable=None) as bar:
        for block in read_blocks(paths, block_bytes, bar):
            good = block.lines.kind == 0
            counts = block.lines.n_features[good]
            for n in np.unique(counts[counts > 0]).tolist():
                if names and n != len(names):
                    continue
                rows = np.flatnonzero(good & (block.lines.n_features == n))
                rows_with[n] = rows_with.get(n, 0) + len(rows)
                pairs.setdefault(n, Tally()).add(_pair_keys(block.lines.features(rows, n)))
    if not rows_with:
        want = f"with {len(names)} features " if names else ""
        raise InputError(f"{_describe(paths)} has no well-formed row {want}(`label index:value ...`); "
                         f"check --input" + (" and --fields" if names else ""))
    n_fields = len(names) or max(rows_with, key=lambda n: (rows_with[n], -n))
    tally = pairs[n_fields].flush()
    position, index = tally.keys >> 32, tally.keys & 0xFFFFFFFF
    order = np.lexsort((-tally.counts, index))  # by index; its most frequent position first (ties: lowest)
    index, position = index[order], position[order]
    first = np.flatnonzero(np.diff(index, prepend=-1) != 0)
    index, field_of = index[first], position[first]  # distinct indices, ascending, and their fields
    back = np.flatnonzero(np.diff(field_of) < 0)
    if len(back) or len(np.unique(field_of)) != n_fields:
        where = (f"index {index[back[0]]} is mostly feature {field_of[back[0]] + 1} of its row but index "
                 f"{index[back[0] + 1]} is mostly feature {field_of[back[0] + 1] + 1}" if len(back)
                 else f"only {len(np.unique(field_of))} of the {n_fields} positions own an index")
        raise InputError(f"{_describe(paths)}: the feature indices are not grouped by field ({where}); give the "
                         f"ranges with --fields NAME:LO-HI,...")
    lo = index[np.searchsorted(field_of, np.arange(n_fields))]
    hi = np.append(lo[1:] - 1, index[-1])
    names = tuple(names) or tuple(f"f{k}" for k in range(n_fields))
    return FieldLayout(names, tuple(lo.tolist()), tuple(hi.tolist()), True)


# ----------------------------------------------------------------------------------------- pass 2: check


def _record_dtype(n_fields: int) -> np.dtype:
    """A row waiting in a shuffle bucket: its sorted feature indices, label and split (a multiple of 4 bytes)."""
    return np.dtype([("index", "<i4", (n_fields,)), ("label", "u1"), ("split", "u1"), ("pad", "u1", (2,))])


@dataclass
class Scan:
    """What pass 2 learned: lines read, kept rows and positives per split, bad rows (counts and first
    locations per kind), and the train counts of ``field << 32 | index`` keys."""

    lines: int = 0
    rows: list[int] = field(default_factory=lambda: [0, 0, 0])
    positives: list[int] = field(default_factory=lambda: [0, 0, 0])
    bad: dict[str, int] = field(default_factory=dict)
    bad_lines: dict[str, list[str]] = field(default_factory=dict)
    train: Tally = field(default_factory=Tally)


def _line_text(block: Block, i: int) -> str:
    start = 0
    for _ in range(i):
        start = block.text.index(b"\n", start) + 1
    return block.text[start:block.text.index(b"\n", start)][:120].decode("latin-1").rstrip("\r")


def scan_rows(paths: Sequence[Path], layout: FieldLayout, splits: SplitAssigner | None, buckets: ShuffleBuckets,
              seed: int, strict: bool, block_bytes: int = BLOCK_BYTES) -> Scan:
    """Pass 2: check every row against ``layout``, assign splits (``splits``; None: by file), count the
    train indices per field and scatter the kept rows into ``buckets`` (one seeded draw per kept row)."""
    scan = Scan()
    bucket_rng = np.random.default_rng([seed, 1])
    n_fields = len(layout)
    with tqdm(total=_input_bytes(paths), unit="B", unit_scale=True, desc="libfm pass 2/3: check + split",
              disable=None) as bar:
        for block in read_blocks(paths, block_bytes, bar):
            lines = block.lines
            kind = lines.kind.copy()
            kind[(kind == 0) & (lines.n_features != n_fields)] = _CODE["fields"]
            rows = np.flatnonzero(kind == 0)
            index = lines.features(rows, n_fields)
            inside = layout.contains(index)
            kind[rows[~inside]] = _CODE["range"]
            rows, index = rows[inside], index[inside]
            _count_bad(scan, block, paths, kind, strict)
            scan.lines += len(kind)
            split = (np.full(len(rows), block.file, dtype=np.int8) if splits is None
                     else splits.assign(len(rows)))
            label = lines.label[rows]
            scan.rows = [n + int(c) for n, c in zip(scan.rows, np.bincount(split, minlength=3))]
            scan.positives = [n + int(c) for n, c in zip(scan.positives, np.bincount(split, label, minlength=3))]
            scan.train.add(_pair_keys(index[split == 0]))
            rec = np.zeros(len(rows), dtype=buckets.dtype)
            rec["index"], rec["label"], rec["split"] = index, label, split
            buckets.add(rec, bucket_rng.integers(len(buckets), size=len(rows)))
    scan.train.flush()
    return scan


def _count_bad(scan: Scan, block: Block, paths: Sequence[Path], kind: np.ndarray, strict: bool) -> None:
    """Count the bad lines of a block per kind and keep the first locations; ``strict``: raise at the first."""
    bad = np.flatnonzero(kind > 0)
    if not len(bad):
        return
    names = list(BAD_ROW_KINDS)
    path = paths[block.file]
    if strict:
        i = int(bad[0])
        raise InputError(f"{path}:{block.first_line + i}: {BAD_ROW_KINDS[names[kind[i] - 1]]}: "
                         f"{_line_text(block, i)!r}; fix or delete that line, or drop --strict to skip bad rows")
    for code in np.unique(kind[bad]).tolist():
        at = bad[kind[bad] == code]
        name = names[code - 1]
        scan.bad[name] = scan.bad.get(name, 0) + len(at)
        kept = scan.bad_lines.setdefault(name, [])
        kept.extend(f"{path.name}:{block.first_line + int(i)}" for i in at[:FIRST_LINES_KEPT - len(kept)])


# ------------------------------------------------------------------------------------ pass 3: encode, write


@dataclass
class FieldEncoder:
    """One field's vocabulary, plus a lookup on integer indices that gives the ids ``vocab.encode`` gives
    their decimal strings: ``codes`` the kept indices ascending, ``ids`` their ids. For a field whose index
    range is at most ``TABLE_MAX`` wide, ``table[index - lo]`` is the id of every index in the range."""

    vocab: Vocabulary
    codes: np.ndarray
    ids: np.ndarray
    lo: int
    table: np.ndarray | None

    @classmethod
    def fit(cls, indices: np.ndarray, counts: np.ndarray, min_count: int, lo: int, hi: int) -> "FieldEncoder":
        """``indices`` ascending with their train counts; ``lo..hi`` the field's index range."""
        kept = indices[counts >= min_count]
        strings = [str(i) for i in kept.tolist()]
        vocab = Vocabulary(strings)
        ids = vocab.encode(np.array(strings, dtype=object))
        table = None
        if hi - lo < TABLE_MAX:
            table = np.zeros(hi - lo + 1, dtype=np.int32)  # OOV unless kept
            table[kept - lo] = ids
        return cls(vocab, kept, ids, lo, table)

    def encode(self, index: np.ndarray) -> np.ndarray:
        """Indices [n], all inside the field's range -> ids int32 [n] (0: not kept)."""
        if self.table is not None:
            return self.table[index - self.lo]
        if not len(self.codes):
            return np.zeros(len(index), dtype=np.int32)
        pos = np.minimum(np.searchsorted(self.codes, index), len(self.codes) - 1)
        return np.where(self.codes[pos] == index, self.ids[pos], 0).astype(np.int32)

    def __len__(self) -> int:
        return len(self.vocab)


def fit_encoders(train: Tally, layout: FieldLayout, min_count: int) -> list[FieldEncoder]:
    """Per field, the vocabulary of its train indices (keys ``field << 32 | index``, sorted)."""
    bounds = np.searchsorted(train.keys, np.arange(len(layout) + 1, dtype=np.int64) << 32)
    return [FieldEncoder.fit(train.keys[start:end] & 0xFFFFFFFF, train.counts[start:end], min_count, lo, hi)
            for start, end, lo, hi in zip(bounds[:-1], bounds[1:], layout.lo, layout.hi)]


def write_rows(buckets: ShuffleBuckets, encoders: list[FieldEncoder], writer: StoreWriter, seed: int) -> None:
    """Pass 3: each bucket in turn, permuted (seeded) and grouped by split, encoded and appended."""
    for k, perm in buckets.permutations(seed):
        for name, part in zip(SPLITS, buckets.take_by_split(k, perm)):
            if not len(part):
                continue
            index = np.ascontiguousarray(part["index"].T)  # [F, m]: one contiguous row per field
            sparse = np.stack([enc.encode(index[j]) for j, enc in enumerate(encoders)], axis=1)
            writer.add(name, sparse, np.zeros((len(part), 0), np.float32), part["label"].astype(np.float32)[:, None])


# ------------------------------------------------------------------------------------------- entry points


def _input_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def _describe(paths: Sequence[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"the {len(paths)} input files ({', '.join(map(str, paths))})"


def _n_buckets(paths: Sequence[Path]) -> int:
    """Buckets for about BUCKET_TEXT_BYTES of input text each (gzip assumed 4x compressed)."""
    text = sum(p.stat().st_size * (4 if is_gzip(p) else 1) for p in paths)
    return int(min(MAX_BUCKETS, max(1, math.ceil(text / BUCKET_TEXT_BYTES))))


def _bad_summary(scan: Scan) -> str:
    return "; ".join(f"{scan.bad[k]:,} {k} ({BAD_ROW_KINDS[k]}; first at {', '.join(scan.bad_lines[k])})"
                     for k in BAD_ROW_KINDS if k in scan.bad)


def summary(meta: dict[str, Any], out: Path, seconds: float) -> str:
    """Rows per split with positive rates, fields with index ranges and vocab sizes, bad rows, speed."""
    stats, schema = meta["stats"], Schema.from_dict(meta["schema"])
    rows = sum(s["rows"] for s in meta["splits"].values())
    layout = meta["options"]["fields"]
    how = "inferred from the data" if layout["inferred"] else "given"
    fields = ", ".join(f"{n} {lo}-{hi} ({v})" for n, (lo, hi), v in zip(layout["names"], layout["ranges"],
                                                                         schema.vocab_sizes))
    rates = stats["label_rates"]
    skipped = sum(stats["skipped"].values())
    return "\n".join([
        f"{meta['dataset']} -> {out}: {rows:,} rows from {stats['lines']:,} lines of "
        f"{', '.join(meta['options']['input'])} in {seconds:.2f} s ({stats['lines'] / max(seconds, 1e-9):,.0f} rows/s)",
        "  " + ", ".join(f"{name} {s['rows']:,} rows ({rates[name]:.2%} positive)" if rates[name] is not None
                         else f"{name} 0 rows" for name, s in meta["splits"].items()),
        f"  {schema.num_sparse} fields, index ranges {how} (vocab sizes): {fields}",
        f"  skipped {skipped:,} bad rows" + (f": {stats['skipped_summary']}" if skipped else ""),
    ])


def preprocess_libfm(inputs: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, dataset: str = "libfm",
                     fields: str | None = None, min_count: int = 1,
                     split: tuple[float, float, float] = (0.8, 0.1, 0.1), split_by_file: bool = False,
                     seed: int = 2018, chunk_size: int = 8192, overwrite: bool = False, strict: bool = False,
                     user_field: str | None = None, block_bytes: int = BLOCK_BYTES) -> dict[str, Any]:
    """libFM files (plain or gzip), read as one stream -> LMDB store at ``out_path`` (module docstring).

    ``fields``: the ``--fields`` text (names, or names with ranges; None: inferred, named ``f0..``).
    ``split_by_file``: the three inputs are the train, valid and test splits (``split`` is then unused).
    Returns the store's metadata record. Raises :class:`InputError` on missing or empty inputs, bad flags,
    no kept row, or (``strict``) the first bad row; :class:`StoreExistsError` if the store exists and not
    ``overwrite``.
    """
    start = time.perf_counter()
    paths, out = [Path(p) for p in inputs], Path(out_path)
    names, layout = parse_fields(fields)
    ratios = _check_options(paths, min_count, split, split_by_file, chunk_size)
    check_out(out, overwrite, inputs=paths)
    if layout is None:
        layout = infer_layout(paths, names, block_bytes)
    if user_field is not None and user_field not in layout.names:
        raise InputError(f"user field {user_field!r} is not one of the fields {list(layout.names)}")
    bucket_dir = scratch_dir(out)
    buckets = ShuffleBuckets(bucket_dir, _n_buckets(paths), _record_dtype(len(layout)), SPILL_BYTES)
    try:
        assigner = None if split_by_file else SplitAssigner(ratios, seed)
        scan = scan_rows(paths, layout, assigner, buckets, seed, strict, block_bytes)
        if not sum(scan.rows):
            raise InputError(f"{_describe(paths)}: none of its {scan.lines:,} lines is a row with one feature in "
                             f"each field ({layout.spec()}): {_bad_summary(scan)}; check --input and --fields")
        check_split_rows(scan.rows, _describe(paths))
        encoders = fit_encoders(scan.train, layout, min_count)
        schema = Schema(layout.names, [len(e) for e in encoders], (), (LABEL,), user_field=user_field)
        with StoreWriter(out, schema, dataset, chunk_size, overwrite, expected_rows=sum(scan.rows)) as writer:
            for name, enc, lo, hi in zip(layout.names, encoders, layout.lo, layout.hi):
                writer.put_vocabulary(name, enc.vocab.values(), {"index_range": [lo, hi]})
            writer.meta["options"] = {
                "input": [p.name for p in paths], "fields": layout.to_dict(), "min_count": min_count,
                "split": "by file" if split_by_file else list(ratios), "seed": seed, "chunk_size": chunk_size}
            writer.meta["stats"] = {
                "lines": scan.lines, "rows": sum(scan.rows), "skipped": dict(scan.bad),
                "skipped_lines": dict(scan.bad_lines), "skipped_summary": _bad_summary(scan),
                "label_rates": {s: (p / n if n else None) for s, p, n in zip(SPLITS, scan.positives, scan.rows)}}
            write_rows(buckets, encoders, writer, seed)
    finally:
        shutil.rmtree(bucket_dir, ignore_errors=True)
    print(summary(writer.meta, out, time.perf_counter() - start))
    return writer.meta


def _check_options(paths: Sequence[Path], min_count: int, split: tuple[float, float, float], split_by_file: bool,
                   chunk_size: int) -> tuple[float, float, float]:
    """Validate inputs and flags -> normalized split ratios."""
    if not paths:
        raise InputError("no input: pass --input FILE [FILE ...]")
    for p in paths:
        if not p.is_file():
            raise InputError(f"input file {p} does not exist; check --input")
    if all(p.stat().st_size == 0 for p in paths):
        raise InputError(f"{_describe(paths)} is empty; pass libFM files with --input")
    if split_by_file and len(paths) != 3:
        raise InputError(f"--split-by-file needs three inputs (train, valid, test), got {len(paths)}")
    return check_common(split, min_count, chunk_size)


def add_arguments(parser: argparse.ArgumentParser, input_default: str | None = None) -> None:
    """The libfm flags; ``input_default`` (a description) makes ``--input`` optional."""
    parser.add_argument("--input", nargs="+", required=input_default is None, metavar="FILE",
                        help="libFM files (plain or .gz), read as one stream in this order"
                             + (f" (default {input_default})" if input_default else ""))
    parser.add_argument("--fields", default=None,
                        help="field names (user,item,...: ranges inferred from the data) or names with index "
                             "ranges (user:0-956,item:957-5038,...) (default: inferred, named f0, f1, ...)")
    parser.add_argument("--split-by-file", action="store_true",
                        help="the three inputs are the train, valid and test splits (instead of --split)")
    parser.set_defaults(min_count=1)


def main(args: argparse.Namespace, dataset: str = "libfm", user_field: str | None = None) -> int:
    """Preprocess with the parsed flags of preprocess.py (which prints the errors)."""
    ratios = check_common(args.split, args.min_count, args.chunk_size)
    preprocess_libfm(args.input, args.out, dataset=dataset, fields=args.fields, min_count=args.min_count,
                     split=ratios, split_by_file=args.split_by_file, seed=args.seed, chunk_size=args.chunk_size,
                     overwrite=args.overwrite, strict=args.strict, user_field=user_field)
    return 0
