"""Seeded shuffle buckets that spill to disk: how preprocessing shuffles a file larger than memory.

Pass 1 (or 2) sends every row, as a fixed-size binary record, to a bucket drawn at random (seeded); the
writing pass then loads one bucket at a time, permutes it (seeded) and writes it. A random bucket and a
random order inside it is a uniform shuffle, done once, with memory bounded by the largest bucket plus
``hold_bytes`` whatever the input size. Used by the Criteo, libFM and table readers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np


def bucket_count(rows: int, record_bytes: int, bucket_bytes: int, max_buckets: int) -> int:
    """Buckets of about ``bucket_bytes`` of records each for ``rows`` rows (1 .. ``max_buckets``)."""
    return int(min(max_buckets, max(1, math.ceil(rows * record_bytes / bucket_bytes))))


class ShuffleBuckets:
    """K buckets of records of one numpy ``dtype``. Records stay in memory up to ``hold_bytes`` in all;
    past that everything held is appended to one file per bucket in ``directory`` (made on first use; the
    caller removes it). Records keep their order inside a bucket; ``rows[k]`` counts bucket ``k``'s."""

    def __init__(self, directory: Path, n: int, dtype: np.dtype, hold_bytes: int) -> None:
        self.directory, self.dtype, self.hold_bytes = Path(directory), np.dtype(dtype), hold_bytes
        self.held: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.held_bytes = 0
        self.rows = [0] * n

    def __len__(self) -> int:
        return len(self.held)

    def add(self, rec: np.ndarray, bucket: np.ndarray) -> None:
        """Append record ``i`` to bucket ``bucket[i]``."""
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(len(self) + 1))
        rec = np.take(rec, order)
        for k in np.flatnonzero(np.diff(bounds)).tolist():
            self.held[k].append(rec[bounds[k]:bounds[k + 1]])
            self.rows[k] += int(bounds[k + 1] - bounds[k])
        self.held_bytes += rec.nbytes
        if self.held_bytes > self.hold_bytes:
            self._spill()

    def _spill(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for k, parts in enumerate(self.held):
            if parts:
                with open(self._file(k), "ab", buffering=1 << 20) as f:
                    for part in parts:
                        f.write(part.data)
        self.held = [[] for _ in self.held]
        self.held_bytes = 0

    def take(self, k: int) -> np.ndarray:
        """Every record of bucket ``k`` in the order added (spilled ones came first); they leave the buckets."""
        parts = self.held[k]
        if self._file(k).exists():
            parts = [np.fromfile(self._file(k), dtype=self.dtype), *parts]
            self._file(k).unlink()
        self.held[k] = []
        return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

    def take_by_split(self, k: int, perm: np.ndarray, splits: int = 3) -> list[np.ndarray]:
        """Bucket ``k``'s records (which carry a ``split`` field) permuted by ``perm``, then grouped by split
        (stably): one array per split, in split order. They leave the buckets."""
        rec = self.take(k)
        rec = np.take(rec, perm[np.argsort(rec["split"][perm], kind="stable")])
        bounds = np.searchsorted(rec["split"], np.arange(splits + 1))
        return [rec[bounds[s]:bounds[s + 1]] for s in range(splits)]

    def permutations(self, seed: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(k, the seeded permutation of bucket k)`` for every bucket in turn: the write-time shuffle."""
        rng = np.random.default_rng([seed, 2])
        for k, n in enumerate(self.rows):
            yield k, rng.permutation(n)

    def _file(self, k: int) -> Path:
        return self.directory / f"{k:05d}.bin"
