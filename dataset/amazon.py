"""amazon: Amazon reviews (S3Rec's Beauty file) -> a behaviour-sequence store, by DIN's Amazon protocol.

    python preprocess.py amazon --input ../shared/data/amazon/Beauty.txt [--max-len 50] [--min-count 1]

Protocol (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, Sec. 6.1, and
the preparation script released with it, whose output DeepCTR's DIN example and BARS' AmazonElectronics_x1
reuse): a user's reviews ``b_1 .. b_n``, in time order, give the targets ``k = 1 .. n-1``: predict
``b_(k+1)`` from the history ``b_1 .. b_k``. Every target gives two rows with the same history: the item
actually reviewed next (``click`` 1) and one negative item (``click`` 0) that the user never reviewed. The
last target (``k = n-1``) is the test split, as in DIN; both rows of a target are always in the same split.

Fields (vocabularies in brackets; ``histories()`` pairs ``item_id`` with ``hist_item_id`` and ``cate_id``
with ``hist_cate_id``):

* ``user_id`` [user]: the schema's ``user_field`` (gAUC groups rows by it);
* ``item_id`` [item], ``cate_id`` [cate]: the candidate item and its main category;
* ``item_attrs`` [attr]: every attribute id of the candidate (brand and categories), a multi-value sequence
  field, in the file's order; its ``max_len`` is the largest attribute count of a reviewed item (6 on
  Beauty), at most ``--max-attrs`` (8; longer lists keep their first 8, counted in the stats);
* ``hist_item_id`` [item], ``hist_cate_id`` [cate]: the latest ``--max-len`` (50) items of the history and
  their categories, oldest first, left-aligned; positions past the length are 0 (the length masks them).

Main category: S3Rec built ``Beauty_item2attributes.json`` from the Amazon metadata as ``[brand (when the
item has one)] + every category path without its root ("Beauty")``, so an item's list ends with
``categories[-1][-1]``, the most specific category of its last path, which is exactly the category DIN's
preparation keeps (``categories[-1][-1]``). ``cate_id`` is therefore the item's **last** attribute (not the
first, which is the brand whenever the item has one, nor the most frequent, a broad category shared by many
items). On Beauty no item's last attribute is one that only ever occurs first in a list (where brands are),
and the 12,101 items have 195 distinct last attributes. An item without attributes gets the missing id 1
as ``cate_id`` and an empty ``item_attrs``.

Departures from the paper, and why:

* Beauty, not Electronics: this workspace has S3Rec's 5-core Beauty (22,363 users, 12,101 items, 198,502
  reviews, ids re-indexed from 1); the protocol does not depend on the category.
* Categories and attributes come from S3Rec's item -> attributes file (see above), not the raw metadata.
* A validation split, which DIN does not have (BARS validates on test): each user's second-to-last target
  (``k = n-2``) goes to valid, so valid asks test's question one step earlier (the item after the latest
  history; one positive and one negative per user), and no train row sees a user's valid or test item.
  A seeded fraction of train targets would leak instead: a valid target taken from the middle of a sequence
  is in the histories of that user's later train rows, and valid would not look like test. Train keeps
  the targets ``k = 1 .. n-3`` (DIN trains on ``1 .. n-2``). A user with exactly 3 reviews gives a valid
  and a test target and no train target (none on the 5-core Beauty).
* Negatives are drawn uniformly over the items of the review file the user never reviewed (DIN draws
  uniformly over all items and rejects the user's own, the same distribution; not popularity-weighted), one
  per target, from ``numpy.random.default_rng([--seed, 1000])``.
* Histories are cut to the latest ``--max-len`` reviews (DIN keeps the whole history).

Vocabularies are fit on train events only (ids per ``dataset/vocab.py``: 0 OOV, 1 missing, 2.. kept values in
sorted order of their decimal string): a value's count is the number of train-split events it takes part
in, an event being a review visible to train rows (``b_1 .. b_(n-2)`` of a user with train targets) or a
train row's negative item (its user, item, category and attributes each count once). ``--min-count``
defaults to 1 here: the ids are already dense and 5-core filtered, so every value seen in train keeps its
own id, and values seen only in valid or test (e.g. an item only ever reviewed last) map to OOV. The four
vocabularies are kept with the store (``StoreReader.vocabulary("item")`` etc.).

Input: one line per user, ``user item item ...`` (whitespace-separated non-negative integer ids, reviews in
time order). A line with a field that is not such an id, or a second line for a user, is skipped, counted and
reported with its line number (``--strict`` stops at the first, naming it); a user with fewer than 3 reviews
cannot give a train or valid target and a test target, and is always skipped and counted (that is a
property of the data, not a malformed line). Blank lines are ignored. ``--split`` does not apply.

Same input and flags give a byte-identical ``data.mdb`` (no hashing or set order is involved); splits are
shuffled once at write time with ``default_rng([--seed, split index])``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dataset.behaviour import (Rows, fit_codes, gather_padded, history_index, label_rates, split_rows, summary,
                               write_splits)
from dataset.raw import InputError
from dataset.schema import Schema, SequenceField
from dataset.store import SPLITS, check_out
from dataset.tabular import open_text, resolve_input
from dataset.vocab import MISSING_ID, OOV_ID, Vocabulary

DEFAULT_INPUT = Path("data/raw/amazon/Beauty.txt")
SHARED_INPUT = "../shared/data/amazon/Beauty.txt"
SOURCE = "https://github.com/aHuiWang/CIKM2020-S3Rec (data/Beauty.txt and data/Beauty_item2attributes.json)"
ATTRIBUTES_SUFFIX = "_item2attributes.json"
MIN_REVIEWS = 3
MAX_DIGITS = 18  # an id must fit in int64
FIRST_LINES_KEPT = 5  # line numbers remembered per skip reason
BAD_ID = "bad id"
REPEATED_USER = "repeated user"
SHORT_USER = "short user"
SKIP_REASONS = {
    BAD_ID: f"a field is not a non-negative integer id of at most {MAX_DIGITS} digits",
    REPEATED_USER: "the user already has a line above",
    SHORT_USER: f"fewer than {MIN_REVIEWS} reviews",
}
NEGATIVE_STREAM = 1000  # negatives: default_rng([seed, 1000]); the split shuffles use [seed, 0..2]
SPARSE = ("user_id", "item_id", "cate_id")
VOCABS = ("user", "item", "cate")
LABEL = "click"


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class Reviews:
    """The users of a review file with at least ``MIN_REVIEWS`` reviews.

    Attributes:
        users: int64 [U] raw user ids, in file order.
        lines: int64 [U] the line of each user.
        offsets: int64 [U + 1]: user ``u``'s reviews are ``items[offsets[u]:offsets[u + 1]]``, oldest first.
        items: int64 [R] raw item ids.
        lines_read: lines in the file.
        skipped: reason (``SKIP_REASONS``) -> lines skipped for it; skipped_lines: reason -> the first ones.
    """

    users: np.ndarray
    lines: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    lines_read: int
    skipped: Counter = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def _all_ids(fields: list[str]) -> bool:
    """Whether every field is an id (one check of the joined text per line, not one per field)."""
    joined = "".join(fields)
    return joined.isascii() and joined.isdigit() and max(map(len, fields)) <= MAX_DIGITS


def read_reviews(path: str | Path, strict: bool = False) -> Reviews:
    """Read a ``user item item ...`` file (plain or gzip); see the module docstring for what is skipped."""
    with open_text(path) as f:
        text = f.read()
    users: list[int] = []
    lines: list[int] = []
    items: list[list[str]] = []
    seen: set[int] = set()
    skipped: Counter = Counter()
    first: dict[str, list[int]] = {}
    line_no = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        reason = None
        if not _all_ids(fields):
            reason = BAD_ID
        elif int(fields[0]) in seen:
            reason = REPEATED_USER
        if reason is not None and strict:
            raise InputError(f"{path} line {line_no}: {SKIP_REASONS[reason]}: {line[:120]!r}; fix or delete that "
                             f"line, or drop --strict to skip such lines")
        if reason is None:
            seen.add(int(fields[0]))
            if len(fields) - 1 < MIN_REVIEWS:
                reason = SHORT_USER
        if reason is not None:
            skipped[reason] += 1
            kept = first.setdefault(reason, [])
            if len(kept) < FIRST_LINES_KEPT:
                kept.append(line_no)
            continue
        users.append(int(fields[0]))
        lines.append(line_no)
        items.append(fields[1:])
    counts = np.fromiter((len(t) for t in items), np.int64, len(items))
    flat = np.fromiter(map(int, (t for ts in items for t in ts)), np.int64, int(counts.sum()))
    reviews = Reviews(np.array(users, np.int64), np.array(lines, np.int64), np.concatenate([[0], np.cumsum(counts)]),
                      flat, line_no, skipped, first)
    if not len(reviews.users):
        raise InputError(f"{path}: no user with at least {MIN_REVIEWS} reviews in {line_no:,} lines "
                         f"({skipped_text(reviews) or 'the file is empty'}); pass a `user item item ...` file "
                         f"such as {SHARED_INPUT}")
    return reviews


def skipped_text(reviews: Reviews) -> str:
    """What was skipped, e.g. ``"2 short user (fewer than 3 reviews; first at lines 4, 9); 1 bad id (...; line 7)"``,
    or "" when nothing was."""
    def where(lines: list[int]) -> str:
        return f"line {lines[0]}" if len(lines) == 1 else f"first at lines {', '.join(map(str, lines))}"

    return "; ".join(f"{reviews.skipped[r]:,} {r} ({SKIP_REASONS[r]}; {where(reviews.skipped_lines[r])})"
                     for r in SKIP_REASONS if reviews.skipped[r])


def default_attributes(input_path: str | Path) -> Path:
    """``dir/Beauty.txt`` -> ``dir/Beauty_item2attributes.json`` (S3Rec's naming)."""
    path = Path(input_path)
    stem = path.name.split(".")[0]
    return path.with_name(stem + ATTRIBUTES_SUFFIX)


def read_attributes(path: str | Path) -> dict[int, list[int]]:
    """S3Rec's ``{"item id": [attribute id, ...], ...}`` JSON -> item id -> attribute ids (file order kept)."""
    if not Path(path).is_file():
        raise InputError(f"attributes file {path} does not exist; pass the item -> attributes JSON with --attributes "
                         f"(S3Rec's <name>{ATTRIBUTES_SUFFIX}, from {SOURCE})")
    with open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not JSON ({e}); pass the item -> attributes file with --attributes") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a JSON {type(data).__name__}, not an object item id -> attribute ids")
    out: dict[int, list[int]] = {}
    for key, values in data.items():
        ok = isinstance(values, list) and all(type(v) is int and 0 <= v < 1 << 62 for v in values)
        if not (_is_id(key) and ok):
            raise InputError(f"{path}: entry {key!r}: {str(values)[:80]} is not `item id: [attribute id, ...]` "
                             f"with non-negative integers; pass S3Rec's {ATTRIBUTES_SUFFIX} file")
        out[int(key)] = values
    return out


# ---------------------------------------------------------------------------------------------- building


@dataclass
class Items:
    """The attribute tables of the distinct items of the review file (``codes``: their raw ids, sorted).

    cate: int64 [I] raw main category (the last attribute; -1 without attributes).
    attrs: int64 [I, A] raw attribute ids, the first A of each list, -1 past ``attr_len`` int64 [I].
    """

    codes: np.ndarray
    cate: np.ndarray
    attrs: np.ndarray
    attr_len: np.ndarray
    without: int  # items with no attributes (or not in the file)
    truncated: int  # items with more than A attributes


def item_tables(codes: np.ndarray, attributes: dict[int, list[int]], max_attrs: int) -> Items:
    lists = [attributes.get(c, []) for c in codes.tolist()]
    lengths = np.fromiter((len(v) for v in lists), np.int64, len(lists))
    width = int(max(1, min(max_attrs, lengths.max(initial=0))))
    attrs = np.full((len(lists), width), -1, np.int64)
    for row, values in enumerate(lists):
        attrs[row, :min(len(values), width)] = values[:width]
    cate = np.fromiter((v[-1] if v else -1 for v in lists), np.int64, len(lists))
    return Items(codes, cate, attrs, np.minimum(lengths, width), int((lengths == 0).sum()),
                 int((lengths > width).sum()))


def sample_negatives(t_user: np.ndarray, review_user: np.ndarray, review_item: np.ndarray, n_items: int,
                     users: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One item per target, uniform over the items its user never reviewed (draw uniformly over all items,
    redraw the ones the user reviewed, vectorized) -> (item codes int64 [T], number of redraws).

    ``t_user`` [T] and ``review_user`` [R] are user indices, ``review_item`` [R] item codes in 0..n_items-1."""
    keys = np.unique(review_user * n_items + review_item)  # the (user, item) pairs reviewed, sorted
    full = np.flatnonzero(np.bincount(keys // n_items, minlength=len(users)) >= n_items)
    if len(full):
        raise InputError(f"user {users[full[0]]} reviewed every one of the {n_items} items: no negative item can "
                         f"be drawn for it; drop that user or add items")
    negatives = rng.integers(n_items, size=len(t_user))
    todo = np.arange(len(t_user))
    redraws = 0
    while len(todo):
        query = t_user[todo] * n_items + negatives[todo]
        found = keys[np.minimum(np.searchsorted(keys, query), len(keys) - 1)] == query
        todo = todo[found]
        redraws += len(todo)
        negatives[todo] = rng.integers(n_items, size=len(todo))
    return negatives, redraws


def _codes_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids (-1 = none) -> (distinct ids, sorted; code of each value, -1 where none)."""
    distinct = np.unique(values[values >= 0])
    return distinct, np.where(values >= 0, np.searchsorted(distinct, values), -1)


def _counts(codes: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(codes[codes >= 0], minlength=size)


@dataclass
class Built:
    """A whole store in memory: schema, vocabularies, row -> split, ``take(rows)`` and stats."""

    schema: Schema
    vocabularies: dict[str, Vocabulary]
    split: np.ndarray
    take: Callable[[np.ndarray], Rows]
    stats: dict[str, Any]


def build(reviews: Reviews, attributes: dict[int, list[int]], *, max_len: int, max_attrs: int, min_count: int,
          seed: int) -> Built:
    """DIN's protocol on ``reviews`` (module docstring) -> the rows, still unshuffled (positives, then negatives)."""
    n = np.diff(reviews.offsets)  # [U] reviews per user
    n_users = len(n)
    universe, review_item = np.unique(reviews.items, return_inverse=True)  # [I] raw item ids, [R] their codes
    review_item = review_item.reshape(-1)
    review_user = np.repeat(np.arange(n_users), n)
    items = item_tables(universe, attributes, max_attrs)

    # Targets k = 1 .. n-1 of every user: predict review k (0-based) from reviews 0 .. k-1.
    t_user = np.repeat(np.arange(n_users), n - 1)
    first_target = np.cumsum(n - 1) - (n - 1)
    k = np.arange(len(t_user)) - first_target[t_user] + 1
    t_pos = reviews.offsets[t_user] + k  # flat index of the target review
    n_t = n[t_user]
    t_split = np.where(k == n_t - 1, 2, np.where(k == n_t - 2, 1, 0)).astype(np.int8)
    rng = np.random.default_rng([seed, NEGATIVE_STREAM])
    negatives, redraws = sample_negatives(t_user, review_user, review_item, len(universe), reviews.users, rng)

    # Train events: the reviews train rows see (b_1 .. b_(n-2) of users with a train target) and train negatives.
    local = np.arange(len(review_item)) - np.repeat(reviews.offsets[:-1], n)
    visible = (local <= n[review_user] - 3) & (n[review_user] >= 4)
    train = t_split == 0
    event_item = np.concatenate([review_item[visible], negatives[train]])
    event_user = np.concatenate([review_user[visible], t_user[train]])

    user_vocab, user_ids = fit_codes(reviews.users, np.bincount(event_user, minlength=n_users), min_count)
    item_vocab, item_ids = fit_codes(universe, np.bincount(event_item, minlength=len(universe)), min_count)
    cates, item_cate = _codes_of(items.cate)
    cate_vocab, cate_ids = fit_codes(cates, _counts(item_cate[event_item], len(cates)), min_count)
    attrs, item_attr = _codes_of(items.attrs)
    attr_vocab, attr_ids = fit_codes(attrs, _counts(item_attr[event_item].reshape(-1), len(attrs)), min_count)
    item_cate_id = np.where(item_cate >= 0, cate_ids[item_cate], MISSING_ID).astype(np.int32)  # [I]
    item_attr_ids = np.where(item_attr >= 0, attr_ids[item_attr], 0).astype(np.int32)  # [I, A], 0 (padding) past length

    index, hist_len = history_index(t_pos, reviews.offsets[t_user], max_len, pad=len(review_item))  # [T, L]
    # hist_item_id and hist_cate_id side by side, as in the seq block: [T, 2L]
    hist = np.concatenate([gather_padded(item_ids[review_item], index),
                           gather_padded(item_cate_id[review_item], index)], axis=1)

    n_targets = len(t_user)
    row_target = np.concatenate([np.arange(n_targets), np.arange(n_targets)])
    candidate = np.concatenate([review_item[t_pos], negatives])  # item codes
    label = np.concatenate([np.ones(n_targets, np.float32), np.zeros(n_targets, np.float32)])[:, None]
    split = np.concatenate([t_split, t_split])

    def take(rows: np.ndarray) -> Rows:
        target, item = row_target[rows], candidate[rows]
        return {
            "sparse": np.stack([user_ids[t_user[target]], item_ids[item], item_cate_id[item]], axis=1),
            "dense": np.zeros((len(rows), 0), np.float32),
            "label": label[rows],
            "seq": np.concatenate([item_attr_ids[item], hist[target]], axis=1),
            "seq_len": np.stack([items.attr_len[item], hist_len[target], hist_len[target]], axis=1),
        }

    width = items.attrs.shape[1]
    schema = Schema(SPARSE, (len(user_vocab), len(item_vocab), len(cate_vocab)), (), (LABEL,), sparse_vocabs=VOCABS,
                    sequence_fields=(SequenceField("item_attrs", "attr", len(attr_vocab), width),
                                     SequenceField("hist_item_id", "item", len(item_vocab), max_len),
                                     SequenceField("hist_cate_id", "cate", len(cate_vocab), max_len)),
                    user_field="user_id")
    test_pos = np.flatnonzero(t_split == 2)
    stats = {
        "lines": reviews.lines_read,
        "users": n_users,
        "reviews": int(n.sum()),
        "items": len(universe),
        "skipped": {r: reviews.skipped[r] for r in SKIP_REASONS if reviews.skipped[r]},
        "skipped_lines": {r: reviews.skipped_lines[r] for r in SKIP_REASONS if reviews.skipped[r]},
        "targets": {s: int((t_split == i).sum()) for i, s in enumerate(SPLITS)},
        "negative_redraws": redraws,
        "main_category": "the item's last attribute (S3Rec lists brand, then category paths without their root, "
                         "so the last is categories[-1][-1], DIN's category)",
        "valid": "each user's second-to-last target (k = n-2)",
        "items_without_attributes": items.without,
        "items_with_attributes_cut": items.truncated,
        "hist_len_mean": {s: float(hist_len[t_split == i].mean()) if (t_split == i).any() else None
                          for i, s in enumerate(SPLITS)},
        "test_positive_item_oov": float((item_ids[review_item[t_pos[test_pos]]] == OOV_ID).mean())
        if len(test_pos) else None,
        "label_rates": label_rates(label, split, (LABEL,), ("binary",)),
    }
    vocabularies = {"user": user_vocab, "item": item_vocab, "cate": cate_vocab, "attr": attr_vocab}
    return Built(schema, vocabularies, split, take, stats)


# ----------------------------------------------------------------------------------------------- writing


def preprocess_amazon(input_path: str | Path, attributes_path: str | Path, out: str | Path, *, max_len: int = 50,
                      max_attrs: int = 8, min_count: int = 1, seed: int = 2018, chunk_size: int = 8192,
                      overwrite: bool = False, strict: bool = False) -> dict[str, Any]:
    """Review file + attributes JSON -> store at ``out`` (module docstring); prints a summary, -> metadata."""
    start = time.perf_counter()
    for flag, value in (("--max-len", max_len), ("--max-attrs", max_attrs), ("--min-count", min_count),
                        ("--chunk-size", chunk_size)):
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    check_out(out, overwrite, inputs=[input_path, attributes_path])
    reviews = read_reviews(input_path, strict)
    built = build(reviews, read_attributes(attributes_path), max_len=max_len, max_attrs=max_attrs,
                  min_count=min_count, seed=seed)
    # File names, not paths: the same files give the same store wherever they lie.
    options = {"input": Path(input_path).name, "attributes": Path(attributes_path).name, "max_len": max_len,
               "max_attrs": max_attrs, "min_count": min_count, "seed": seed, "chunk_size": chunk_size}
    meta = write_splits(out, built.schema, "amazon", split_rows(built.split, seed), built.take, chunk_size=chunk_size,
                        overwrite=overwrite, vocabularies=built.vocabularies, options=options, stats=built.stats)
    s = built.stats
    extra = [f"  {s['users']:,} users, {s['reviews']:,} reviews, {s['items']:,} items from {s['lines']:,} lines of "
             f"{input_path}; targets " + ", ".join(f"{k} {v:,}" for k, v in s["targets"].items())
             + " (2 rows each: the next item and one negative)",
             f"  skipped: {skipped_text(reviews) or 'nothing'}",
             f"  cate_id = each item's last attribute; items without attributes: {s['items_without_attributes']:,}; "
             f"items with more than {built.schema.sequence_fields[0].max_len} attributes (cut): "
             f"{s['items_with_attributes_cut']:,}"]
    print(summary(meta, out, time.perf_counter() - start, extra))
    return meta


# ------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None,
                        help=f"`user item item ...` review file, plain or .gz (default {DEFAULT_INPUT})")
    parser.add_argument("--attributes", default=None,
                        help=f"item -> attribute ids JSON (default: next to --input, <name>{ATTRIBUTES_SUFFIX})")
    parser.add_argument("--max-len", type=int, default=50, help="history length: the latest reviews kept (default 50)")
    parser.add_argument("--max-attrs", type=int, default=8,
                        help="item_attrs keeps at most this many attributes per item (default 8)")
    # Ids are dense and 5-core filtered already: keep every value seen in train. The split is the protocol's.
    parser.set_defaults(min_count=1, split=None)


def main(args: argparse.Namespace) -> int:
    if args.split is not None:
        raise InputError("--split does not apply to amazon: DIN's protocol puts each user's last target in test and "
                         "the one before in valid (see `python preprocess.py amazon --help`)")
    args.input = resolve_input(
        args.input, DEFAULT_INPUT,
        f"pass --input {SHARED_INPUT} (22,363 users in this workspace), or download Beauty.txt and "
        f"Beauty{ATTRIBUTES_SUFFIX} from {SOURCE} into {DEFAULT_INPUT.parent}/")
    attributes = args.attributes or default_attributes(args.input)
    preprocess_amazon(args.input, attributes, args.out, max_len=args.max_len, max_attrs=args.max_attrs,
                      min_count=args.min_count, seed=args.seed, chunk_size=args.chunk_size, overwrite=args.overwrite,
                      strict=args.strict)
    return 0
