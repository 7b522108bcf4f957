"""The baseline of scripts/bench_data.py: pytorch-fm's Criteo data pipeline, re-implemented.

Source of the facts (re-written here, not copied): rixwew/pytorch-fm, ``torchfm/dataset/criteo.py``
(class ``CriteoDataset``, commit df918f2). Its design, kept as is:

* cache build, pass 1: read the TSV line by line, split on tabs, skip rows without 40 columns, count every
  feature value per field in ``defaultdict``s (integers first go through :func:`convert_numeric_feature`,
  the log-squared discretization of the Criteo winners);
* the vocabulary of a field: values counted at least ``min_threshold`` times, numbered in set-iteration
  order; everything else maps to one default id per field (``len(vocabulary)``);
* cache build, pass 2: read the TSV again, map each row in Python into a ``uint32 [40]`` array
  ``[label, 39 ids]`` and ``put`` it under its own LMDB key (``struct.pack(">I", row)``), one write
  transaction per 100,000 rows; ``field_dims`` goes under its own key;
* reading: a map-style ``Dataset`` whose ``__getitem__`` does one LMDB ``get`` per row and returns
  ``(ids int64 [39], label)``; the DataLoader's default collate stacks rows into batches.

Kept too: both passes iterate the file through a tqdm progress bar (``mininterval=1``), on stderr. One
deliberate difference: ``np.long`` (gone from numpy 2) is ``np.int64``.
"""
from __future__ import annotations

import math
import struct
from collections import defaultdict
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterator

import lmdb
import numpy as np
import torch.utils.data
from tqdm import tqdm

NUM_FEATS = 39
NUM_INT_FEATS = 13
BUFFER_ROWS = 100_000


@lru_cache(maxsize=None)
def convert_numeric_feature(val: str) -> str:
    """'' -> 'NULL'; v > 2 -> str(int(ln(v)^2)); else str(v - 2)."""
    if val == "":
        return "NULL"
    v = int(val)
    return str(int(math.log(v) ** 2)) if v > 2 else str(v - 2)


def _rows(path: Path, max_rows: int | None, desc: str) -> Iterator[list[str]]:
    """The first ``max_rows`` lines of a TSV, split into cells; rows without 40 cells are skipped."""
    with open(path) as f:
        for line in tqdm(islice(f, max_rows), mininterval=1, smoothing=0.1, desc=desc):
            values = line.rstrip("\n").split("\t")
            if len(values) == NUM_FEATS + 1:
                yield values


def feature_mapper(path: Path, min_threshold: int, max_rows: int | None) -> tuple[dict, dict]:
    """Pass 1: per field, value -> id for values seen at least ``min_threshold`` times, and the default id."""
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for values in _rows(path, max_rows, "Create criteo dataset cache: counting features"):
        for i in range(1, NUM_INT_FEATS + 1):
            counts[i][convert_numeric_feature(values[i])] += 1
        for i in range(NUM_INT_FEATS + 1, NUM_FEATS + 1):
            counts[i][values[i]] += 1
    kept = {i: {feat for feat, c in cnt.items() if c >= min_threshold} for i, cnt in counts.items()}
    mapper = {i: {feat: idx for idx, feat in enumerate(feats)} for i, feats in kept.items()}
    defaults = {i: len(m) for i, m in mapper.items()}
    return mapper, defaults


def build_cache(path: str | Path, cache_path: str | Path, min_threshold: int = 10,
                max_rows: int | None = None) -> int:
    """Both passes and the per-row LMDB writes for the first ``max_rows`` lines; returns the rows written."""
    path = Path(path)
    mapper, defaults = feature_mapper(path, min_threshold, max_rows)
    field_dims = np.zeros(NUM_FEATS, dtype=np.uint32)
    for i, m in mapper.items():
        field_dims[i - 1] = len(m) + 1
    rows = 0
    with lmdb.open(str(cache_path), map_size=int(1e11)) as env:
        with env.begin(write=True) as txn:
            txn.put(b"field_dims", field_dims.tobytes())
        buffer: list[tuple[bytes, bytes]] = []
        for values in _rows(path, max_rows, "Create criteo dataset cache: setup lmdb"):
            a = np.zeros(NUM_FEATS + 1, dtype=np.uint32)
            a[0] = int(values[0])
            for i in range(1, NUM_INT_FEATS + 1):
                a[i] = mapper[i].get(convert_numeric_feature(values[i]), defaults[i])
            for i in range(NUM_INT_FEATS + 1, NUM_FEATS + 1):
                a[i] = mapper[i].get(values[i], defaults[i])
            buffer.append((struct.pack(">I", rows), a.tobytes()))
            rows += 1
            if rows % BUFFER_ROWS == 0:
                _put_all(env, buffer)
                buffer.clear()
        _put_all(env, buffer)
    return rows


def _put_all(env: lmdb.Environment, buffer: list[tuple[bytes, bytes]]) -> None:
    with env.begin(write=True) as txn:
        for key, value in buffer:
            txn.put(key, value)


def write_row_cache(cache_path: str | Path, blocks: Iterator[tuple[np.ndarray, np.ndarray]],
                    field_dims: tuple[int, ...]) -> int:
    """A cache in the same per-row layout from already-encoded blocks ``(ids [n, 39], labels [n])``, so that
    the per-row reader can be timed on exactly the rows of one of our stores. Returns the rows written."""
    rows = 0
    with lmdb.open(str(cache_path), map_size=int(1e11)) as env:
        with env.begin(write=True) as txn:
            txn.put(b"field_dims", np.asarray(field_dims, dtype=np.uint32).tobytes())
        for ids, labels in blocks:
            block = np.concatenate([labels.reshape(-1, 1), ids], axis=1).astype(np.uint32)
            with env.begin(write=True) as txn:
                for row in block:
                    txn.put(struct.pack(">I", rows), row.tobytes())
                    rows += 1
    return rows


class CriteoRowDataset(torch.utils.data.Dataset):
    """pytorch-fm's reader: one LMDB ``get`` per row -> ``(ids int64 [39], label int64)``.

    As in pytorch-fm, the environment is opened in ``__init__`` and inherited by forked workers."""

    def __init__(self, cache_path: str | Path) -> None:
        self.env = lmdb.open(str(cache_path), create=False, lock=False, readonly=True)
        with self.env.begin(write=False) as txn:
            self.length = txn.stat()["entries"] - 1
            self.field_dims = np.frombuffer(txn.get(b"field_dims"), dtype=np.uint32)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64]:
        with self.env.begin(write=False) as txn:
            a = np.frombuffer(txn.get(struct.pack(">I", index)), dtype=np.uint32).astype(np.int64)
        return a[1:], a[0]

    def __len__(self) -> int:
        return self.length
