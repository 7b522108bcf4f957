"""Reading a delimited text table fast, in blocks of whole lines, with numpy instead of a per-cell parser.

A block of text is tokenized at once: the positions of the separator and newline bytes give every line's
cell count (lines with another count are bad rows, by line number) and every cell's span. A column whose
cells have at most 8 bytes is then read as :class:`Codes`: each cell's bytes packed into one ``uint64``,
with no Python object per cell, so counting (``pandas.factorize``) and encoding (a hash lookup) work on
integers. Other columns (longer cells, ``csv`` quoting, and the numeric, label and time columns, which need
their text) are read as :class:`Cells`: the block's distinct values as strings, ``labels``, and each cell's
index into them, ``inverse``; wide cells are grouped as fixed-width byte strings (``numpy.unique``).
Multi-value cells (``"a|b|c"``) are split into element spans, then read the same way.

In :class:`Cells` the label ``""`` is missing, and ``labels`` may repeat a string (two spellings of one
value, e.g. quoted and unquoted), which counting and encoding allow.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
import pandas as pd

PAD = 16  # zero bytes before and after a block's text, so 8-byte reads ending in a cell stay inside the buffer
NEWLINE, CR, QUOTE = ord("\n"), ord("\r"), ord('"')
WRONG_COUNT = "wrong number of columns"
UNBALANCED = "unbalanced quotes"


@dataclass
class TextBlock:
    """Whole lines of text at ``buf[PAD:PAD + size]``; only at the end of the file may the last line lack its
    newline. ``first_line``: the 1-based line number of its first line in the file; ``raw_pos``: bytes of the
    file read so far (for progress)."""

    buf: np.ndarray
    size: int
    first_line: int
    raw_pos: int = 0

    @classmethod
    def of(cls, text: bytes, first_line: int = 1, raw_pos: int = 0) -> "TextBlock":
        buf = np.zeros(len(text) + 2 * PAD, np.uint8)
        buf[PAD:PAD + len(text)] = np.frombuffer(text, np.uint8)
        return cls(buf, len(text), first_line, raw_pos)

    @property
    def text(self) -> np.ndarray:
        return self.buf[PAD:PAD + self.size]


def read_blocks(stream: BinaryIO, block_bytes: int, first_line: int = 1, head: bytes = b"",
                position: BinaryIO | None = None) -> Iterator[TextBlock]:
    """Cut ``stream`` into blocks of whole lines of about ``block_bytes`` each (a longer line makes a longer
    block). ``head``: bytes already read from the stream that come first (a line taken for a header check).
    ``position``: the file whose ``tell()`` reports progress (the raw file under a gzip stream)."""
    tail, line = head, first_line
    while True:
        data = stream.read(max(1, block_bytes))
        if not data:
            if tail:
                yield TextBlock.of(tail, line, position.tell() if position else 0)
            return
        chunk = tail + data
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            tail = chunk
            continue
        yield TextBlock.of(chunk[:cut], line, position.tell() if position else 0)
        line += chunk.count(b"\n", 0, cut)
        tail = chunk[cut:]


def split_header(line: bytes, separator: str, quoting: str, encoding: str) -> list[str]:
    """One header or first line -> its cells as strings (quotes removed in ``csv`` quoting)."""
    text = line.decode(encoding, "surrogateescape").rstrip("\r\n")
    if quoting == "csv":
        return next(csv.reader([text], delimiter=separator), [])
    return text.split(separator)


@dataclass
class Rows:
    """The lines of a block that have the expected number of cells. Cell ``c`` of row ``i`` is
    ``block.text[starts[c, i]:starts[c, i] + lens[c, i]]`` (surrounding quotes excluded)."""

    block: TextBlock
    lines: np.ndarray  # int64 [n], 1-based line numbers
    starts: np.ndarray  # int64 [columns, n]
    lens: np.ndarray  # int64 [columns, n]

    def __len__(self) -> int:
        return len(self.lines)


def tokenize(block: TextBlock, n_columns: int, separator: str,
             quoting: str) -> tuple[Rows, dict[str, np.ndarray], int]:
    """Find every line and cell of ``block``.

    Returns the rows with ``n_columns`` cells, the line numbers of the others per reason (another cell count;
    in ``csv`` quoting an odd number of quotes), and the number of lines. Blank lines are skipped silently;
    a ``\\r`` before a newline is dropped. In ``csv`` quoting a separator between quotes belongs to its cell,
    and a cell that starts and ends with a quote loses them (a newline inside quotes is not supported: a
    record is one line).
    """
    text = block.text
    bounds = np.flatnonzero((text == ord(separator)) | (text == NEWLINE))  # every cell ends at one
    is_newline = text[bounds] == NEWLINE
    if block.size and text[-1] != NEWLINE:  # the file's last line, without its newline
        bounds, is_newline = np.append(bounds, block.size), np.append(is_newline, True)
    n_lines = int(is_newline.sum())
    unbalanced = np.zeros(n_lines, bool)
    if quoting == "csv":
        quotes = np.flatnonzero(text == QUOTE)
        if len(quotes):
            before = np.searchsorted(quotes, bounds)  # quotes before each boundary
            line_end = np.flatnonzero(is_newline)
            line_of = np.cumsum(is_newline) - is_newline  # line index of every boundary
            line_start_quotes = np.concatenate([[0], before[line_end[:-1]]])
            odd = (before - line_start_quotes[line_of]) % 2 == 1
            unbalanced = odd[line_end]
            keep = ~odd | is_newline  # a separator inside quotes is text
            bounds, is_newline = bounds[keep], is_newline[keep]
    line_end = np.flatnonzero(is_newline)  # index in bounds of each line's newline
    n_cells = np.diff(line_end, prepend=-1)
    previous = np.concatenate([[-1], bounds[:-1]])  # a cell starts just after the boundary before it
    last_cell = bounds[line_end] - previous[line_end] - 1  # length of each line's last cell, with any \r
    blank = (n_cells == 1) & ((last_cell == 0) | ((last_cell == 1) & (block.buf[bounds[line_end] + PAD - 1] == CR)))
    good = ~blank & ~unbalanced & (n_cells == n_columns)
    first_line = block.first_line
    bad = {WRONG_COUNT: np.flatnonzero(~blank & ~unbalanced & ~good) + first_line,
           UNBALANCED: np.flatnonzero(~blank & unbalanced) + first_line}
    bad = {k: v for k, v in bad.items() if len(v)}

    rows = np.flatnonzero(good)
    index = (line_end[rows] - (n_columns - 1))[None, :] + np.arange(n_columns)[:, None]  # [columns, n]
    ends = bounds[index]
    starts = np.empty_like(ends)  # a cell starts just after the one before it, a row after the line before
    starts[0] = previous[index[0]] + 1
    starts[1:] = ends[:-1] + 1
    last = ends[-1]  # a view: the last cell of each row loses a \r before its newline
    last -= (last > starts[-1]) & (block.buf[last + PAD - 1] == CR)
    lens = ends - starts
    if quoting == "csv" and starts.size:
        buf = block.buf  # read through the padded buffer: an empty last cell starts at the end of the text
        quoted = (lens >= 2) & (buf[starts + PAD] == QUOTE) & (buf[ends - 1 + PAD] == QUOTE)
        starts += quoted
        lens -= 2 * quoted
    return Rows(block, rows + first_line, starts, lens), bad, n_lines


@dataclass
class Cells:
    """One column of ``n`` values: value ``i`` is ``labels[inverse[i]]`` (``""``: missing)."""

    inverse: np.ndarray  # int64 [n]
    labels: np.ndarray  # object [u], str; may repeat

    def __len__(self) -> int:
        return len(self.inverse)

    def take(self, rows: np.ndarray) -> "Cells":
        return Cells(self.inverse[rows], self.labels)

    def with_labels(self, labels: np.ndarray) -> "Cells":
        return Cells(self.inverse, labels)


@dataclass
class Codes:
    """One column of ``n`` cells of at most 8 bytes, each packed into a uint64 without making a string: the
    8 bytes of text that end with the cell, read little-endian, with the bytes before the cell masked to 0
    (so the cell sits in the high bytes, and an empty cell is 0). Equal codes are equal cells."""

    codes: np.ndarray  # uint64 [n]

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, rows: np.ndarray) -> "Codes":
        return Codes(self.codes[rows])


Values = Codes | Cells
_MASKS = np.array([0] + [(1 << 64) - (1 << (8 * (8 - n))) for n in range(1, 9)], np.uint64)  # high n bytes


def _shift(x: np.ndarray, bits: np.ndarray, left: bool) -> np.ndarray:
    """``x << bits`` or ``x >> bits`` for uint64, bits in 0..64, in two steps (numpy, like C, leaves a shift
    by 64 undefined)."""
    half = bits >> np.uint64(1)
    if left:
        return (x << half) << (bits - half)
    return (x >> half) >> (bits - half)


def pack(raw: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Cells' bytes -> (their :class:`Codes` codes uint64 [k], ok: at most 8 bytes; the others get 0)."""
    lens = np.fromiter(map(len, raw), np.int64, len(raw))
    ok = lens <= 8
    first_lowest = np.array([b if n <= 8 else b"" for b, n in zip(raw, lens)], dtype="S8").view("<u8")
    return _shift(first_lowest, (8 * (8 - np.where(ok, lens, 0))).astype(np.uint64), left=True), ok


def unpack(codes: np.ndarray) -> np.ndarray:
    """:class:`Codes` codes [k] -> the cells' bytes as an ``S8`` array (numpy drops the zero padding)."""
    codes = np.asarray(codes, np.uint64)
    empty_low = sum(((codes & np.uint64((1 << (8 * b)) - 1)) == 0).astype(np.uint64) for b in range(1, 9))
    return _shift(codes, np.uint64(8) * empty_low, left=False).astype("<u8").view("S8")


_ASCII = bytes(range(128))


@functools.lru_cache
def _reads_ascii(encoding: str) -> bool:
    """Whether ``encoding`` decodes ASCII bytes as ASCII (UTF-8, Latin-1, cp1252, ...; not UTF-16)."""
    return _ASCII.decode(encoding, "replace") == _ASCII.decode()


@dataclass(frozen=True)
class Decoder:
    """How a cell's bytes become its label: the text encoding (undecodable bytes kept as surrogates, so
    every cell keeps a distinct label), ``""`` for the spellings of a missing cell, and in ``csv`` quoting
    ``""`` inside a cell read as one quote."""

    encoding: str = "utf-8"
    missing: tuple[str, ...] = ()
    unescape: bool = False

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Cells' bytes (an ``S`` array) -> labels (object array of str)."""
        raw = np.ascontiguousarray(raw)
        if raw.size and raw.view(np.uint8).max() < 128 and _reads_ascii(self.encoding):
            out = raw.astype("U").astype(object)  # plain ASCII: numpy decodes it at C speed
        else:
            out = np.empty(len(raw), dtype=object)
            out[:] = [b.decode(self.encoding, "surrogateescape") for b in raw.tolist()]
        if self.unescape:
            out[:] = [s.replace('""', '"') for s in out]
        if self.missing:
            out[np.isin(out, list(self.missing))] = ""
        return out

    def encode(self, label: str) -> bytes:
        """A label's raw bytes (the inverse of decoding, outside ``csv`` quoting)."""
        return label.encode(self.encoding, "surrogateescape")

    def missing_codes(self) -> np.ndarray:
        """The codes that mean missing: the empty cell and the short missing spellings."""
        codes, ok = pack([self.encode(m) for m in self.missing])
        return np.concatenate([np.zeros(1, np.uint64), codes[ok]])


def _words(block: TextBlock) -> np.ndarray:
    """Overlapping uint64 view: element ``e`` holds the 8 bytes of text that end just before text offset
    ``e``, little-endian (the earliest byte lowest)."""
    return np.ndarray((block.size + 1,), "<u8", block.buf, PAD - 8, (1,))


def read_column(block: TextBlock, starts: np.ndarray, lens: np.ndarray, decode: Decoder) -> Values:
    """The spans ``text[starts[i]:starts[i] + lens[i]]`` [n] -> :class:`Codes` when every span has at most
    8 bytes and needs no unquoting, else :class:`Cells`."""
    if decode.unescape or (len(lens) and lens.max() > 8):
        return factorize_spans(block, starts, lens, decode)
    return Codes(_words(block)[starts + lens] & _MASKS[lens])


def to_cells(values: Values, decode: Decoder) -> Cells:
    """Codes grouped by value and decoded; only the distinct values become strings."""
    if isinstance(values, Cells):
        return values
    inverse, unique = pd.factorize(values.codes)
    return Cells(np.asarray(inverse, np.int64), decode(unpack(unique)))


def factorize_spans(block: TextBlock, starts: np.ndarray, lens: np.ndarray, decode: Decoder) -> Cells:
    """The spans ``text[starts[i]:starts[i] + lens[i]]`` [n] grouped by content -> :class:`Cells`."""
    if not len(starts):
        return Cells(np.zeros(0, np.int64), np.zeros(0, dtype=object))
    width = int(lens.max())
    if width <= 8:
        return to_cells(Codes(_words(block)[starts + lens] & _MASKS[lens]), decode)
    offsets = np.arange(width)
    index = np.minimum(starts[:, None] + PAD + offsets, len(block.buf) - 1)
    matrix = np.where(offsets < lens[:, None], block.buf[index], 0).astype(np.uint8)
    unique, inverse = np.unique(matrix.view(f"S{width}").ravel(), return_inverse=True)
    return Cells(np.asarray(inverse, np.int64).ravel(), decode(unique))


def split_spans(block: TextBlock, starts: np.ndarray, lens: np.ndarray, sep: str,
                max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multi-value cells [n] -> their first ``max_len`` non-empty elements, in order.

    Returns ``row`` (the cell of each element, non-decreasing) and ``rank`` (its place in the cell's list),
    element ``starts`` and ``lens`` [E], and ``lengths`` int32 [n] (elements kept per cell)."""
    n = len(starts)
    ends = starts + lens
    inner = np.flatnonzero(block.text == ord(sep))
    cell = np.searchsorted(starts, inner, side="right") - 1
    inside = cell >= 0
    inside[inside] = inner[inside] < ends[cell[inside]]
    inner, cell = inner[inside], cell[inside]
    # element ends: every separator inside a cell, and every cell's end; sorted by position = by cell
    elem_end = np.concatenate([inner, ends])
    row = np.concatenate([cell, np.arange(n)])
    order = np.argsort(elem_end, kind="stable")
    elem_end, row = elem_end[order], row[order]
    first = np.ones(len(row), bool)
    first[1:] = row[1:] != row[:-1]
    elem_start = np.where(first, starts[row], np.concatenate([[0], elem_end[:-1] + 1]))
    keep = elem_end > elem_start  # empty elements ("a||b", a trailing separator, an empty cell) are dropped
    row, elem_start, elem_end = row[keep], elem_start[keep], elem_end[keep]
    rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
    keep = rank < max_len
    row, rank, elem_start, elem_end = row[keep], rank[keep], elem_start[keep], elem_end[keep]
    return row, rank, elem_start, elem_end - elem_start, np.bincount(row, minlength=n).astype(np.int32)
