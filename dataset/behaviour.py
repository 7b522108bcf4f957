"""What the behaviour-sequence datasets (``amazon``, ``synthetic_behaviour``) share.

Both hold every user's behaviours as one flat array of integer codes in time order (user ``u``'s behaviours
are ``flat[offsets[u]:offsets[u + 1]]``), cut each row's history out of it with :func:`history_index`, map
codes to ids with :func:`fit_codes` (a :class:`~dataset.vocab.Vocabulary` fit on train counts, applied once
per distinct code and then gathered with numpy, so nothing runs per row in Python), and write the splits with
:func:`write_splits` (shuffled once, seeded, vocabularies kept with the store).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import pandas as pd

from dataset.raw import InputError
from dataset.schema import Schema
from dataset.store import SPLITS, StoreWriter
from dataset.vocab import Vocabulary

WRITE_ROWS = 1 << 16  # rows gathered and handed to the writer at a time (bounds the gathered copies)

Rows = dict[str, np.ndarray]  # the StoreWriter.add blocks of some rows: sparse, dense, label, seq, seq_len


def code_strings(codes: np.ndarray, width: int = 0) -> list[str]:
    """Integer codes -> their decimal spelling, zero-padded to ``width`` digits (so that the vocabulary's
    string order is the numeric order)."""
    return [str(c).zfill(width) for c in codes.tolist()]


def fit_codes(codes: np.ndarray, counts: np.ndarray, min_count: int, width: int = 0) -> tuple[Vocabulary, np.ndarray]:
    """Distinct integer codes [V] and their train counts [V] -> (the vocabulary of the codes counted at least
    ``min_count`` times, spelled by :func:`code_strings`; the id of every code, int32 [V]). Codes below
    ``min_count`` get the OOV id 0."""
    strings = code_strings(codes, width)
    vocab = Vocabulary.fit(pd.Series(np.asarray(counts, np.int64), index=pd.Index(strings, dtype=object)), min_count)
    return vocab, vocab.encode(pd.Series(strings, dtype=object))


def history_index(ends: np.ndarray, starts: np.ndarray, max_len: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's history is ``flat[starts[r]:ends[r]]``; keep its latest ``max_len`` elements.

    Returns (flat indices int64 [n, max_len], oldest kept element first and left-aligned, positions past the
    length holding ``pad``; lengths int32 [n]). With ``pad = len(flat)``, :func:`gather_padded` reads a 0 there."""
    lengths = np.minimum(ends - starts, max_len)
    index = (ends - lengths)[:, None] + np.arange(max_len)
    index[np.arange(max_len) >= lengths[:, None]] = pad
    return index, lengths.astype(np.int32)


def gather_padded(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per-element ids ``values`` [len(flat)] -> ``values[index]`` int32 [n, max_len], where an index equal to
    ``len(values)`` (the ``pad`` of :func:`history_index`) reads 0 (one gather, no masking pass)."""
    return np.append(values.astype(np.int32), np.int32(0))[index]


def split_rows(split: np.ndarray, seed: int) -> list[np.ndarray]:
    """Row indices of each split (0 train, 1 valid, 2 test), each permuted once by ``default_rng([seed, i])``."""
    return [np.random.default_rng([seed, i]).permutation(np.flatnonzero(split == i)) for i in range(len(SPLITS))]


def write_splits(out: str | os.PathLike, schema: Schema, dataset: str, order: list[np.ndarray],
                 take: Callable[[np.ndarray], Rows], *, chunk_size: int, overwrite: bool,
                 vocabularies: dict[str, Vocabulary], options: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Write split ``SPLITS[i]`` as the rows ``order[i]`` in that order, ``take(rows)`` gathering their blocks
    (a bounded number at a time), keep the vocabularies (``__vocab__/<name>``), and -> the store's metadata."""
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1, got {chunk_size}")
    with StoreWriter(out, schema, dataset=dataset, chunk_size=chunk_size, overwrite=overwrite,
                     expected_rows=sum(len(rows) for rows in order)) as w:
        for name, rows in zip(SPLITS, order):
            for start in range(0, len(rows), WRITE_ROWS):
                block = take(rows[start:start + WRITE_ROWS])
                w.add(name, block["sparse"], block["dense"], block["label"], seq=block["seq"],
                      seq_len=block["seq_len"])
        for name, vocab in vocabularies.items():
            w.put_vocabulary(name, vocab.values())
        w.meta["options"] = dict(options)
        w.meta["stats"] = dict(stats)
    return w.meta


def label_rates(labels: np.ndarray, split: np.ndarray, names: tuple[str, ...],
                task_types: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """Mean of each label per split (the positive rate of a binary label; None for an empty split)."""
    return {s: {lab: (float(labels[split == i, t].mean()) if (split == i).any() else None)
                for t, lab in enumerate(names)} for i, s in enumerate(SPLITS)}


def summary(meta: dict[str, Any], out: str | os.PathLike, seconds: float, extra: list[str]) -> str:
    """Rows per split, label means, vocabulary and sequence sizes, time and speed, then ``extra`` lines."""
    schema = Schema.from_dict(meta["schema"])
    splits = meta["splits"]
    rows = sum(s["rows"] for s in splits.values())
    rates = meta["stats"].get("label_rates", {})
    lines = [f"{meta['dataset']} -> {out}: {rows:,} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)"]
    for name in SPLITS:
        means = ", ".join(f"{lab} {v:.2%}" if task == "binary" else f"{lab} mean {v:.3f}"
                          for (lab, v), task in zip(rates.get(name, {}).items(), schema.task_types) if v is not None)
        lines.append(f"  {name:<6}{splits[name]['rows']:>10,} rows ({splits[name]['chunks']} chunks)"
                     + (f"  {means}" if means else ""))
    lines.append("  vocabularies: " + ", ".join(f"{v} {n:,}" for v, n in schema.vocabs.items()))
    lines.append("  sparse: " + ", ".join(f"{f} ({v})" for f, v in zip(schema.sparse_fields, schema.sparse_vocabs)))
    lines.append("  sequences: " + ", ".join(f"{s.name} ({s.vocab}, max_len {s.max_len})"
                                             for s in schema.sequence_fields))
    return "\n".join(lines + extra)
