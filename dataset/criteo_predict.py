"""New raw Criteo rows in either of Criteo's formats -> the store's batch arrays: the raw TSV (train.txt /
test.txt, :class:`dataset.criteo.RawRows`) or the BARS Criteo_x4 CSV (``Label,I1..I13,C1..C26`` with its header
line; an unlabelled file is the same without the ``Label`` column), read by the very converter the given split
files go through in preprocessing (:func:`dataset.criteo.csv_to_tsv`: commas -> tabs, ``5.0`` -> ``5``) and then
encoded as TSV. Which format a file holds is read from its first line (a CSV header). dataset/predict_encode.py
finds this class by the store's dataset name.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from dataset import criteo
from dataset.criteo import AHEAD, BLOCK_BYTES, CSV_HEADER, csv_to_tsv, read_blocks
from dataset.predict_encode import EncodedBlock
from dataset.raw import in_order, open_raw


def csv_header(path: Path) -> tuple[str, ...] | None:
    """The file's Criteo_x4 header (with ``Label`` or without it), or None if its first line is not one."""
    stream, _ = open_raw(path)
    with stream:
        first = stream.readline(1 << 16).decode("utf-8", "replace").rstrip("\r\n")
    cells = tuple(first.split(","))
    return cells if cells in (CSV_HEADER, CSV_HEADER[1:]) else None


class RawRows(criteo.RawRows):
    """:class:`dataset.criteo.RawRows` that also reads Criteo_x4 CSV files (see the module docstring)."""

    @staticmethod
    def is_labelled(path: Path) -> bool:
        """Whether the file's rows carry the click: a CSV header with ``Label``, or 40 TSV columns."""
        header = csv_header(path)
        return criteo.RawRows.is_labelled(path) if header is None else header == CSV_HEADER

    def blocks(self, path: Path, labelled: bool, pool: ThreadPoolExecutor | None,
               block_bytes: int | None = None) -> Iterator[EncodedBlock]:
        """The file's lines a block at a time in file order; a CSV file's header line gets no output line."""
        if csv_header(path) is None:
            yield from super().blocks(path, labelled, pool, block_bytes)
            return
        lines = 1  # the header line
        blocks = (csv_to_tsv(b) for b in read_blocks(path, block_bytes or BLOCK_BYTES, skip_header=True))
        for block in in_order(pool, self._encode_block, blocks, labelled, ahead=AHEAD):
            block.shift(lines)
            lines += block.n_lines
            yield block
