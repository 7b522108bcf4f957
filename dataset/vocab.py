"""Per-field vocabularies: fit on train-split counts, deterministic ids, OOV and missing ids.

Id layout of every field (the same for every dataset):

* ``0``: OOV: values seen fewer than ``min_count`` times in the train split, and values never seen there;
* ``1``: missing (an empty cell);
* ``2 ..``: the kept values, in sorted order of their string form (so ids depend only on the data and
  ``min_count``, never on hash seeds or the order rows were read in).

Encoding is vectorized (``pandas.Index.get_indexer``), so it runs at C speed.

A field may instead be **hashed** into ``buckets`` ids (no vocabulary pass; values never seen still get
a bucket): ``id = 2 + h(value) mod buckets``, missing -> 1, vocab size ``buckets + 2``. ``h`` is a stable
hash (SipHash-2-4 with a fixed key for strings, as pandas computes it; splitmix64 for integer codes), never
Python's ``hash()``, so the same input gives the same store whatever ``PYTHONHASHSEED``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

OOV_ID = 0
MISSING_ID = 1
MISSING = ""  # how a missing cell is spelled in the raw data once read as strings


def ids_from_positions(positions: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Positions in the sorted kept values (``-1``: not kept) and missing flags, both [n] -> ids [n], in place.

    The one place that spells out the id layout: kept value ``i`` -> ``i + 2``, not kept -> OOV, missing ->
    MISSING (missing wins)."""
    ids = positions
    ids += 2  # not kept: -1 + 2 = 1, fixed next
    ids[ids == 1] = OOV_ID
    ids[missing] = MISSING_ID
    return ids


HASH_KEY = "ctr-zoo-hash-v1."  # 16 bytes: SipHash's key; changing it changes every hashed store
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def hash_strings(values: pd.Series | np.ndarray, buckets: int) -> np.ndarray:
    """Strings (``""`` or NaN: missing) -> int32 ids ``2 + SipHash(value) mod buckets``, missing -> 1."""
    values = pd.Series(values, copy=False)
    missing = values.isna().to_numpy() | (values.to_numpy() == MISSING)
    h = pd.util.hash_array(values.astype(str).to_numpy(dtype=object), hash_key=HASH_KEY, categorize=True)
    return _bucket_ids(h, missing, buckets)


def hash_codes(codes: np.ndarray, missing: np.ndarray, buckets: int) -> np.ndarray:
    """Integer codes [n] (e.g. Criteo's decoded 32-bit hex values) and missing flags -> int32 ids
    ``2 + splitmix64(code) mod buckets``, missing -> 1."""
    z = codes.astype(np.uint64) + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return _bucket_ids(z ^ (z >> np.uint64(31)), missing, buckets)


def _bucket_ids(h: np.ndarray, missing: np.ndarray, buckets: int) -> np.ndarray:
    if buckets < 1:
        raise ValueError(f"a hashed field needs at least 1 bucket, got {buckets}")
    ids = (h % np.uint64(buckets)).astype(np.int32) + 2
    ids[missing] = MISSING_ID
    return ids


class Vocabulary:
    """The kept values of one field. Build with :meth:`fit`; map with :meth:`encode`."""

    def __init__(self, values: Iterable[str]) -> None:
        kept = sorted(set(values) - {MISSING})
        self.index = pd.Index(kept, dtype=object)

    @classmethod
    def fit(cls, counts: pd.Series | dict[str, int], min_count: int) -> "Vocabulary":
        """Keep values whose train-split count is at least ``min_count``. ``counts``: value -> count."""
        counts = pd.Series(counts, dtype="int64") if isinstance(counts, dict) else counts
        return cls(counts.index[counts.to_numpy() >= min_count].astype(str))

    def __len__(self) -> int:
        """Number of ids, OOV and missing included (the field's ``vocab_size``)."""
        return len(self.index) + 2

    def encode(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Strings (``""`` or NaN for missing) -> int32 ids [n]."""
        values = pd.Series(values, copy=False)
        missing = values.isna().to_numpy() | (values.to_numpy() == MISSING)
        return ids_from_positions(self.index.get_indexer(values.astype(object)), missing).astype(np.int32)

    def values(self) -> list[str]:
        return list(self.index)


def count_values(counts: pd.Series | None, values: pd.Series) -> pd.Series:
    """Add the value counts of ``values`` (missing cells excluded) to a running ``counts`` Series."""
    new = values.dropna()
    new = new[new != MISSING].value_counts(sort=False)
    if counts is None:
        return new
    return counts.add(new, fill_value=0).astype("int64")
