"""synthetic_behaviour: generated user behaviour histories with a planted, history-dependent click signal.

    python preprocess.py synthetic_behaviour --rows 200000 [--rating] [--max-len 50] [--split 8,1,1]

For tests, smoke runs and demos of sequence models: the same fields as ``amazon`` (``user_id``, ``item_id``,
``cate_id``; ``hist_item_id``, ``hist_cate_id`` sharing the item and category vocabularies, so
``histories()`` pairs them the same way), so the same models run on both, plus ``hist_session``.

World (every draw vectorized numpy, from ``default_rng([--seed, stream])``, one stream per purpose):

* ``--items`` items (default 10,000) in ``--cates`` categories (default 100); each item has one category,
  every category ``items / cates`` items (a seeded permutation decides which).
* ``--users`` users (default ``rows / 20``), each with 3 distinct interest categories, uniform over all
  categories, and one behaviour sequence of ``2 * --max-len`` behaviours: each behaviour's category is one
  of the user's interests with probability 0.8 (uniform among the 3), else uniform over all categories; its
  item is uniform within the category.
* Timestamps: a user's first behaviour at a uniform time in a 30-day window; each next one after a gap
  that, with probability 0.2, opens a new session (30 minutes plus an exponential gap of mean 6 hours), else
  stays in the session (exponential of mean 2 minutes, capped below 30 minutes). Sessions are cut where two
  behaviours lie more than 30 minutes apart (DSIN's rule), so the cut finds exactly the generated sessions.
* A row: a uniform user, a uniform cut point ``t`` in ``1 .. 2 * max_len`` (the history is the behaviours
  before ``t``, the latest ``--max-len`` kept: half the rows have the full 50, the rest 1 .. 49), and a
  candidate item whose category is one of the user's interests with probability 0.5, else uniform.

Planted signal. With ``m`` the number of history behaviours (as stored, after the cut) in the candidate's
category and ``r`` the number of those in the history's latest session::

    logit = -2.5 + 1.2 * log(1 + m) + 1.0 * log(1 + r)        click ~ Bernoulli(sigmoid(logit))

Nothing else matters: the candidate's category is uniform over categories whatever its click rate, and all
users are alike, so a model without the history (item, category and user ids) is near chance (AUC ~ 0.5),
while the history gives a test AUC near the Bayes optimum recorded in ``stats["oracle_test_auc"]``. The
signal needs a count of the behaviours that match the candidate (which attention, sum-pooled, can form: DIN)
and recency by session (DSIN); a mean-pooled history only gives the matching fraction ``m / length``.

``--rating`` adds a regression label ``rating = 1 + log(1 + m) + 0.5 * log(1 + r) + noise``, noise
Gaussian with standard deviation ``--rating-noise`` (0.5); its variance is ``stats["rating_noise_variance"]``,
the test MSE a perfect model approaches.

Sessions in the store. The format holds ids, not floats per element (``seq_weight`` is a per-element weight,
not a time), so timestamps are not stored. Instead ``hist_session`` [session] gives each history element
its session, counted back from the latest: 0 = the history's latest session, 1 = the one before, ... (at
most ``max_len - 1``). Its values are spelled zero-padded (``"00"``, ``"01"``, ...) so that id = index + 2
(vocab.py's layout sorts values as strings). A model that does not know sessions pools it as one more
multi-value field.

Splits: rows are assigned by the seeded ``--split`` ratios (rows are independent draws). Vocabularies are
fit on the train rows (counts: occurrences as candidate and in histories; ``--min-count`` defaults to 1)
and kept with the store. Same flags give a byte-identical ``data.mdb``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataset.behaviour import Rows, fit_codes, history_index, label_rates, split_rows, summary, write_splits
from dataset.raw import InputError
from dataset.schema import Schema, SequenceField
from dataset.split import SplitAssigner, check_common, check_split_rows
from dataset.store import check_out

INTERESTS = 3
P_INTEREST = 0.8  # a behaviour's category is one of the user's interests
P_CANDIDATE_INTEREST = 0.5  # a candidate's category is one of the user's interests
P_NEW_SESSION = 0.2
SESSION_GAP = 1800.0  # seconds: a longer gap starts a new session (DSIN)
IN_SESSION_GAP = 120.0  # mean seconds between behaviours of a session
BETWEEN_SESSIONS = 6 * 3600.0  # mean extra seconds between sessions
WINDOW = 30 * 86400.0  # first behaviours lie in the first 30 days
CLICK = (-2.5, 1.2, 1.0)  # logit = bias + a * log1p(m) + b * log1p(r)
RATING = (1.0, 1.0, 0.5)  # rating mean = bias + a * log1p(m) + b * log1p(r)
STREAMS = {"items": 11, "users": 12, "behaviours": 13, "times": 14, "rows": 15, "labels": 16, "split": 17}
SPARSE = ("user_id", "item_id", "cate_id")
VOCABS = ("user", "item", "cate")


def rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[purpose]])


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC from average ranks (ties count half); NaN without both classes."""
    pos = label > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = pd.Series(score).rank().to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None  # the metadata is JSON: no NaN


def signal_counts(hist_cate: np.ndarray, session: np.ndarray, lengths: np.ndarray,
                  cand_cate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The planted signal's inputs: ``m`` (history elements in the candidate's category) and ``r`` (those in
    the latest session, ``session == 0``), both int64 [n]. Positions at or past ``lengths`` never count."""
    match = hist_cate == cand_cate[:, None]
    match &= np.arange(hist_cate.shape[1]) < lengths[:, None]
    return match.sum(axis=1), (match & (session == 0)).sum(axis=1)


def _check(rows: int, users: int, items: int, cates: int, max_len: int, rating_noise: float) -> None:
    for flag, value, low in (("--rows", rows, 1), ("--users", users, 1), ("--cates", cates, INTERESTS),
                             ("--max-len", max_len, 1)):
        if value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    if items < cates:
        raise InputError(f"--items ({items}) must be at least --cates ({cates}): every category needs an item")
    if not rating_noise >= 0:
        raise InputError(f"--rating-noise must be >= 0, got {rating_noise}")


def generate(rows: int, *, seed: int, users: int, items: int, cates: int, max_len: int, rating: bool,
             rating_noise: float) -> dict[str, np.ndarray]:
    """The raw world and rows (module docstring) -> arrays of raw codes (0-based), [n] or [n, max_len]:
    user, item, cate (the candidate's), hist_item, hist_cate, session (index back from the latest session;
    these three -1 past the length), length, m, r, prob (the true click probability), click and, with
    ``rating``, rating."""
    _check(rows, users, items, cates, max_len, rating_noise)
    g = rng(seed, "items")
    item_cate = g.permutation(items) % cates  # every category has items // cates or one more items
    by_cate = np.argsort(item_cate, kind="stable")  # items grouped by category
    cate_start = np.searchsorted(item_cate[by_cate], np.arange(cates))
    cate_size = np.bincount(item_cate, minlength=cates)

    def item_in(cate: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A uniform item of each category, from uniforms ``u`` in [0, 1)."""
        return by_cate[cate_start[cate] + (u * cate_size[cate]).astype(np.int64)]

    g = rng(seed, "users")
    first = g.integers(cates, size=users)  # three distinct interests: first, first + d1, first + d2 (mod cates)
    d1 = g.integers(1, cates, size=users)
    d2 = g.integers(1, cates - 1, size=users)
    d2 += d2 >= d1
    interests = np.stack([first, first + d1, first + d2], axis=1) % cates  # [U, 3]

    seq_len = 2 * max_len
    g = rng(seed, "behaviours")
    b_user = np.repeat(np.arange(users), seq_len)  # behaviour b of user u is flat index u * seq_len + b
    own = interests[b_user, g.integers(INTERESTS, size=len(b_user))]
    b_cate = np.where(g.random(len(b_user)) < P_INTEREST, own, g.integers(cates, size=len(b_user)))
    b_item = item_in(b_cate, g.random(len(b_user))).astype(np.int32)
    b_cate = b_cate.astype(np.int32)  # int32 codes: the [rows, max_len] gathers below move half the bytes

    g = rng(seed, "times")
    new_session = g.random(len(b_user)) < P_NEW_SESSION
    gap = np.where(new_session, SESSION_GAP + 1.0 + g.exponential(BETWEEN_SESSIONS, len(b_user)),
                   np.minimum(g.exponential(IN_SESSION_GAP, len(b_user)), SESSION_GAP - 1.0))
    gap = gap.reshape(users, seq_len)
    gap[:, 0] = g.random(users) * WINDOW  # the first behaviour's time
    b_time = np.cumsum(gap, axis=1).reshape(-1)
    starts = np.diff(b_time, prepend=0.0) > SESSION_GAP  # where a gap opens a new session (DSIN's cut)
    starts[::seq_len] = True
    b_session = np.cumsum(starts, dtype=np.int32)  # a running session number over all behaviours

    g = rng(seed, "rows")
    user = g.integers(users, size=rows)
    cut = g.integers(1, seq_len + 1, size=rows)  # the history is behaviours 0 .. cut-1
    own = interests[user, g.integers(INTERESTS, size=rows)]
    cate = np.where(g.random(rows) < P_CANDIDATE_INTEREST, own, g.integers(cates, size=rows))
    item = item_in(cate, g.random(rows))

    end = user * seq_len + cut
    index, length = history_index(end, user * seq_len, max_len, pad=len(b_user))
    hist_item = np.append(b_item, np.int32(-1))[index]  # raw codes, -1 past the length
    hist_cate = np.append(b_cate, np.int32(-1))[index]
    # Sessions back from the latest: the latest element's running number minus this element's; -1 past length.
    session = np.append(b_session, np.int32(0))[index]
    np.subtract(b_session[end - 1][:, None], session, out=session)
    session[index == len(b_user)] = -1
    m, r = signal_counts(hist_cate, session, length, cate)

    g = rng(seed, "labels")
    logit = CLICK[0] + CLICK[1] * np.log1p(m) + CLICK[2] * np.log1p(r)
    prob = 1.0 / (1.0 + np.exp(-logit))
    out = {"user": user, "item": item, "cate": cate, "hist_item": hist_item,
           "hist_cate": hist_cate, "session": session, "length": length, "m": m, "r": r, "prob": prob,
           "click": (g.random(rows) < prob).astype(np.float32)}
    if rating:
        mean = RATING[0] + RATING[1] * np.log1p(m) + RATING[2] * np.log1p(r)
        out["rating"] = (mean + g.normal(0.0, rating_noise, rows)).astype(np.float32)
    return out


def preprocess_synthetic_behaviour(out: str | Path, *, rows: int = 200_000, users: int | None = None,
                                   items: int = 10_000, cates: int = 100, max_len: int = 50, rating: bool = False,
                                   rating_noise: float = 0.5, split: tuple[float, float, float] = (0.8, 0.1, 0.1),
                                   min_count: int = 1, seed: int = 2018, chunk_size: int = 8192,
                                   overwrite: bool = False) -> dict[str, Any]:
    """Generate ``rows`` rows (module docstring) and write them as a store at ``out``; prints a summary."""
    start = time.perf_counter()
    users = max(1, rows // 20) if users is None else users
    if min_count < 1:
        raise InputError(f"--min-count must be >= 1, got {min_count}")
    check_out(out, overwrite)
    d = generate(rows, seed=seed, users=users, items=items, cates=cates, max_len=max_len, rating=rating,
                 rating_noise=rating_noise)
    row_split = SplitAssigner(split, seed).assign(rows)
    train = row_split == 0
    check_split_rows(np.bincount(row_split, minlength=3).tolist(), f"{rows:,} synthetic rows")

    def fit(candidate: np.ndarray | None, hist: np.ndarray, size: int, width: int = 0):
        """Vocabulary of codes 0..size-1 fit on their train-row occurrences -> (vocab, ids int32 [size + 1], the
        last one 0, so that code -1 (past a history's length) reads id 0)."""
        seen = hist[train].reshape(-1)
        counts = np.bincount(seen[seen >= 0], minlength=size)
        if candidate is not None:
            counts += np.bincount(candidate[train], minlength=size)
        vocab, ids = fit_codes(np.arange(size), counts, min_count, width)
        return vocab, np.append(ids, np.int32(0))

    user_vocab, user_ids = fit(d["user"], np.zeros((rows, 0), np.int64), users)
    item_vocab, item_ids = fit(d["item"], d["hist_item"], items)
    cate_vocab, cate_ids = fit(d["cate"], d["hist_cate"], cates)
    session_vocab, session_ids = fit(None, d["session"], max_len, len(str(max_len - 1)))
    seq = np.concatenate([item_ids[d["hist_item"]], cate_ids[d["hist_cate"]], session_ids[d["session"]]], axis=1)
    sparse = np.stack([user_ids[d["user"]], item_ids[d["item"]], cate_ids[d["cate"]]], axis=1)
    labels = ("click", "rating") if rating else ("click",)
    tasks = ("binary", "regression") if rating else ("binary",)
    label = np.stack([d[name] for name in labels], axis=1).astype(np.float32)
    seq_len = np.repeat(d["length"][:, None], 3, axis=1)

    def take(rows_: np.ndarray) -> Rows:
        return {"sparse": sparse[rows_], "dense": np.zeros((len(rows_), 0), np.float32), "label": label[rows_],
                "seq": seq[rows_], "seq_len": seq_len[rows_]}

    schema = Schema(SPARSE, (len(user_vocab), len(item_vocab), len(cate_vocab)), (), labels, task_types=tasks,
                    sparse_vocabs=VOCABS,
                    sequence_fields=(SequenceField("hist_item_id", "item", len(item_vocab), max_len),
                                     SequenceField("hist_cate_id", "cate", len(cate_vocab), max_len),
                                     SequenceField("hist_session", "session", len(session_vocab), max_len)),
                    user_field="user_id")
    test = row_split == 2
    sessions = d["session"][:, 0] + 1  # the oldest element's session index + 1 = sessions in the history
    stats: dict[str, Any] = {
        "signal": "logit = %g + %g * log1p(m) + %g * log1p(r); m = history items in the candidate's category, "
                  "r = those in the latest session" % CLICK,
        "label_rates": label_rates(label, row_split, labels, tasks),
        "oracle_test_auc": _finite(auc(d["click"][test], d["prob"][test])),
        "hist_len_mean": float(d["length"].mean()),
        "sessions_per_history_mean": float(sessions.mean()),
        "session_gap_seconds": SESSION_GAP,
        "users": users, "items": items, "cates": cates,
    }
    if rating:
        stats["rating"] = "%g + %g * log1p(m) + %g * log1p(r) + N(0, rating_noise_variance)" % RATING
        stats["rating_noise_variance"] = rating_noise ** 2
    options = {"rows": rows, "users": users, "items": items, "cates": cates, "max_len": max_len, "rating": rating,
               "rating_noise": rating_noise, "split": list(split), "min_count": min_count, "seed": seed,
               "chunk_size": chunk_size}
    vocabularies = {"user": user_vocab, "item": item_vocab, "cate": cate_vocab, "session": session_vocab}
    meta = write_splits(out, schema, "synthetic_behaviour", split_rows(row_split, seed), take, chunk_size=chunk_size,
                        overwrite=overwrite, vocabularies=vocabularies, options=options, stats=stats)
    extra = [f"  {users:,} users, {items:,} items in {cates:,} categories; mean history {stats['hist_len_mean']:.1f} "
             f"behaviours in {stats['sessions_per_history_mean']:.1f} sessions (cut at {SESSION_GAP:.0f} s gaps)",
             f"  signal: {stats['signal']}; Bayes (oracle) test AUC "
             + ("-" if stats["oracle_test_auc"] is None else f"{stats['oracle_test_auc']:.4f}")]
    if rating:
        extra.append(f"  rating noise variance {stats['rating_noise_variance']:g} (the best possible test MSE)")
    print(summary(meta, out, time.perf_counter() - start, extra))
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="rows to generate (default 200000)")
    parser.add_argument("--users", type=int, default=None, help="users (default rows / 20)")
    parser.add_argument("--items", type=int, default=10_000, help="items (default 10000)")
    parser.add_argument("--cates", type=int, default=100, help="categories (default 100)")
    parser.add_argument("--max-len", type=int, default=50, help="history length kept (default 50)")
    parser.add_argument("--rating", action="store_true", help="add a regression label `rating` (Gaussian noise)")
    parser.add_argument("--rating-noise", type=float, default=0.5, help="standard deviation of the rating noise")
    parser.set_defaults(min_count=1)


def main(args: argparse.Namespace) -> int:
    ratios = check_common(args.split, args.min_count, args.chunk_size)
    preprocess_synthetic_behaviour(args.out, rows=args.rows, users=args.users, items=args.items, cates=args.cates,
                                   max_len=args.max_len, rating=args.rating, rating_noise=args.rating_noise,
                                   split=ratios, min_count=args.min_count, seed=args.seed, chunk_size=args.chunk_size,
                                   overwrite=args.overwrite)
    return 0

