"""New raw libFM lines (``preprocess.py frappe`` and ``libfm`` stores) -> the store's batch arrays, encoded by the
very functions preprocessing ran: :func:`dataset.libfm.tokenize`, the field layout's range check and
:class:`dataset.libfm.FieldEncoder`, rebuilt from the store's ``__vocab__/<field>`` records (the kept feature
indices of each field, with its index range) and its ``options.fields`` layout.

A labelled line is ``label index:value ...`` as in the preprocessed files. An **unlabelled** line is the same
without its label word: ``index:value ...`` (one feature per field); which one a file holds is read from its first
non-blank line (its first word has a ``:`` only when unlabelled).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dataset.libfm import (BAD_ROW_KINDS, BLANK, BLOCK_BYTES, FieldEncoder, FieldLayout, _CODE, _text_blocks,
                           tokenize)
from dataset.predict_encode import EncodedBlock, join_cells
from dataset.raw import InputError, in_order, open_raw
from dataset.store import StoreReader

AHEAD = 4  # blocks tokenized ahead of the one consumed
BLANK_KIND = "blank"
_NAMES = list(BAD_ROW_KINDS)


class RawRows:
    """Encoder of new raw libFM lines for one libFM store (see the module docstring)."""

    def __init__(self, store: StoreReader) -> None:
        fields = store.meta.get("options", {}).get("fields")
        if fields is None:
            raise InputError(f"store {store.path} keeps no field layout in its metadata; preprocess it again")
        self.layout = FieldLayout(tuple(fields["names"]), tuple(r[0] for r in fields["ranges"]),
                                  tuple(r[1] for r in fields["ranges"]), bool(fields["inferred"]))
        self.encoders = []
        for name, lo, hi in zip(self.layout.names, self.layout.lo, self.layout.hi):
            kept = np.array(sorted(int(v) for v in store.vocabulary(name)["values"]), dtype=np.int64)
            self.encoders.append(FieldEncoder.fit(kept, np.ones(len(kept), np.int64), 1, lo, hi))
        sizes = [len(e) for e in self.encoders]
        if sizes != list(store.schema.vocab_sizes):
            raise InputError(f"store {store.path}: its vocabularies give sizes {sizes}, its schema says "
                             f"{list(store.schema.vocab_sizes)}; the store is damaged: preprocess it again")

    @property
    def columns(self) -> list[str]:
        """The cells of an unlabelled line, in file order: one feature ``index:value`` per field."""
        return list(self.layout.names)

    def line(self, cells: Sequence[str]) -> bytes:
        """One raw unlabelled line (``index:value`` per field, space-separated) from its cells."""
        return join_cells(self.columns, cells, " ", "ascii")

    @staticmethod
    def is_labelled(path: Path) -> bool:
        """Whether the file's lines start with a label word, from its first non-blank line. :class:`InputError`
        if the file has none."""
        stream, _ = open_raw(path)
        with stream:
            for line in stream:
                words = line.split()
                if words:
                    return b":" not in words[0]
        raise InputError(f"{path} has no non-blank line; pass a libFM file (`label index:value ...` per line)")

    @staticmethod
    def reason(kind: str, labelled: bool) -> str:
        """Why a line of this kind got no prediction (one line, no tab)."""
        if kind == BLANK_KIND:
            return "blank line"
        if kind == "syntax" and not labelled:
            return "not `index:value ...` (an unlabelled line has no label word; each feature holds one ':')"
        return BAD_ROW_KINDS[kind]

    def blocks(self, path: Path, labelled: bool, pool: ThreadPoolExecutor | None,
               block_bytes: int | None = None) -> Iterator[EncodedBlock]:
        """The file's lines a block at a time (``block_bytes``, default the libFM reader's), in file order,
        tokenized and encoded on ``pool``. Every line, blank ones too, is a row or a bad row."""
        blocks = _text_blocks([path], block_bytes or BLOCK_BYTES, None)
        yield from in_order(pool, self._encode_block, _with_progress(blocks), labelled, ahead=AHEAD)

    def _encode_block(self, item: tuple[int, bytes, int], labelled: bool) -> EncodedBlock:
        """(first line, text ending with a newline, bytes of text so far) -> its rows encoded, lines numbered as
        in the file."""
        first_line, text, done = item
        if not labelled:  # the label word preprocessing expects, before every line
            text = b"0 " + text[:-1].replace(b"\n", b"\n0 ") + b"\n"
        lines = tokenize(text)
        kind = lines.kind.copy()
        if not labelled:
            kind[(kind == 0) & (lines.n_features == 0)] = BLANK  # nothing but the inserted label
        kind[(kind == 0) & (lines.n_features != len(self.layout))] = _CODE["fields"]
        rows = np.flatnonzero(kind == 0)
        index = lines.features(rows, len(self.layout))
        inside = self.layout.contains(index)
        kind[rows[~inside]] = _CODE["range"]
        rows, index = rows[inside], index[inside]
        sparse = np.stack([enc.encode(index[:, j]) for j, enc in enumerate(self.encoders)], axis=1)
        label = lines.label[rows].astype(np.float32)[:, None] if labelled else np.zeros((len(rows), 1), np.float32)
        bad = {(_NAMES[code - 1] if code > 0 else BLANK_KIND): np.flatnonzero(kind == code) + first_line
               for code in np.unique(kind[kind != 0]).tolist()}
        return EncodedBlock(rows.astype(np.int64) + first_line, sparse.astype(np.int32).reshape(len(rows), -1),
                            np.zeros((len(rows), 0), np.float32), label, bad, len(kind), done)


def _with_progress(blocks: Iterator[tuple[int, int, bytes]]) -> Iterator[tuple[int, bytes, int]]:
    """(file, first line, text) -> (first line, text, bytes of text read so far: the progress of a plain file)."""
    done = 0
    for _, first_line, text in blocks:
        done += len(text)
        yield first_line, text, done
