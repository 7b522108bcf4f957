"""New raw rows -> the store's batch arrays, encoded exactly as preprocessing encoded the store's rows.

A trained run is scored on raw files (scripts/predict.py) with the vocabularies its store keeps
(:meth:`dataset.store.StoreReader.vocabulary`) and the dataset's own tokenizer and encoder: each dataset that
supports prediction has one class (``RAW_ROWS``: store dataset name -> ``module:Class``) built from the store
and offering

* ``is_labelled(path) -> bool``: whether the file's rows carry the label column(s);
* ``blocks(path, labelled, pool) -> Iterator[EncodedBlock]``: the file's lines in order, a block at a time;
* ``reason(kind, labelled) -> str``: why a bad row of this kind got no prediction;
* ``columns: list[str]``: the raw column names of an unlabelled row, in file order;
* ``line(cells: Sequence[str]) -> bytes``: one raw unlabelled line in the dataset's format from its cells in
  ``columns`` order ("" = a missing cell); :class:`InputError` if a cell would break the line's shape. The
  online service (scripts/serve.py) turns each JSON row into such a line and scores the lines through
  ``blocks``, so a served row is encoded by exactly the code that scores files (:func:`join_cells` builds it).

Criteo (``preprocess.py criteo``: train.txt's format, test.txt's and the BARS Criteo_x4 CSV; dataset/criteo.py,
dataset/criteo_predict.py), Avazu (the Kaggle CSV; dataset/avazu.py on dataset/table_predict.py) and Frappe /
libFM (dataset/libfm_predict.py) have one; another dataset plugs in by adding its class here, built on the same
functions its preprocessing runs.

:func:`vocabulary_checksum` fingerprints what a store keeps for encoding (train.py records it in a run's
config.json), so a run is never scored with a store preprocessed again since.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from dataset.raw import InputError
from dataset.store import StoreReader, vocabulary_checksum as checksum_of

RAW_ROWS = {"criteo": "dataset.criteo_predict:RawRows", "avazu": "dataset.avazu:RawRows",
            "frappe": "dataset.libfm_predict:RawRows", "libfm": "dataset.libfm_predict:RawRows"}


@dataclass
class EncodedBlock:
    """One block of raw lines: its valid rows as the store holds rows (sparse int32 [n, F], dense float32
    [n, D], label float32 [n, T]: zeros for unlabelled input), the 1-based line numbers ``lines`` int64 [n] of
    those rows, the line numbers of its bad rows per kind, its number of lines, and the raw bytes read so far
    (progress)."""

    lines: np.ndarray
    sparse: np.ndarray
    dense: np.ndarray
    label: np.ndarray
    bad: dict[str, np.ndarray]
    n_lines: int
    raw_pos: int

    def shift(self, lines_before: int) -> None:
        """Number the lines from the file's start: add the lines of the blocks before this one."""
        self.lines = self.lines + lines_before
        self.bad = {k: v + lines_before for k, v in self.bad.items()}


def join_cells(columns: Sequence[str], cells: Sequence[str], separator: str, encoding: str = "utf-8") -> bytes:
    """One raw line (``\\n``-terminated) from its ``cells`` in ``columns`` order, joined by ``separator``: what
    every encoder's ``line`` returns. :class:`InputError` if the number of cells is wrong, or if a cell holds
    the separator or a line break (it would change the line's shape: shifted cells, an extra line)."""
    if len(cells) != len(columns):
        raise InputError(f"a row has {len(columns)} cells ({', '.join(columns)}), got {len(cells)}")
    for name, cell in zip(columns, cells):
        if separator in cell or "\n" in cell or "\r" in cell:
            raise InputError(f"{name}: a cell cannot hold the separator {separator!r} or a line break, got {cell!r}")
    return (separator.join(cells) + "\n").encode(encoding)


def raw_rows(store: StoreReader) -> Any:
    """The encoder of new raw rows for ``store`` (its dataset's ``RawRows``, with the store's vocabularies).
    :class:`InputError` if the dataset has none yet, or the store keeps no vocabularies."""
    dataset = store.meta.get("dataset")
    if dataset not in RAW_ROWS:
        raise InputError(f"store {store.path} holds dataset {dataset!r}; predicting on raw files works for "
                         f"{', '.join(RAW_ROWS)} so far (score its test split with train.py --eval_only)")
    module, name = RAW_ROWS[dataset].split(":")
    try:
        return getattr(importlib.import_module(module), name)(store)
    except KeyError as e:
        raise InputError(f"{e.args[0]}") from None


def vocabulary_records(store: StoreReader) -> dict[str, dict[str, Any]] | None:
    """Every vocabulary the store keeps (name -> record), or None if it keeps none (written before stores
    kept them)."""
    try:
        return {name: store.vocabulary(name) for name in store.schema.vocabs}
    except KeyError:
        return None


def vocabulary_checksum(store: StoreReader) -> str | None:
    """:func:`dataset.store.vocabulary_checksum` of what ``store`` keeps now, computed from its vocabulary
    records (what encoding will use); None if it keeps no vocabularies."""
    return checksum_of(vocabulary_records(store), store.meta.get("options", {}))


def recorded_vocabulary_checksum(store: StoreReader) -> str | None:
    """The :func:`vocabulary_checksum` ``store``'s writer recorded in its metadata (what train.py records at the
    start of a run, without reading every vocabulary: 0.3 s on 87k values); computed for a store written before
    stores recorded it."""
    return store.meta["vocab_checksum"] if "vocab_checksum" in store.meta else vocabulary_checksum(store)
