"""Raw values of a field <-> its ids, for embeddings in and out: which table rows hold the vectors of given
raw values (scripts/embeddings.py extract), and pretrained vectors keyed by raw value (train.py
--pretrained_embed).

Values are encoded by the store's dataset's own encoder (:meth:`dataset.criteo.RawRows.encode_values`, the
encoder prediction rebuilds from the store's vocabularies), so a value gets exactly the id preprocessing
wrote for it: never a second mapping.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dataset.predict_encode import raw_rows
from dataset.raw import InputError
from dataset.store import StoreReader
from dataset.vocab import OOV_ID


def encode_values(store: StoreReader, field: str, values: list[str]) -> np.ndarray:
    """Raw values of sparse field ``field`` -> their ids int64 [n] (OOV_ID for values the vocabulary does
    not keep). :class:`InputError` for an unknown, dense or hashed field."""
    schema = store.schema
    if field not in schema.sparse_fields:
        dense = f" ({field} is a dense field: it has no embedding rows)" if field in schema.dense_fields else ""
        raise InputError(f"unknown field {field!r}{dense}; the fields with embeddings are "
                         f"{', '.join(schema.sparse_fields)}")
    return raw_rows(store).encode_values(field, list(values))


def vocabulary_values(store: StoreReader, field: str) -> list[str]:
    """Every value of ``field``'s vocabulary in id order (``values[i]`` has id ``i + 2``)."""
    return list(store.vocabulary(field)["values"])


def read_vectors(path: Path, dim: int) -> tuple[list[str], np.ndarray]:
    """A word2vec text file (``raw_value v_1 .. v_D`` per line; an optional first line ``N D`` is skipped)
    -> (values [n], vectors float32 [n, D]). :class:`InputError` naming the file and line for a wrong
    dimension, a number that does not parse, or a value given twice."""
    values: list[str] = []
    rows: list[list[float]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            cells = line.split()
            if not cells or (number == 1 and len(cells) == 2 and all(c.isdigit() for c in cells)):
                continue
            if len(cells) - 1 != dim:
                raise InputError(f"{path}:{number}: {len(cells) - 1} numbers after the value, expected D = {dim} "
                                 f"(the run's --embed_size)")
            try:
                vector = [float(c) for c in cells[1:]]
            except ValueError:
                raise InputError(f"{path}:{number}: not a number among the vector's values") from None
            if not np.isfinite(vector).all():
                raise InputError(f"{path}:{number}: the vector has a non-finite value")
            if cells[0] in seen:
                raise InputError(f"{path}:{number}: value {cells[0]!r} was already given on line {seen[cells[0]]}")
            seen[cells[0]] = number
            values.append(cells[0])
            rows.append(vector)
    return values, np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)


def pretrained_ids(store: StoreReader, field: str, path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A pretrained file of ``field`` -> (ids int64 [k], vectors float32 [k, D]) of its values that the
    vocabulary keeps, and the number of its values it does not keep (OOV: they get no row)."""
    values, vectors = read_vectors(path, dim)
    ids = encode_values(store, field, values)
    kept = ids != OOV_ID
    return ids[kept], vectors[kept], int((~kept).sum())
