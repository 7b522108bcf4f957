"""Start-up cuts of issue #14: train.py ranks scores for AUC with numpy alone (pandas is no longer imported at
start-up), so the ranks and the AUC must equal a brute-force computation exactly."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train

ROOT = Path(__file__).resolve().parents[1]


def brute_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each score = 1 + (# smaller) + (# equal others) / 2: the average of the ranks its ties share."""
    s = np.asarray(scores, dtype=np.float64)
    less = (s[None, :] < s[:, None]).sum(axis=1)
    equal = (s[None, :] == s[:, None]).sum(axis=1)
    return 1 + less + (equal - 1) / 2


@pytest.mark.parametrize("n,levels", [(1, 3), (9, 2), (200, 7), (300, 0)])
def test_average_ranks_equal_brute_force(n: int, levels: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.integers(0, levels, n).astype(np.float32) if levels else rng.random(n).astype(np.float32)
    assert np.array_equal(train.average_ranks(scores), brute_ranks(scores))


def test_binary_auc_equals_pair_count() -> None:
    """AUC = P(score of a positive > score of a negative) + P(tie) / 2, counted over every pair."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 400) / 4.0
    labels = (rng.random(400) < 0.3).astype(np.float32)
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert train.binary_auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


@pytest.mark.slow
def test_train_import_leaves_pandas_out() -> None:
    """pandas costs 1-3 s to import; only a run that monitors gAUC imports it (train.group_auc)."""
    code = "import sys, train; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
