"""What every raw-data reader shares: the input error, opening a file that may be gzip-compressed, and running
work on a thread pool with results in input order."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """Bad raw input or flags; the message names the file (and line) and the fix."""


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with gzip's magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class _CheckedGzip(io.RawIOBase):
    """A gzip file's decompressed bytes, with a damaged file (cut short, or not valid gzip data after its
    magic bytes) reported as an :class:`InputError` naming it, not as zlib's or gzip's own exception."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gz = gzip.open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        try:
            return self.gz.readinto(buffer)
        except EOFError:
            raise InputError(f"input {self.path} is a truncated gzip file (it ends inside its compressed data); "
                             f"copy or download it again, then pass it with --input") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise InputError(f"input {self.path} is a damaged gzip file ({e}); copy or download it again, "
                             f"then pass it with --input") from None

    def close(self) -> None:
        self.gz.close()
        super().close()


def open_raw(path: str | os.PathLike) -> tuple[BinaryIO, BinaryIO]:
    """-> (decoded byte stream, the file on disk, whose ``tell()`` measures progress); closing the stream
    closes both. gzip is detected from its magic bytes, whatever the suffix; a UTF-8 byte-order mark
    at the start (which some editors and exports add) is skipped, so it does not spoil the first row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist; check --input")
    try:
        if is_gzip(path):
            raw = _CheckedGzip(path)
            stream: io.BufferedReader = io.BufferedReader(raw, buffer_size=1 << 16)
            disk = raw.gz.fileobj
        else:
            stream = disk = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read input {path}: {e.strerror}; check --input and its permissions") from None
    if stream.peek(len(UTF8_BOM))[:len(UTF8_BOM)] == UTF8_BOM:
        stream.read(len(UTF8_BOM))
    return stream, disk  # type: ignore[return-value]


def in_order(pool: ThreadPoolExecutor | None, fn: Callable[..., T], items: Iterable[Any], *args: Any,
             ahead: int = 16) -> Iterator[T]:
    """``fn(item, *args)`` for each item, in input order, computed by ``pool`` up to ``ahead`` items ahead
    (numpy releases the GIL, so tokenizing or encoding blocks runs on several cores) or here if no pool.
    The output does not depend on timing."""
    if pool is None:
        yield from (fn(item, *args) for item in items)
        return
    pending: deque[Future[T]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item, *args))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read 1 MiB at a time (memory stays bounded whatever the file's size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
