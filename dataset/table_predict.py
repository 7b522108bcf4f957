"""New raw rows of a store written by the table reader from a shipped spec (``preprocess.py avazu``; a spec
without sequence fields) -> the store's batch arrays, encoded by the very functions the table reader ran.

The spec travels with the store (its metadata keeps the TOML document), the vocabularies as
``__vocab__/<name>`` records and the dense transforms in ``stats.dense_transforms``; :class:`RawRows` rebuilds
the reader's :class:`~dataset.table.BlockParser` and :class:`~dataset.table.Encoders` from them and runs
:func:`~dataset.table_read.tokenize`, ``BlockParser.parse`` and :func:`~dataset.table._encode` on each block,
as pass 2 of preprocessing did. A dataset plugs in with a subclass that names its spec (dataset/avazu.py's ``RawRows``).

An unlabelled file is the same format without the label column(s) (Avazu's Kaggle test.csv: ``id,hour,C1,...``
without ``click``); a header line naming the columns is read when the first line is one, as preprocessing does.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dataset.predict_encode import EncodedBlock, join_cells
from dataset.raw import InputError, in_order, open_raw
from dataset.store import StoreReader
from dataset.table import (AHEAD, BLOCK_BYTES, BlockParser, Encoders, FittedVocab, HashedVocab, _column_index,
                           _encode, _header, record_dtype)
from dataset.table_read import WRONG_COUNT, Decoder, TextBlock, read_blocks, split_header, tokenize
from dataset.table_spec import TableSpec

BLANK = "blank"  # the bad-row kind of a blank line, which gets an output line with no prediction


class TableRawRows:
    """Encoder of new raw rows for one table-spec store (see the module docstring). ``spec``: the dataset's
    shipped spec, which must be the one the store was preprocessed with (the store's metadata keeps the spec's
    document, but with its keys sorted: the file's column order comes from the spec file)."""

    def __init__(self, store: StoreReader, spec: TableSpec) -> None:
        stored = store.meta.get("options", {}).get("spec")
        if stored is None or stored != spec.source:
            raise InputError(f"store {store.path} was preprocessed with another spec than {spec.name}'s shipped "
                             f"one; preprocess it again with this version")
        self.spec = spec
        if store.schema.sequence_fields:
            raise InputError(f"store {store.path} has sequence fields; predicting on raw files reads stores "
                             f"without them so far (score its test split with train.py --eval_only)")
        self.schema = store.schema
        decode = Decoder(self.spec.encoding, self.spec.missing, unescape=self.spec.quoting == "csv")
        vocabs: dict[str, FittedVocab | HashedVocab] = {}
        for col in self.spec.fields:
            if col.kind == "categorical" and col.vocab_name not in vocabs:
                record = store.vocabulary(col.vocab_name)
                if "hash_buckets" in record:
                    vocabs[col.vocab_name] = HashedVocab(int(record["hash_buckets"]), decode)
                else:  # every stored value kept: counts of 1 against a min_count of 1
                    values = np.array(record["values"], dtype=object)
                    vocabs[col.vocab_name] = FittedVocab(values, np.ones(len(values), np.int64), 1, decode)
        transforms = store.meta.get("stats", {}).get("dense_transforms", {})
        self.encoders = Encoders(store.schema, vocabs, transforms)
        self.dtype = record_dtype(store.schema)
        self.unlabelled_spec = dataclasses.replace(
            self.spec, columns=tuple(c for c in self.spec.columns if c.kind != "label"))

    @property
    def columns(self) -> list[str]:
        """The raw column names of an unlabelled row, in file order."""
        return list(self.unlabelled_spec.names)

    def line(self, cells: Sequence[str]) -> bytes:
        """One raw unlabelled line (no header) in the dataset's format from its cells (:attr:`columns` order)."""
        return join_cells(self.columns, cells, self.spec.separator, self.spec.encoding)

    def is_labelled(self, path: Path) -> bool:
        """Whether the file's rows carry the label column(s), from its first line: a header naming the columns
        with or without them, or a data line with either many cells. :class:`InputError` otherwise."""
        stream, _ = open_raw(path)
        with stream:
            first = stream.readline(1 << 16)
        cells = split_header(first, self.spec.separator, self.spec.quoting, self.spec.encoding)
        with_label, without = list(self.spec.names), list(self.unlabelled_spec.names)
        if cells in (with_label, without):
            return cells == with_label
        if len(cells) in (len(with_label), len(without)) and len(with_label) != len(without):
            return len(cells) == len(with_label)
        raise InputError(f"{path}:1: {len(cells)} {self.spec.separator!r}-separated columns; {self.spec.name} "
                         f"rows have {len(with_label)} ({','.join(with_label[:4])},...) or {len(without)} (without "
                         f"the label, as a test file); pass --labels yes|no if the first line is not typical")

    def reason(self, kind: str, labelled: bool) -> str:
        """Why a row of this kind got no prediction (one line, no tab): the table reader's own kinds."""
        if kind == WRONG_COUNT:
            spec = self.spec if labelled else self.unlabelled_spec
            return f"{WRONG_COUNT} ({'a labelled' if labelled else 'an unlabelled'} row has {len(spec.names)})"
        return "blank line" if kind == BLANK else kind.replace("\t", " ")

    def blocks(self, path: Path, labelled: bool, pool: ThreadPoolExecutor | None,
               block_bytes: int | None = None) -> Iterator[EncodedBlock]:
        """The file's lines (a header line, if any, skipped) a block at a time (``block_bytes``, default the
        table reader's), in file order, tokenized, parsed and encoded on ``pool``."""
        spec = self.spec if labelled else self.unlabelled_spec
        stream, raw = open_raw(path)
        with stream:
            names, first_line, head = _header(stream, path, spec)
            parser = BlockParser(spec, _column_index(names, path, spec))
            blocks = read_blocks(stream, block_bytes or BLOCK_BYTES, first_line, head, raw)
            yield from in_order(pool, self._encode_block, blocks, spec, parser, len(names), ahead=AHEAD)

    def _encode_block(self, block: TextBlock, spec: TableSpec, parser: BlockParser, n_columns: int) -> EncodedBlock:
        """One block -> its valid rows encoded; line numbers are the file's (the block knows its first line)."""
        rows, bad, n_lines = tokenize(block, n_columns, spec.separator, spec.quoting)
        parsed, bad_fields = parser.parse(rows)
        seen = np.zeros(n_lines, bool)  # tokenize skips blank lines silently: they become bad rows here
        for lines in (rows.lines, *bad.values()):
            seen[lines - block.first_line] = True
        if not seen.all():
            bad[BLANK] = np.flatnonzero(~seen) + block.first_line
        rec = _encode(parsed, spec, self.encoders, self.dtype)
        n = len(parsed)
        dense = rec["dense"] if self.schema.num_dense else np.zeros((n, 0), np.float32)
        return EncodedBlock(parsed.lines.astype(np.int64), rec["sparse"].astype(np.int32), dense.astype(np.float32),
                            rec["label"].astype(np.float32), {**bad, **bad_fields}, n_lines, block.raw_pos)
