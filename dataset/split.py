"""Seeded train/valid/test assignment, streamed: the same seed and ratios give the same split,
whether rows arrive in one block or many."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dataset.raw import InputError
from dataset.store import SPLITS

DEFAULT_SPLIT = "8,1,1"  # preprocess.py --split
EVERY_SPLIT_NEEDED = "train.py needs valid rows for early stopping and test rows for the final score"


def parse_split(text: str) -> tuple[float, float, float]:
    """``"8,1,1"`` -> normalized ratios (0.8, 0.1, 0.1). Every ratio must be a positive finite number: a
    split left empty gives a store train.py refuses. A clear error names the flag on bad input."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p > 0 for p in parts):
        raise ValueError(f"--split must be three positive numbers train,valid,test (every split needs rows: "
                         f"{EVERY_SPLIT_NEEDED}), got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def check_common(split: str | Sequence[float], min_count: int | None, chunk_size: int) -> tuple[float, float, float]:
    """The flags every dataset takes (``--split`` as text or ratios, ``--min-count`` (None: the dataset's
    own rule), ``--chunk-size``), checked -> normalized split ratios; :class:`InputError` names the flag."""
    if min_count is not None and min_count < 1:
        raise InputError(f"--min-count must be >= 1, got {min_count}")
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1, got {chunk_size}")
    try:
        return parse_split(split if isinstance(split, str) else ",".join(str(r) for r in split))
    except ValueError as e:
        raise InputError(str(e)) from None


def check_split_rows(rows: Sequence[int], source: str) -> None:
    """Raise :class:`InputError` if a split got no rows (``rows``: per split, in ``SPLITS`` order)."""
    empty = [name for name, n in zip(SPLITS, rows) if n == 0]
    if empty:
        counts = ", ".join(f"{name} {n:,}" for name, n in zip(SPLITS, rows))
        raise InputError(f"{source}: split {' and '.join(empty)} got no rows ({counts}); every split needs rows "
                         f"({EVERY_SPLIT_NEEDED}): give more rows or raise its part of --split")


class SplitAssigner:
    """Assigns each row a split index (0 = train, 1 = valid, 2 = test) from one seeded stream.

    The uniforms are drawn one per row in row order, so blocks of any size give identical assignments.
    """

    def __init__(self, ratios: tuple[float, float, float], seed: int) -> None:
        self.bounds = np.cumsum(ratios)[:2]
        self.rng = np.random.default_rng(seed)

    def assign(self, n: int) -> np.ndarray:
        """-> int8 [n] split index per row."""
        return np.searchsorted(self.bounds, self.rng.random(n), side="right").astype(np.int8)


__all__ = ["DEFAULT_SPLIT", "SPLITS", "parse_split", "check_split_rows", "SplitAssigner"]
