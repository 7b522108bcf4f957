"""Criteo raw TSV -> LMDB store (the Kaggle Display Advertising Challenge train.txt, or a Criteo 1TB day file).

    python preprocess.py criteo --input data/raw/criteo/train.txt [--dense bucketize|numeric] [--out data/criteo]
    python preprocess.py criteo --synthetic 100000          # no download: generate and preprocess synthetic rows
    python preprocess.py criteo --train train.csv --valid valid.csv --test test.csv   # BARS Criteo_x4 files

Input: one row per line, tab-separated, no header: ``click I1..I13 C1..C26`` (40 columns); ``click`` is 0/1,
``I*`` are integers (may be empty or negative), ``C*`` are 8 lowercase hex digits (may be empty). Plain or
gzip (detected from the magic bytes). Lines ending in ``\\r\\n`` are accepted, and so is a UTF-8
byte-order mark before the first row.

Output (see dataset/store.py): label ``click``; sparse fields ``C1..C26`` with ids from
:class:`~dataset.vocab.Vocabulary` fitted on the train split only (0 = OOV or rarer than ``--min-count``,
1 = missing, 2.. = kept values in sorted order); the dense fields as chosen by ``--dense``:

* ``bucketize`` (default): ``x -> str(floor(ln(x)^2))`` if ``x > 2`` else ``str(x)``, as in AutoInt (Song et
  al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks", CIKM 2019) and
  the FuxiCTR / BARS Criteo_x4 setting (Zhu et al., "Open Benchmarking for Click-Through Rate Prediction",
  CIKM 2021); the buckets are 13 more sparse fields ``I1..I13``, placed before ``C1..C26``; an empty cell
  stays missing (id 1); dense width 0.
* ``numeric``: 13 dense floats ``log(1 + max(x, 0))``, the transform of DLRM's Criteo pipeline (Naumov et
  al., "Deep Learning Recommendation Model for Personalization and Recommendation Systems", arXiv 2019:
  negatives clip to 0, then log(x + 1)); a missing cell becomes 0, so it reads like a 0 count.

Given split files (``--train F --valid F --test F``, BARS Criteo_x4: https://github.com/reczoo/Datasets,
Criteo/Criteo_x4): comma-separated, plain or gzip, a header line ``Label,I1,...,I13,C1,...,C26`` (exactly these
40 columns, in this order), then rows like the TSV's; an integer may also be written as ``5.0`` (as pandas
writes an integer column that has empty cells). Every row stays in the split of its file (``--split`` does not
apply), the vocabularies are fitted on the train file alone, and within a split rows are shuffled as usual.

``--hash-buckets N`` / ``--hash FIELD=N``: those fields skip the vocabulary (and its counting in pass 1)
and map each value to ``2 + splitmix64(code) mod N`` (:func:`dataset.vocab.hash_codes`; missing -> 1), so
values never seen in train still get their own bucket.

Bad rows are skipped and counted per kind (:data:`BAD_ROW_KINDS`), or with ``--strict`` the first one is an
error naming the file and line. Same input and flags give a byte-identical ``data.mdb`` (no hash seeds).

How it is fast (its tokenizer alone beats pandas.read_csv, which neither validates the cells nor decodes
the hex) with memory bounded whatever the file size:

1. Pass 1 reads the text in blocks of whole lines and tokenizes each block with numpy alone: tab and
   newline positions give every cell's bounds; the 8 bytes that end each cell are read as one ``uint64``
   and decoded eight characters at a time (SWAR arithmetic: hex -> ``uint32`` code, decimal -> integer),
   which also validates every character. Valid rows get a split (dataset/split.py: one seeded draw per
   valid row, in file order; skipped rows draw nothing), the train rows' codes are counted per field
   (hash counts per batch, merged as sorted runs), and every row, as a fixed-size binary record, joins
   one of K shuffle buckets picked at random (seeded). Buckets live in memory up to ``SPILL_BYTES``, then
   spill to files in ``<out>.tmp-<pid>-buckets`` (about 164 bytes per row, deleted at the end).
2. The vocabulary of each field keeps the codes counted at least ``min_count`` times.
3. Pass 2 takes one bucket at a time, permutes it (seeded), maps codes to ids with a hash lookup and
   appends the rows to the :class:`~dataset.store.StoreWriter`. A random bucket plus a random order inside
   it is a uniform shuffle of each split, done once at write time.

Tokenizing and counting (pass 1), loading the next bucket and encoding (pass 2) run on ``WORKERS`` threads
(numpy releases the GIL), their results consumed in order, so the output does not depend on timing.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from dataset.buckets import ShuffleBuckets, bucket_count
from dataset.predict_encode import EncodedBlock, join_cells
from dataset.raw import InputError, in_order, is_gzip, open_raw
from dataset.schema import Schema
from dataset.split import DEFAULT_SPLIT, EVERY_SPLIT_NEEDED, SPLITS, SplitAssigner, check_common, check_split_rows
from dataset.store import StoreReader, StoreWriter, check_out, human_size, out_of_space, scratch_dir, space_failure
from dataset.synthetic import write_synthetic_criteo
from dataset.vocab import OOV_ID, Vocabulary, count_values, hash_codes, ids_from_positions

LABEL = "click"
INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
N_COLUMNS = 1 + len(INT_FIELDS) + len(CAT_FIELDS)
DENSE_MODES = ("bucketize", "numeric")
DEFAULT_INPUT = Path("data/raw/criteo/train.txt")
CSV_HEADER = ("Label", *INT_FIELDS, *CAT_FIELDS)  # the given split files' columns (BARS Criteo_x4)
SPLIT_FLAGS = {"train": "--train", "valid": "--valid", "test": "--test"}
RAW_DIR = Path("data/raw")
BAD_ROW_KINDS = {
    "columns": f"wrong number of columns (a row has {N_COLUMNS} tab-separated columns)",
    "label": "label is not 0 or 1",
    "dense": "an I column is not an integer in int32 range",
    "categorical": "a C column is not 8 lowercase hex digits",
    "truncated": f"last line cut short (no newline and fewer than {N_COLUMNS} columns)",
}
_KIND_INDEX = {name: i for i, name in enumerate(BAD_ROW_KINDS)}
FIRST_LINES_KEPT = 5  # bad-row line numbers remembered per kind

WORKERS = min(4, os.cpu_count() or 1)  # threads that tokenize (pass 1) and encode (pass 2); numpy frees the GIL
BLOCK_BYTES = 1 << 20  # text per tokenizer call: small enough that numpy temporaries stay in cache
COUNT_ROWS = 1 << 20  # train rows buffered before their codes are counted (more once vocabularies grow)
AHEAD = 16  # blocks (pass 1) or batches (pass 2) the worker threads may run ahead of the main thread
ENCODE_ROWS = 1 << 15  # rows encoded at a time in pass 2 (their transposes stay in cache)
BUCKET_BYTES = 64 << 20  # target size of one shuffle bucket (loaded whole in pass 2)
SPILL_BYTES = 256 << 20  # bucket records held in memory before they are appended to files
MAX_BUCKETS = 512
_PAD = 16  # readable bytes before and after a block's text, so 8-byte reads near a cell stay in the buffer

# A temporary bucket record: one row's code per field (I fields first, then C fields), label, split and
# missing flags (bit j of ``missing`` is field j). Bucketize: I codes are int32 buckets; numeric: I codes are
# float32 bits of the final dense value. 164 bytes, a multiple of 4, which numpy gathers several times faster.
RECORD = np.dtype([("codes", "<u4", (N_COLUMNS - 1,)), ("label", "u1"), ("split", "u1"), ("missing", "u1", (5,)),
                   ("pad", "u1")])

_LO_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_HI_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_ONES = 0x0101010101010101


# ------------------------------------------------------------------------------------------- reading


@dataclass
class TextBlock:
    """Whole lines of raw text at ``buf[_PAD:_PAD + size]``, with at least ``_PAD`` readable bytes either side
    (so 8-byte gathers near a cell never leave the buffer). Only when ``at_eof`` may the last line lack its
    ``\\n``. ``raw_pos``: bytes of the file read so far (progress)."""

    buf: np.ndarray
    size: int
    at_eof: bool
    raw_pos: int = 0

    @classmethod
    def from_bytes(cls, text: bytes, at_eof: bool = True) -> "TextBlock":
        buf = np.zeros(len(text) + 2 * _PAD, dtype=np.uint8)
        buf[_PAD:_PAD + len(text)] = np.frombuffer(text, dtype=np.uint8)
        return cls(buf, len(text), at_eof)


def _last_newline(a: np.ndarray, lo: int, hi: int) -> int:
    """Index just past the last ``\\n`` in ``a[lo:hi]``, or ``lo`` if there is none (searched from the end)."""
    window = 1 << 12
    while hi > lo:
        start = max(lo, hi - window)
        found = np.flatnonzero(a[start:hi] == ord("\n"))
        if len(found):
            return start + int(found[-1]) + 1
        hi, window = start, window * 2
    return lo


def read_blocks(path: Path, block_bytes: int, skip_header: bool = False) -> Iterator[TextBlock]:
    """Yield the file's lines in blocks of about ``block_bytes``, each block in a buffer of its own (after its
    first line, if ``skip_header``)."""
    stream, raw = open_raw(path)
    tail = np.zeros(0, dtype=np.uint8)  # an unfinished line, carried into the next block
    with stream:
        if skip_header:
            stream.readline()
        while True:
            buf = np.empty(len(tail) + block_bytes + 2 * _PAD, dtype=np.uint8)
            buf[:_PAD] = 0
            buf[_PAD:_PAD + len(tail)] = tail
            got = stream.readinto(memoryview(buf)[_PAD + len(tail):_PAD + len(tail) + block_bytes])
            end = _PAD + len(tail) + got
            buf[end:] = 0
            if not got:
                if len(tail):
                    yield TextBlock(buf, len(tail), True, raw.tell())
                return
            new = _PAD + len(tail)
            cut = _last_newline(buf, new, end)
            if cut == new:  # no newline in the new bytes: still one unfinished line
                tail = buf[_PAD:end].copy()
                continue
            tail = buf[cut:end].copy()
            yield TextBlock(buf, cut - _PAD, False, raw.tell())


def csv_to_tsv(block: TextBlock) -> TextBlock:
    """A block of Criteo_x4 CSV lines -> the same lines as raw Criteo TSV: a ``.0`` that ends a cell is dropped
    (``5.0`` -> ``5``; a C cell never holds a dot) and commas become tabs. Nothing else changes, so the TSV
    tokenizer validates every cell as usual."""
    text = block.buf[_PAD:_PAD + block.size]
    after = np.append(text[2:], np.uint8(ord("\n")))  # the byte after each ".0" candidate (end of text: a newline)
    ends = np.flatnonzero((text[:-1] == ord(".")) & (text[1:] == ord("0"))
                          & np.isin(after[:len(text) - 1], np.frombuffer(b",\n\r", np.uint8)))
    keep = np.ones(len(text), dtype=bool)
    keep[ends], keep[ends + 1] = False, False
    out = text[keep] if len(ends) else text.copy()
    out[out == ord(",")] = ord("\t")
    converted = TextBlock.from_bytes(out.tobytes(), block.at_eof)
    converted.raw_pos = block.raw_pos
    return converted


# --------------------------------------------------------------------------------------------- tokenizer


@dataclass
class Rows:
    """The valid rows of one block: label uint8 [n]; ints int64 [n, 13]; cats uint32 [n, 26] (8 hex digits as
    a number, so sorted codes are sorted strings); missing flags bool [n, 13] and [n, 26]."""

    label: np.ndarray
    ints: np.ndarray
    int_missing: np.ndarray
    cats: np.ndarray
    cat_missing: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def _words_ending_at(block: TextBlock) -> np.ndarray:
    """Overlapping view of ``block``: element ``i`` is the 8 bytes that end just before text position ``i``,
    as one little-endian uint64 (first byte lowest) [size + 1]."""
    return np.ndarray(shape=(block.size + 1,), dtype="<u8", buffer=block.buf, offset=_PAD - 8, strides=(1,))


def _decode_hex(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8 ASCII chars per uint64 (first char in the low byte) -> (uint32 value, valid: only 0-9a-f).

    Per byte ``b``: nibble = ``(b & 0xF) + 9 * bit6(b)`` maps '0'-'9' to 0-9 and 'a'-'f' to 10-15; a byte is
    valid iff its nibble is <= 15 and encoding the nibble back gives ``b``. Three multiply-shift steps then
    pack the eight nibbles, first char most significant.
    """
    nib = (x & _LO_NIBBLES) + ((x >> np.uint64(6)) & np.uint64(_ONES)) * np.uint64(9)
    ok = ((nib + np.uint64(0x70 * _ONES)) & np.uint64(0x80 * _ONES)) == 0  # every nibble <= 15
    letter = ((nib + np.uint64(0x76 * _ONES)) >> np.uint64(7)) & np.uint64(_ONES)  # 1 where nibble >= 10
    ok &= nib + np.uint64(0x30 * _ONES) + letter * np.uint64(0x27) == x
    y = ((nib * np.uint64(16 * 256 + 1)) >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)  # nibble pairs -> bytes
    y = ((y * np.uint64((1 << 24) + 1)) >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)  # byte pairs -> 16 bits
    return ((y * np.uint64((1 << 48) + 1)) >> np.uint64(32)).astype(np.uint32), ok


def _decode_digits(x: np.ndarray, n_digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last ``n_digits`` (1..8) chars of each uint64 (first char in the low byte) -> (value, valid).

    The unused low bytes are zeroed (they read as leading zeros); the value is assembled with three
    multiply-shift steps that combine digit pairs, then pairs of pairs, then quads (SWAR decimal parsing).
    """
    keep = np.uint64(0xFFFFFFFFFFFFFFFF) << (np.uint64(8) * (8 - np.clip(n_digits, 1, 8)).astype(np.uint64))
    x = x & keep
    ok = (x & _HI_NIBBLES) == (np.uint64(0x30 * _ONES) & keep)
    lo = x & _LO_NIBBLES
    ok &= ((lo + np.uint64(0x06 * _ONES)) & np.uint64(0x10 * _ONES)) == 0  # every digit <= 9
    v = (lo * np.uint64(10 * 256 + 1)) >> np.uint64(8)
    v = ((v & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 65536 + 1)) >> np.uint64(16)
    v = ((v & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * (1 << 32) + 1)) >> np.uint64(32)
    return (v & np.uint64(0xFFFFFFFF)).astype(np.int64), ok


def _parse_ints(text: np.ndarray, words: np.ndarray, ends: np.ndarray,
                lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer cells ``-?[0-9]{1,10}`` (ends, lengths [n, k]) -> (int64 values, missing, valid)."""
    missing = lengths == 0
    negative = text[ends - lengths] == ord("-")  # an empty cell shows its separator here: never '-'
    n_digits = lengths - negative
    values, ok = _decode_digits(words[ends], n_digits)  # no digit (empty or "-"): the one byte read fails
    long = np.flatnonzero(n_digits.ravel() > 8)  # 9 digits or more: rare, finished on their own
    if len(long):
        flat_values, flat_ok, n_long = values.ravel(), ok.ravel(), n_digits.ravel()[long]
        high, high_ok = _decode_digits(words[ends.ravel()[long] - 8], n_long - 8)
        flat_values[long] += high * 100_000_000
        signed = np.where(negative.ravel()[long], -flat_values[long], flat_values[long])
        flat_ok[long] &= high_ok & (n_long <= 10) & (signed >= -(1 << 31)) & (signed < (1 << 31))
    np.negative(values, out=values, where=negative)
    return values, missing, ok | missing


def _parse_hex(words: np.ndarray, ends: np.ndarray,
               lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Categorical cells, empty or 8 hex digits (ends, lengths [n, k]) -> (uint32 codes, missing, valid)."""
    codes, ok = _decode_hex(words[ends])
    missing = lengths == 0
    return codes, missing, (ok & (lengths == 8)) | missing


def _cells(text: np.ndarray, at_eof: bool,
           n_columns: int = N_COLUMNS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Cell bounds of the lines of ``text`` that have ``n_columns`` cells (40; 39 in unlabelled rows).

    Returns ends, lengths int64 [n, n_columns] (a cell is ``text[end - length:end]``; a final ``\\r`` is dropped),
    ``good`` int64 [n] (their line indices), the number of cells of every line int64 [lines], and whether
    the last line lacks its ``\\n``.
    """
    sep = np.flatnonzero(text < 11)  # tabs and newlines (other bytes < 11 are dropped next)
    kinds = text[sep]
    if (kinds < ord("\t")).any():
        sep, kinds = sep[kinds >= ord("\t")], kinds[kinds >= ord("\t")]
    line_end = np.flatnonzero(kinds == ord("\n"))  # index in sep of each line's newline
    unterminated = at_eof and len(text) > 0 and text[-1] != ord("\n")
    if unterminated:
        sep, line_end = np.append(sep, len(text)), np.append(line_end, len(sep))
    n_cells = np.diff(line_end, prepend=-1)
    good = np.flatnonzero(n_cells == n_columns)
    lengths = np.empty_like(sep)  # a cell starts just after the previous separator
    lengths[:1] = sep[:1]
    np.subtract(sep[1:], sep[:-1] + 1, out=lengths[1:])
    if len(good) == len(line_end):
        ends, lengths = sep.reshape(-1, n_columns), lengths.reshape(-1, n_columns)
    else:
        index = (line_end[good] - (n_columns - 1))[:, None] + np.arange(n_columns)
        ends, lengths = sep[index], lengths[index]
    carriage_return = text[ends[:, -1] - 1] == ord("\r")
    ends[:, -1] -= carriage_return
    lengths[:, -1] -= carriage_return
    return ends, lengths, good, n_cells, unterminated


def parse_block(block: TextBlock, labelled: bool = True) -> tuple[Rows, dict[str, np.ndarray], int]:
    """Tokenize and validate one block of raw Criteo text, vectorized. ``labelled``: rows start with the
    click column (train.txt); else they are the 39 columns ``I1..I13 C1..C26`` alone (Kaggle's test.txt),
    and every label is 0.

    Returns the valid rows, per bad-row kind (:data:`BAD_ROW_KINDS`) the indices int64 [k] of the lines
    rejected for it (0 = the block's first line), and the number of lines in the block.
    """
    text, words = block.buf[_PAD:_PAD + block.size], _words_ending_at(block)
    first = 1 if labelled else 0  # the column of I1
    n_columns = N_COLUMNS - 1 + first
    ends, lengths, good, n_cells, unterminated = _cells(text, block.at_eof, n_columns)
    if labelled:
        label = text[ends[:, 0] - 1]
        label_ok = (lengths[:, 0] == 1) & ((label | 1) == ord("1"))
    else:
        label, label_ok = np.full(len(good), ord("0"), np.uint8), np.ones(len(good), bool)
    ints, int_missing, int_ok = _parse_ints(text, words, ends[:, first:first + 13], lengths[:, first:first + 13])
    cats, cat_missing, cat_ok = _parse_hex(words, ends[:, first + 13:], lengths[:, first + 13:])
    if len(good) == len(n_cells) and label_ok.all() and int_ok.all() and cat_ok.all():
        return Rows(label - np.uint8(ord("0")), ints, int_missing, cats, cat_missing), {}, len(n_cells)

    kind = np.zeros(len(n_cells), dtype=np.int8)  # 0 = valid, else 1 + index in BAD_ROW_KINDS
    kind[n_cells != n_columns] = 1 + _KIND_INDEX["columns"]
    if unterminated and n_cells[-1] != n_columns:
        kind[-1] = 1 + _KIND_INDEX["truncated"]
    valid = np.ones(len(good), dtype=bool)
    for name, ok in (("label", label_ok), ("dense", int_ok.all(axis=1)), ("categorical", cat_ok.all(axis=1))):
        kind[good[valid & ~ok]] = 1 + _KIND_INDEX[name]  # a row is counted once, under the first check it fails
        valid &= ok
    bad = {name: np.flatnonzero(kind == 1 + i) for i, name in enumerate(BAD_ROW_KINDS)}
    rows = Rows(*(x[valid] for x in (label - np.uint8(ord("0")), ints, int_missing, cats, cat_missing)))
    return rows, {k: v for k, v in bad.items() if len(v)}, len(n_cells)


# ------------------------------------------------------------------------------------- dense transforms


def _bucket_formula(values: np.ndarray) -> np.ndarray:
    """The bucket rule computed directly: int64 [...] -> int32 [...]."""
    big = values > 2
    out = values.astype(np.int32)
    out[big] = np.floor(np.log(values[big].astype(np.float64)) ** 2).astype(np.int32)
    return out


_TABLE_LOW, _TABLE_HIGH = -64, 1 << 16
_BUCKET_TABLE = _bucket_formula(np.arange(_TABLE_LOW, _TABLE_HIGH))  # the common values, precomputed


def bucketize(values: np.ndarray) -> np.ndarray:
    """AutoInt / FuxiCTR Criteo_x4 buckets: int64 [...] -> int32 [...], ``floor(ln(x)^2)`` if x > 2 else x."""
    out = _BUCKET_TABLE[np.clip(values, _TABLE_LOW, _TABLE_HIGH - 1) - _TABLE_LOW]
    outside = (values < _TABLE_LOW) | (values >= _TABLE_HIGH)
    if outside.any():
        out[outside] = _bucket_formula(values[outside])
    return out


def log_scale(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """DLRM's ``log(1 + max(x, 0))``, missing -> 0: int64 [...] -> float32 [...]."""
    return np.where(missing, 0.0, np.log1p(np.maximum(values, 0))).astype(np.float32)


# ------------------------------------------------------------------------------------------ vocabulary


@dataclass
class Counts:
    """Count per distinct code, sorted by code: codes [k] (int32 or uint32), counts int64 [k]."""

    codes: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> "Counts":
        """Count ``values`` [n] (hashing, then sorting only the distinct codes)."""
        vc = count_values(None, pd.Series(values, copy=False))
        order = np.argsort(vc.index.to_numpy())
        return cls(vc.index.to_numpy()[order], vc.to_numpy()[order])

    def merge(self, other: "Counts") -> "Counts":
        """Sum of two counts. The two sorted runs are merged by a stable sort in linear time (timsort), so
        many partial counts add up far faster than by aligning hashed indexes."""
        codes = np.concatenate([self.codes, other.codes])
        order = np.argsort(codes, kind="stable")
        codes, counts = codes[order], np.concatenate([self.counts, other.counts])[order]
        starts = np.ones(len(codes), dtype=bool)  # where a new code begins
        starts[1:] = codes[1:] != codes[:-1]
        first = np.flatnonzero(starts)
        return Counts(codes[first], np.add.reduceat(counts, first))


@dataclass
class FieldEncoder:
    """One field's :class:`Vocabulary` plus a lookup on integer codes that gives the same ids as
    ``vocab.encode`` on the codes' string forms: ``codes[i]`` is the kept code with id ``i + 2``."""

    vocab: Vocabulary
    codes: pd.Index

    @classmethod
    def fit(cls, counts: Counts, min_count: int, hex_codes: bool) -> "FieldEncoder":
        """``counts``: the field's train counts per code."""
        kept = counts.codes[counts.counts >= min_count]
        strings = [format(c, "08x") for c in kept] if hex_codes else [str(c) for c in kept]
        vocab = Vocabulary(strings)
        ids = vocab.encode(pd.Series(strings, dtype=object))
        codes = pd.Index(kept[np.argsort(ids)])
        codes.get_indexer(codes[:1])  # builds the hash table now; threads then only read it
        return cls(vocab, codes)

    @classmethod
    def from_values(cls, values: list[str], hex_codes: bool) -> "FieldEncoder":
        """The encoder whose vocabulary keeps ``values`` (``values[i]`` has id ``i + 2``, as
        :meth:`record` and the store keep them): how prediction rebuilds the encoder preprocessing fitted."""
        codes = (np.array([int(v, 16) for v in values], np.uint32) if hex_codes
                 else np.array([int(v) for v in values], np.int32))
        encoder = cls(Vocabulary(values), pd.Index(codes))
        if encoder.vocab.values() != list(values):
            raise ValueError("a stored vocabulary must list its values in id order (sorted, no duplicates)")
        encoder.codes.get_indexer(encoder.codes[:1])
        return encoder

    def record(self, hex_codes: bool) -> tuple[list[str], dict[str, Any]]:
        """-> (values in id order, spec) for :meth:`dataset.store.StoreWriter.put_vocabulary`."""
        return self.vocab.values(), {"codes": "hex" if hex_codes else "int"}

    def encode(self, codes: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """codes [n], missing bool [n] -> ids int64 [n]."""
        return ids_from_positions(self.codes.get_indexer(codes), missing)

    def __len__(self) -> int:
        return len(self.vocab)


@dataclass
class HashedField:
    """A field hashed into ``buckets`` ids instead of a vocabulary (``--hash``): no counting pass, and a
    value never seen still gets a bucket. Ids as :func:`dataset.vocab.hash_codes` gives them for the
    field's decoded codes (the 32-bit value of the hex string; the bucket number of a bucketized I field)."""

    buckets: int

    def record(self, hex_codes: bool) -> tuple[list[str], dict[str, Any]]:
        """-> (no values, spec: bucket count and hash) for :meth:`dataset.store.StoreWriter.put_vocabulary`."""
        return [], {"codes": "hex" if hex_codes else "int", "hash_buckets": self.buckets, "hash": "splitmix64"}

    def encode(self, codes: np.ndarray, missing: np.ndarray) -> np.ndarray:
        return hash_codes(codes, missing, self.buckets)

    def __len__(self) -> int:
        return self.buckets + 2


def _missing_bit(bits: np.ndarray, col: int) -> np.ndarray:
    """Column ``col``'s missing flags, bool [n], from packed flags uint8 [5, n] (column-major)."""
    return ((bits[col >> 3] >> np.uint8(col & 7)) & np.uint8(1)).astype(bool)


@dataclass
class _Counter:
    """Train-split counts per sparse field, from codes buffered into large batches; a batch is counted on
    ``pool``, whose threads share the fields."""

    columns: list[int]  # record columns of the sparse fields
    signed: list[bool]  # True: int32 bucket codes; False: uint32 hex codes
    pool: ThreadPoolExecutor
    counts: list[Counts] = field(default_factory=list)
    _codes: list[np.ndarray] = field(default_factory=list)
    _missing: list[np.ndarray] = field(default_factory=list)
    _rows: int = 0

    def __post_init__(self) -> None:
        self.counts = [Counts(np.zeros(0, np.int32 if s else np.uint32), np.zeros(0, np.int64)) for s in self.signed]

    def add(self, codes: np.ndarray, missing: np.ndarray) -> None:
        """codes uint32 [n, 39], packed missing flags uint8 [n, 5] of train rows."""
        if not self.columns:  # every field hashed: nothing to count
            return
        self._codes.append(np.ascontiguousarray(codes.T))
        self._missing.append(np.ascontiguousarray(missing.T))
        self._rows += len(codes)
        # A merge costs about the size of the running counts, so batches grow with them: linear in all.
        if self._rows >= max(COUNT_ROWS, max(len(c.codes) for c in self.counts) // 4):
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        codes, missing = self._codes, np.concatenate(self._missing, axis=1)
        self._codes, self._missing, self._rows = [], [], 0
        shares = [range(t, len(self.columns), WORKERS) for t in range(min(WORKERS, len(self.columns)))]
        for future in [self.pool.submit(self._count, codes, missing, fields) for fields in shares]:
            future.result()

    def _count(self, codes: list[np.ndarray], missing: np.ndarray, fields: range) -> None:
        """Count ``fields`` of the buffered blocks: codes [39, n_i] each, packed missing flags [5, sum n_i]."""
        for j in fields:
            col = self.columns[j]
            values = np.concatenate([c[col] for c in codes])[~_missing_bit(missing, col)]
            self.counts[j] = self.counts[j].merge(Counts.of(values.view(np.int32) if self.signed[j] else values))


# ---------------------------------------------------------------------------------------------- passes


@dataclass
class _Scan:
    """What pass 1 learned: rows per split, lines read, bad rows, train counts, and the shuffle buckets."""

    split_rows: list[int]
    lines: int
    bad_counts: dict[str, int]
    bad_lines: dict[str, list[int | str]]
    counter: _Counter
    buckets: ShuffleBuckets


def _estimated_rows(paths: list[Path]) -> int:
    """Rows in Criteo files, from their sizes (gzip assumed 4x compressed), rounded up."""
    size = sum(p.stat().st_size * (4 if is_gzip(p) else 1) for p in paths)
    return math.ceil(size / 200)  # a row is about 240 bytes of text


def _n_buckets(paths: list[Path]) -> int:
    """Buckets for about BUCKET_BYTES of records each, from the input size."""
    return bucket_count(_estimated_rows(paths), RECORD.itemsize, BUCKET_BYTES, MAX_BUCKETS)


def _records(rows: Rows, dense: str) -> np.ndarray:
    """Valid rows of one block -> RECORD [n] (split 0: the caller assigns splits in file order)."""
    rec = np.zeros(len(rows), dtype=RECORD)
    rec["label"] = rows.label
    if dense == "bucketize":
        dense_codes = bucketize(np.where(rows.int_missing, 0, rows.ints)).view(np.uint32)
    else:
        dense_codes = log_scale(rows.ints, rows.int_missing).view(np.uint32)
    rec["codes"] = np.concatenate([dense_codes, rows.cats], axis=1)
    rec["missing"] = np.packbits(np.concatenate([rows.int_missing, rows.cat_missing], axis=1), axis=1,
                                 bitorder="little")
    return rec


def _bad_row_error(path: Path, kind: str, line: int) -> InputError:
    stream, _ = open_raw(path)
    with stream:
        text = next(t for i, t in enumerate(stream, start=1) if i == line)
    shown = text[:120].decode("latin-1").rstrip("\r\n")
    return InputError(
        f"{path}:{line}: {BAD_ROW_KINDS[kind]}: {shown!r}; fix or delete that line, "
        f"or drop --strict to skip bad rows"
    )


def _parse_records(block: TextBlock, dense: str,
                   csv: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray], int, int]:
    """One block (``csv``: of a given split file, :func:`csv_to_tsv`) -> (RECORD [n] with split 0, bad line
    indices per kind, lines, raw bytes read so far)."""
    rows, bad, n_lines = parse_block(csv_to_tsv(block) if csv else block)
    return _records(rows, dense), bad, n_lines, block.raw_pos


def _sparse_columns(dense: str) -> list[int]:
    """Record columns of the sparse fields: I1..I13 (bucketized) and C1..C26, or C1..C26 alone."""
    return list(range(N_COLUMNS - 1)) if dense == "bucketize" else list(range(13, N_COLUMNS - 1))


def _field_name(col: int) -> str:
    return (INT_FIELDS + CAT_FIELDS)[col]


@dataclass(frozen=True)
class Source:
    """One input file: ``split`` None: the seeded split assigns its rows; else every row goes to that split
    (0 train, 1 valid, 2 test), from a given split file in Criteo_x4 CSV (``csv``: a header line, commas)."""

    path: Path
    split: int | None = None
    csv: bool = False

    def where(self, line: int) -> int | str:
        """How a bad-row line number is reported: the number alone for one raw file, else ``file:line``."""
        return f"{self.path.name}:{line}" if self.csv else line


def _pass1(sources: list[Source], bucket_dir: Path, dense: str, ratios: tuple[float, float, float], seed: int,
           strict: bool, progress: bool, pool: ThreadPoolExecutor, hashed: dict[str, int]) -> _Scan:
    """Tokenize, validate, assign splits (or take each file's), count train values (of the fields not hashed),
    scatter records into bucket files."""
    counted = [c for c in _sparse_columns(dense) if _field_name(c) not in hashed]
    counter = _Counter(counted, [c < 13 for c in counted], pool)
    assigner = SplitAssigner(ratios, seed)
    bucket_rng = np.random.default_rng([seed, 1])
    split_rows, lines = [0, 0, 0], 0
    bad_counts: dict[str, int] = {}
    bad_lines: dict[str, list[int | str]] = {}
    buckets = ShuffleBuckets(bucket_dir, _n_buckets([s.path for s in sources]), RECORD, SPILL_BYTES)
    bar = tqdm(total=sum(s.path.stat().st_size for s in sources), unit="B", unit_scale=True,
               desc="criteo pass 1/2: parse", disable=not progress)
    done = 0  # bytes of the files already read
    try:
        for source in sources:
            first = 2 if source.csv else 1  # file line number of the first data line
            file_lines = 0
            blocks = read_blocks(source.path, BLOCK_BYTES, skip_header=source.csv)
            for rec, bad, n_lines, raw_pos in in_order(pool, _parse_records, blocks, dense, source.csv, ahead=AHEAD):
                for kind, index in bad.items():
                    if strict:
                        raise _bad_row_error(source.path, kind, file_lines + first + int(index[0]))
                    bad_counts[kind] = bad_counts.get(kind, 0) + len(index)
                    kept = bad_lines.setdefault(kind, [])
                    kept.extend(source.where(file_lines + first + int(i)) for i in index[:FIRST_LINES_KEPT - len(kept)])
                file_lines += n_lines
                split = assigner.assign(len(rec)) if source.split is None else np.full(len(rec), source.split, np.int8)
                rec["split"] = split
                train = rec[split == 0]
                counter.add(train["codes"], train["missing"])
                split_rows = [n + int(c) for n, c in zip(split_rows, np.bincount(split, minlength=3))]
                buckets.add(rec, bucket_rng.integers(len(buckets), size=len(rec)))
                bar.update(done + raw_pos - bar.n)
            lines += file_lines
            done += source.path.stat().st_size
    finally:
        bar.close()
    counter.flush()
    return _Scan(split_rows, lines, bad_counts, bad_lines, counter, buckets)


def _encode(rec: np.ndarray, encoders: list[FieldEncoder | HashedField],
            dense: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RECORD [m] -> sparse ids int32 [m, F], dense float32 [m, 13 or 0], label float32 [m, 1]."""
    codes = np.ascontiguousarray(rec["codes"].T)  # [39, m]: one contiguous row per field
    missing = np.ascontiguousarray(rec["missing"].T)  # [5, m]
    sparse = np.empty((len(rec), len(encoders)), dtype=np.int32)
    for j, (col, enc) in enumerate(zip(_sparse_columns(dense), encoders)):
        sparse[:, j] = enc.encode(codes[col].view(np.int32) if col < 13 else codes[col], _missing_bit(missing, col))
    n_dense = len(INT_FIELDS) if dense == "numeric" else 0
    dense_values = np.ascontiguousarray(codes[:n_dense].T).view(np.float32)
    return sparse, dense_values, rec["label"].astype(np.float32)[:, None]


def _shuffled(item: tuple[int, np.ndarray], buckets: ShuffleBuckets) -> list[np.ndarray]:
    """Bucket ``k``'s records (RECORD [m]) permuted by ``perm``: one array per split."""
    return buckets.take_by_split(*item)


def _pass2(scan: _Scan, encoders: list[FieldEncoder | HashedField], writer: StoreWriter, dense: str,
           seed: int, progress: bool, pool: ThreadPoolExecutor) -> None:
    """Load each bucket, permute it, map codes to ids and append its rows to their splits.

    ``pool`` loads the next bucket while it encodes this one, so the threads do not wait between buckets."""
    step = writer.chunk_size * max(1, ENCODE_ROWS // writer.chunk_size)
    bar = tqdm(total=sum(scan.split_rows), unit="rows", desc="criteo pass 2/2: shuffle + encode + write",
               disable=not progress)

    def batches() -> Iterator[tuple[str, np.ndarray]]:
        """Cache-sized batches of records that never straddle two splits, bucket after bucket."""
        for parts in in_order(pool, _shuffled, scan.buckets.permutations(seed), scan.buckets, ahead=1):
            for name, rec in zip(SPLITS, parts):
                for lo in range(0, len(rec), step):
                    yield name, rec[lo:lo + step]
            bar.update(sum(map(len, parts)))

    def encode(batch: tuple[str, np.ndarray]) -> tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return batch[0], _encode(batch[1], encoders, dense)

    with bar:
        for name, parts in in_order(pool, encode, batches(), ahead=AHEAD):
            writer.add(name, *parts)


# -------------------------------------------------------------------------------- new raw rows (predict)


class RawRows:
    """New raw Criteo rows (train.txt's format, or test.txt's: the same without the click column) -> the
    store's batch arrays, encoded by the very functions preprocessing ran (:func:`parse_block`,
    :func:`_records`, :func:`_encode`) with the encoders rebuilt from the vocabularies the store keeps.
    dataset/predict_encode.py finds this class by the store's dataset name."""

    def __init__(self, store: StoreReader) -> None:
        self.dense = store.meta["options"]["dense"]
        self.encoders: list[FieldEncoder | HashedField] = []
        for col in _sparse_columns(self.dense):
            record = store.vocabulary(_field_name(col))
            if "hash_buckets" in record:
                self.encoders.append(HashedField(int(record["hash_buckets"])))
            else:
                self.encoders.append(FieldEncoder.from_values(record["values"], hex_codes=col >= 13))
        sizes = [len(e) for e in self.encoders]
        if sizes != list(store.schema.vocab_sizes):
            raise InputError(f"store {store.path}: its vocabularies give sizes {sizes}, its schema says "
                             f"{list(store.schema.vocab_sizes)}; the store is damaged: preprocess it again")

    columns: list[str] = [*INT_FIELDS, *CAT_FIELDS]  # an unlabelled row's cells, as test.txt orders them

    def line(self, cells: Sequence[str]) -> bytes:
        """One raw unlabelled line (test.txt's format: I1..I13 C1..C26, tab-separated) from its cells in
        :attr:`columns` order; "" is a missing cell. The cells' values are checked by the tokenizer, not here
        (:func:`dataset.predict_encode.join_cells`: only the line's shape)."""
        return join_cells(self.columns, cells, "\t")

    def encode_values(self, field: str, values: list[str]) -> np.ndarray:
        """Raw values of one field as they appear in a raw row (a C field's 8 hex digits, an I field's integer;
        ``""``: missing) -> ids int64 [n]: each value goes into an otherwise empty unlabelled line through the
        tokenizer and encoder that score files (:meth:`_encode_block`), so it gets exactly the id preprocessing
        gave it; a value the tokenizer rejects (or that cannot sit in a cell) is OOV. :class:`InputError` for a
        field this store does not embed or hashes."""
        names = [_field_name(col) for col in _sparse_columns(self.dense)]
        if field not in names:
            raise InputError(f"field {field!r} has no vocabulary in this store (dense {self.dense!r}); "
                             f"fields with one: {', '.join(names)}")
        encoder = self.encoders[names.index(field)]
        if isinstance(encoder, HashedField):
            raise InputError(f"field {field} is hashed into {encoder.buckets} buckets: it keeps no values, and a "
                             f"value's id is only its bucket, shared with other values")
        at = self.columns.index(field)
        fits = np.array([not any(c in v for c in "\t\r\n") for v in values], dtype=bool)
        row = [""] * len(self.columns)
        lines = []
        for value, ok in zip(values, fits):
            row[at] = value if ok else ""
            lines.append(self.line(row))
        block = self._encode_block(TextBlock.from_bytes(b"".join(lines)), labelled=False)
        ids = np.full(len(values), OOV_ID, dtype=np.int64)
        ids[block.lines - 1] = block.sparse[:, names.index(field)]
        ids[~fits] = OOV_ID
        return ids

    @staticmethod
    def is_labelled(path: Path) -> bool:
        """Whether the file's rows carry the click column, from its first line: 40 columns (train.txt) or 39
        (test.txt). :class:`InputError` if it has neither."""
        stream, _ = open_raw(path)
        with stream:
            first = stream.readline(1 << 16)
        cells = first.rstrip(b"\r\n").count(b"\t") + 1
        if cells not in (N_COLUMNS, N_COLUMNS - 1):
            raise InputError(f"{path}:1: {cells} tab-separated columns; a Criteo row has {N_COLUMNS} (click "
                             f"I1..I13 C1..C26, as train.txt) or {N_COLUMNS - 1} (no click, as test.txt)")
        return cells == N_COLUMNS

    @staticmethod
    def reason(kind: str, labelled: bool) -> str:
        """Why a row of this kind got no prediction (one line, no tab)."""
        if kind == "columns" and not labelled:
            return f"wrong number of columns (an unlabelled row has {N_COLUMNS - 1} tab-separated columns)"
        if kind == "truncated" and not labelled:
            return f"last line cut short (no newline and fewer than {N_COLUMNS - 1} columns)"
        return BAD_ROW_KINDS[kind]

    def blocks(self, path: Path, labelled: bool, pool: ThreadPoolExecutor | None,
               block_bytes: int | None = None) -> Iterator[EncodedBlock]:
        """The file's lines, a block at a time (``block_bytes``, default :data:`BLOCK_BYTES`) in file order,
        tokenized on ``pool`` (up to ``AHEAD`` blocks ahead) and encoded."""
        lines = 0
        blocks = read_blocks(path, block_bytes or BLOCK_BYTES)
        for block in in_order(pool, self._encode_block, blocks, labelled, ahead=AHEAD):
            block.shift(lines)
            lines += block.n_lines
            yield block

    def _encode_block(self, block: TextBlock, labelled: bool) -> EncodedBlock:
        """One block -> its valid rows encoded, line numbers counted from the block's first line (1)."""
        rows, bad, n_lines = parse_block(block, labelled)
        valid = np.ones(n_lines, dtype=bool)
        for index in bad.values():
            valid[index] = False
        sparse, dense, label = _encode(_records(rows, self.dense), self.encoders, self.dense)
        return EncodedBlock(np.flatnonzero(valid) + 1, sparse, dense, label,
                            {k: v + 1 for k, v in bad.items()}, n_lines, block.raw_pos)


# ------------------------------------------------------------------------------------------- entry points


def missing_input_message(path: Path) -> str:
    return (
        f"no Criteo file at {path}. Get train.txt from the Kaggle Display Advertising Challenge "
        f"(https://www.kaggle.com/c/criteo-display-ad-challenge) or use a Criteo 1TB day file, same format "
        f"(https://ailab.criteo.com/download-criteo-1tb-click-logs-dataset); put it at {DEFAULT_INPUT} or pass "
        f"--input PATH. Or generate synthetic rows: python preprocess.py criteo --synthetic 100000"
    )


def _check_options(path: Path, min_count: int, dense: str, split: tuple[float, float, float],
                   chunk_size: int) -> tuple[float, float, float]:
    """Validate inputs and flags; -> normalized split ratios."""
    if not path.is_file():
        raise InputError(missing_input_message(path))
    if path.stat().st_size == 0:
        raise InputError(f"input {path} is empty; pass a raw Criteo file with --input")
    if dense not in DENSE_MODES:
        raise InputError(f"--dense must be one of {DENSE_MODES}, got {dense!r}")
    return check_common(split, min_count, chunk_size)


def check_split_files(files: Mapping[str, str | os.PathLike]) -> list[Source]:
    """Given split files (``{"train": path, "valid": path, "test": path}``), checked before any work: each
    exists, is not empty and starts with the Criteo_x4 header (:data:`CSV_HEADER`) -> their sources."""
    missing = [SPLIT_FLAGS[s] for s in SPLITS if not files.get(s)]
    if missing or set(files) - set(SPLITS):
        raise InputError(f"given split files need all of --train, --valid and --test; missing {', '.join(missing)}")
    sources = []
    for index, split in enumerate(SPLITS):
        path, flag = Path(files[split]), SPLIT_FLAGS[split]
        if not path.is_file():
            raise InputError(f"{flag} file {path} does not exist; pass the BARS Criteo_x4 {split}.csv")
        if path.stat().st_size == 0:
            raise InputError(f"{flag} file {path} is empty; pass the BARS Criteo_x4 {split}.csv")
        stream, _ = open_raw(path)
        with stream:
            first = stream.readline().decode("utf-8", "replace").rstrip("\r\n")
        cells = first.split(",")
        if tuple(cells) != CSV_HEADER:
            absent = [c for c in CSV_HEADER if c not in cells]
            detail = f"it lacks {', '.join(absent)}" if absent else f"its header is {first[:80]!r}"
            raise InputError(f"{flag} file {path} is not a Criteo_x4 CSV: {detail}; the first line must be "
                             f"{','.join(CSV_HEADER[:3])},...,C26 (Label, I1..I13, C1..C26 in this order)")
        sources.append(Source(path, index, csv=True))
    return sources


def _check_hashed(hashed: dict[str, int], dense: str) -> dict[str, int]:
    """Field -> buckets, every field a sparse field of this ``--dense`` mode and every count >= 1."""
    names = [_field_name(c) for c in _sparse_columns(dense)]
    unknown = sorted(set(hashed) - set(names))
    if unknown:
        raise InputError(f"--hash: {', '.join(unknown)} is not a sparse field with --dense {dense} "
                         f"(sparse fields: {names[0]}..{names[-1]})")
    bad = {f: n for f, n in hashed.items() if n < 1}
    if bad:
        raise InputError(f"--hash: bucket counts must be >= 1, got {bad}")
    return hashed


def parse_hash_flags(buckets: int | None, per_field: list[str]) -> dict[str, int]:
    """``--hash-buckets N`` (every C field) and ``--hash FIELD=N ...`` (these fields; they win) -> field ->
    buckets."""
    hashed = {f: buckets for f in CAT_FIELDS} if buckets is not None else {}
    for item in per_field:
        name, _, n = item.partition("=")
        try:
            hashed[name] = int(n)
        except ValueError:
            raise InputError(f"--hash takes FIELD=BUCKETS such as C3=1000000, got {item!r}") from None
    return hashed


def _schema(encoders: list[FieldEncoder | HashedField], dense: str) -> Schema:
    if dense == "bucketize":
        return Schema(INT_FIELDS + CAT_FIELDS, [len(e) for e in encoders], (), (LABEL,))
    return Schema(CAT_FIELDS, [len(e) for e in encoders], INT_FIELDS, (LABEL,))


def _bad_summary(counts: dict[str, int], lines: dict[str, list[int]]) -> str:
    return "; ".join(f"{counts[k]} {k} ({BAD_ROW_KINDS[k]}; first at lines {', '.join(map(str, lines[k]))})"
                     for k in BAD_ROW_KINDS if k in counts)


def summary(meta: dict[str, Any], out: Path, seconds: float) -> str:
    """Human-readable report of one run: rows per split, vocab sizes, skipped rows, time and speed."""
    splits = meta["splits"]
    stats = meta["stats"]
    schema = meta["schema"]
    rows = sum(s["rows"] for s in splits.values())
    vocab = ", ".join(f"{f} {v}" for f, v in zip(schema["sparse_fields"], schema["vocab_sizes"]))
    skipped = sum(stats["skipped"].values())
    lines = [
        f"criteo -> {out}: {rows:,} rows from {stats['lines']:,} lines of {meta['options']['input']} "
        f"in {seconds:.1f} s ({stats['lines'] / max(seconds, 1e-9):,.0f} rows/s)",
        "  " + ", ".join(f"{name} {s['rows']:,} rows ({s['chunks']} chunks)" for name, s in splits.items()),
        f"  vocab sizes: {vocab}",
        f"  dense fields: {', '.join(schema['dense_fields']) or 'none (bucketized into sparse I1..I13)'}",
        f"  skipped {skipped:,} bad rows" + (f": {_bad_summary(stats['skipped'], stats['skipped_lines'])}"
                                            if skipped else ""),
    ]
    return "\n".join(lines)


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the system at once.

    Both passes allocate and free numpy temporaries of a few MB per block; by default glibc returns such
    memory and the next block faults it in again (about 400k page faults per million rows here, a quarter
    of the run time). This raises the mmap threshold to 64 MB and the trim threshold to 512 MB, for the
    whole process. A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 512 << 20)


def preprocess_criteo(input_path: str | os.PathLike | Mapping[str, str | os.PathLike], out_path: str | os.PathLike,
                      *, min_count: int = 10,
                      dense: str = "bucketize", split: tuple[float, float, float] = (0.8, 0.1, 0.1),
                      seed: int = 2018, chunk_size: int = 8192, overwrite: bool = False, strict: bool = False,
                      progress: bool = True, hashed: dict[str, int] | None = None) -> dict[str, Any]:
    """Raw Criteo TSV (plain or gzip) -> LMDB store at ``out_path`` (see the module docstring).

    ``input_path``: one raw file, split by ``split`` and ``seed``; or given split files ``{"train": path,
    "valid": path, "test": path}`` in Criteo_x4 CSV, each row kept in its file's split (``split`` unused).

    ``hashed``: field name -> bucket count for the fields hashed instead of given a vocabulary.

    Returns the store's metadata record (schema, rows per split, ``options``, ``stats`` with skipped rows).
    Raises :class:`InputError` on a missing or empty input, bad flags, no valid row, an empty split, or
    (``strict``) the first bad row; :class:`~dataset.store.StoreExistsError` if ``out_path`` is a store and not
    ``overwrite``, :class:`~dataset.store.OutPathError` if it is anything else (see
    :func:`~dataset.store.check_out`); :class:`~dataset.store.OutOfSpaceError` if the disk fills up.
    """
    start = time.perf_counter()
    out = Path(out_path)
    if isinstance(input_path, Mapping):
        sources = check_split_files(input_path)
        ratios = _check_options(sources[0].path, min_count, dense, split, chunk_size)
        name = ", ".join(s.path.name for s in sources)
        where = ", ".join(str(s.path) for s in sources)  # in error messages
    else:
        sources = [Source(Path(input_path))]
        ratios = _check_options(sources[0].path, min_count, dense, split, chunk_size)
        name, where = sources[0].path.name, str(sources[0].path)
    paths = [s.path for s in sources]
    hashed = _check_hashed(hashed or {}, dense)
    check_out(out, overwrite, inputs=paths)
    _keep_freed_memory()
    bucket_dir = scratch_dir(out)
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="criteo")
    try:
        try:
            scan = _pass1(sources, bucket_dir, dense, ratios, seed, strict, progress, pool, hashed)
        except OSError as e:
            reason = space_failure(e, bucket_dir)
            if not reason:
                raise
            shutil.rmtree(bucket_dir, ignore_errors=True)
            rows = _estimated_rows(paths)
            raise out_of_space(reason, bucket_dir, f"the shuffle buckets need about "
                               f"{human_size(rows * RECORD.itemsize)} (about {rows:,} rows x {RECORD.itemsize} "
                               f"bytes)") from None
        if not sum(scan.split_rows):
            raise InputError(
                f"{where}: none of its {scan.lines:,} lines is a valid Criteo row: "
                f"{_bad_summary(scan.bad_counts, scan.bad_lines)}; pass the raw labelled train.txt"
            )
        if len(sources) > 1:
            empty = [f"{SPLIT_FLAGS[s]} {p}" for s, p, n in zip(SPLITS, paths, scan.split_rows) if not n]
            if empty:
                raise InputError(f"{' and '.join(empty)}: no valid Criteo row ({EVERY_SPLIT_NEEDED}); "
                                 f"check the file{'s' if len(empty) > 1 else ''}")
        check_split_rows(scan.split_rows, where)
        fitted = iter(FieldEncoder.fit(counts, min_count, hex_codes=not sign)
                      for counts, sign in zip(scan.counter.counts, scan.counter.signed))
        encoders = [HashedField(hashed[_field_name(c)]) if _field_name(c) in hashed else next(fitted)
                    for c in _sparse_columns(dense)]
        with StoreWriter(out, _schema(encoders, dense), "criteo", chunk_size, overwrite,
                         expected_rows=sum(scan.split_rows)) as writer:
            writer.meta["options"] = {"input": name, "min_count": min_count, "dense": dense,
                                      "split": list(ratios) if len(sources) == 1 else "given",
                                      "seed": seed, "chunk_size": chunk_size,
                                      "hashed": dict(sorted(hashed.items()))}
            writer.meta["stats"] = {"lines": scan.lines, "rows": sum(scan.split_rows),
                                    "skipped": dict(scan.bad_counts), "skipped_lines": dict(scan.bad_lines)}
            for col, encoder in zip(_sparse_columns(dense), encoders):
                writer.put_vocabulary(_field_name(col), *encoder.record(hex_codes=col >= 13))
            _pass2(scan, encoders, writer, dense, seed, progress, pool)
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(bucket_dir, ignore_errors=True)
    print(summary(writer.meta, out, time.perf_counter() - start))
    return writer.meta


def synthetic_input(n_rows: int, seed: int, raw_dir: Path = RAW_DIR, conversion: bool = False) -> Path:
    """``raw_dir/criteo[_cvr]_synthetic_<n_rows>.txt``, generated unless a file from the same rows, seed and
    labels is there (a ``.json`` sidecar records them). ``conversion``: the click -> conversion variant."""
    path = raw_dir / f"criteo{'_cvr' if conversion else ''}_synthetic_{n_rows}.txt"
    sidecar = path.with_suffix(".json")
    recipe = {"rows": n_rows, "seed": seed, **({"conversion": True} if conversion else {})}
    if path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == recipe:
        print(f"reusing {path} ({n_rows:,} synthetic rows, seed {seed})")
        return path
    started = time.perf_counter()
    write_synthetic_criteo(path, n_rows, seed=seed, conversion=conversion)
    sidecar.write_text(json.dumps(recipe))
    print(f"wrote {path} ({n_rows:,} synthetic rows, seed {seed}) in {time.perf_counter() - started:.1f} s")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help=f"raw Criteo TSV, plain or .gz (default: {DEFAULT_INPUT})")
    parser.add_argument("--dense", choices=DENSE_MODES, default="bucketize",
                        help="bucketize: I1..I13 -> floor(ln(x)^2) sparse fields (default); numeric: log1p floats")
    parser.add_argument("--hash-buckets", type=int, default=None, metavar="N",
                        help="hash every C field into N buckets instead of fitting a vocabulary (no counting pass; "
                             "values never seen still get a bucket)")
    parser.add_argument("--hash", nargs="+", default=[], metavar="FIELD=N",
                        help="hash these fields into N buckets each, e.g. --hash C3=1000000 C12=1000000")
    for split, flag in SPLIT_FLAGS.items():
        parser.add_argument(flag, default=None, metavar="FILE",
                            help=f"given split file: BARS Criteo_x4 {split}.csv (plain or gzip, with its header); "
                                 f"pass --train, --valid and --test together, instead of --input")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help=f"generate N synthetic rows into {RAW_DIR}/criteo_synthetic_N.txt and preprocess them")


def main(args: argparse.Namespace) -> int:
    """Run the subcommand (preprocess.py has checked --out and prints the errors)."""
    ratios = check_common(args.split, args.min_count, args.chunk_size)
    if args.synthetic is not None and args.input is not None:
        raise InputError("pass either --input or --synthetic N, not both")
    if args.synthetic is not None and args.synthetic < 1:
        raise InputError(f"--synthetic N needs N >= 1, got {args.synthetic}")
    given = {s: getattr(args, s) for s in SPLITS if getattr(args, s, None)}
    if given and (args.input is not None or args.synthetic is not None):
        raise InputError(f"pass either --input (or --synthetic) or the given split files --train/--valid/--test, "
                         f"not both; got {'--input' if args.input is not None else '--synthetic'} with "
                         f"{', '.join(SPLIT_FLAGS[s] for s in given)}")
    if given and args.split != DEFAULT_SPLIT:
        raise InputError(f"--split {args.split} does not apply to given split files (each file is its split); drop it")
    hashed = parse_hash_flags(args.hash_buckets, args.hash)
    _check_hashed(hashed, args.dense)
    if given:
        path: Path | dict[str, str] = given
        check_split_files(given)  # before anything is generated or opened for writing
    else:
        path = synthetic_input(args.synthetic, args.seed) if args.synthetic else Path(args.input or DEFAULT_INPUT)
    preprocess_criteo(path, args.out, min_count=args.min_count, dense=args.dense, split=ratios, seed=args.seed,
                      chunk_size=args.chunk_size, overwrite=args.overwrite, strict=args.strict, hashed=hashed)
    return 0
