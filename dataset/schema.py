"""The schema of a preprocessed dataset: what a model needs to know to be built from a store.

It is read from (and written into) the store's metadata record, so models never carry hand-written
feature lists. See ../shared/DESIGN.md, "Store" and "Batch".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Schema:
    """Fields of one store.

    Attributes:
        sparse_fields: names of the categorical fields, in column order of ``batch["sparse"]``.
        vocab_sizes: number of ids per sparse field (ids are ``0 .. vocab_size - 1``, OOV included).
        dense_fields: names of the numeric fields, in column order of ``batch["dense"]`` (may be empty).
        labels: names of the label columns, in column order of ``batch["label"]`` (one per task).
    """

    sparse_fields: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    dense_fields: tuple[str, ...] = ()
    labels: tuple[str, ...] = ("label",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse_fields", tuple(self.sparse_fields))
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        object.__setattr__(self, "dense_fields", tuple(self.dense_fields))
        object.__setattr__(self, "labels", tuple(self.labels))
        if len(self.sparse_fields) != len(self.vocab_sizes):
            raise ValueError(
                f"schema has {len(self.sparse_fields)} sparse fields but {len(self.vocab_sizes)} vocab sizes"
            )
        if any(v < 1 for v in self.vocab_sizes):
            raise ValueError(f"every vocab size must be >= 1, got {self.vocab_sizes}")
        if not self.labels:
            raise ValueError("a schema needs at least one label")

    @property
    def num_sparse(self) -> int:
        return len(self.sparse_fields)

    @property
    def num_dense(self) -> int:
        return len(self.dense_fields)

    @property
    def num_tasks(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparse_fields": list(self.sparse_fields),
            "vocab_sizes": list(self.vocab_sizes),
            "dense_fields": list(self.dense_fields),
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        return cls(d["sparse_fields"], d["vocab_sizes"], d.get("dense_fields", ()), d.get("labels", ("label",)))
