"""Seeded train/valid/test assignment, streamed: the same seed and ratios give the same split,
whether rows arrive in one block or many."""
from __future__ import annotations

import numpy as np

from dataset.store import SPLITS


def parse_split(text: str) -> tuple[float, float, float]:
    """``"8,1,1"`` -> normalized ratios (0.8, 0.1, 0.1). A clear error names the flag on bad input."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0 or parts[0] <= 0:
        raise ValueError(f"--split must be three non-negative numbers train,valid,test with train > 0, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


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


__all__ = ["SPLITS", "parse_split", "SplitAssigner"]
