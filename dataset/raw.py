"""What every raw-data reader shares: the input error, and opening a file that may be gzip-compressed."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"


class InputError(ValueError):
    """Bad raw input or flags; the message names the file (and line) and the fix."""


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with gzip's magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_raw(path: str | os.PathLike) -> tuple[BinaryIO, BinaryIO]:
    """-> (decoded byte stream, the file on disk, whose ``tell()`` measures progress); closing the stream
    closes both. gzip is detected from its magic bytes, whatever the suffix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist; check --input")
    if is_gzip(path):
        stream = gzip.open(path, "rb")
        return stream, stream.fileobj  # type: ignore[return-value]
    stream = open(path, "rb")
    return stream, stream
