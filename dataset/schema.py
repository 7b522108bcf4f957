"""The schema of a preprocessed dataset: what a model needs to know to be built from a store.

It is read from (and written into) the store's metadata record, so models never carry hand-written
feature lists. See ../shared/DESIGN.md, "Store", "Schema" and "Batch".

Every categorical input names a **vocabulary**; fields that name the same one share its ids and therefore
its embedding rows (``item_id`` and its history ``hist_item_id``). Kinds of field:

* sparse fields: one id per row -> ``batch["sparse"]`` int64 [B, F];
* sequence fields (behaviour histories, multi-value lists such as genres): up to ``max_len`` ids per row,
  stored left-aligned and padded, with the true length: ``batch["seq"]`` int32 [B, L_total] holds every
  sequence field side by side (field ``s`` in columns ``seq_slices[s]``), ``batch["seq_len"]`` int64
  [B, S] their lengths, and, when a field is ``weighted``, ``batch["seq_weight"]`` float32 [B, L_weighted]
  one weight per element of the weighted fields (DeepCTR's ``weight_name``). Positions at or after the
  length are padding: their ids are 0 and must be masked (the mask comes from the length, never from the
  id, so OOV 0 and missing 1 keep their meaning inside a sequence);
* dense fields: floats -> ``batch["dense"]`` float32 [B, D];
* labels, each with a task type (``binary`` or ``regression``) -> ``batch["label"]`` float32 [B, T].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

TASK_TYPES = ("binary", "regression")
POOLINGS = ("mean", "sum", "max")


@dataclass(frozen=True)
class SequenceField:
    """A variable-length list of ids per row, padded to ``max_len``."""

    name: str
    vocab: str
    vocab_size: int
    max_len: int
    weighted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocab_size", int(self.vocab_size))
        object.__setattr__(self, "max_len", int(self.max_len))
        if self.max_len < 1 or self.vocab_size < 1:
            raise ValueError(f"sequence field {self.name}: max_len and vocab_size must be >= 1, "
                             f"got {self.max_len} and {self.vocab_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vocab": self.vocab, "vocab_size": self.vocab_size, "max_len": self.max_len,
                "weighted": self.weighted}


@dataclass(frozen=True)
class Block:
    """One contiguous array of a chunk and of a batch: ``[rows, width]`` of ``store_dtype`` on disk,
    ``batch_dtype`` in a batch (ids are widened to int64 for the embedding lookup)."""

    name: str
    width: int
    store_dtype: np.dtype
    batch_dtype: np.dtype


_INT = (np.dtype(np.int32), np.dtype(np.int64))
_IDS32 = (np.dtype(np.int32), np.dtype(np.int32))  # sequence ids stay int32 in a batch: half the bytes to move
_FLOAT = (np.dtype(np.float32), np.dtype(np.float32))


@dataclass(frozen=True)
class Schema:
    """Fields of one store.

    Args:
        sparse_fields: names of the categorical fields, in column order of ``batch["sparse"]``.
        vocab_sizes: number of ids of each sparse field's vocabulary (``0 .. size - 1``, OOV included).
        dense_fields: names of the numeric fields, in column order of ``batch["dense"]`` (may be empty).
        labels: names of the label columns, in column order of ``batch["label"]`` (one per task).
        task_types: ``binary`` or ``regression`` per label (default: all binary).
        sparse_vocabs: the vocabulary each sparse field uses (default: its own, named after the field).
        sequence_fields: the sequence fields, in column order of ``batch["seq"]``.
        user_field: the sparse field that identifies a user, if any (gAUC groups rows by it).
    """

    sparse_fields: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    dense_fields: tuple[str, ...] = ()
    labels: tuple[str, ...] = ("label",)
    task_types: tuple[str, ...] | None = None
    sparse_vocabs: tuple[str, ...] | None = None
    sequence_fields: tuple[SequenceField, ...] = ()
    user_field: str | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "sparse_fields", tuple(self.sparse_fields))
        put(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        put(self, "dense_fields", tuple(self.dense_fields))
        put(self, "labels", tuple(self.labels))
        put(self, "task_types", tuple(self.task_types) if self.task_types else ("binary",) * len(self.labels))
        put(self, "sparse_vocabs", tuple(self.sparse_vocabs) if self.sparse_vocabs else self.sparse_fields)
        put(self, "sequence_fields", tuple(self.sequence_fields))
        if len(self.sparse_fields) != len(self.vocab_sizes) or len(self.sparse_vocabs) != len(self.sparse_fields):
            raise ValueError(f"schema has {len(self.sparse_fields)} sparse fields but {len(self.vocab_sizes)} vocab "
                             f"sizes and {len(self.sparse_vocabs)} vocabulary names")
        if any(v < 1 for v in self.vocab_sizes):
            raise ValueError(f"every vocab size must be >= 1, got {self.vocab_sizes}")
        if not self.labels:
            raise ValueError("a schema needs at least one label")
        if len(self.task_types) != len(self.labels) or set(self.task_types) - set(TASK_TYPES):
            raise ValueError(f"task_types must give one of {TASK_TYPES} per label {self.labels}, got {self.task_types}")
        names = [*self.sparse_fields, *(s.name for s in self.sequence_fields), *self.dense_fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names must be unique, got {names}")
        if self.user_field is not None and self.user_field not in self.sparse_fields:
            raise ValueError(f"user_field {self.user_field!r} is not a sparse field of {self.sparse_fields}")
        self.vocabs  # noqa: B018 - validates that fields sharing a vocabulary agree on its size

    # -- sizes ------------------------------------------------------------------------------------------

    @property
    def num_sparse(self) -> int:
        return len(self.sparse_fields)

    @property
    def num_dense(self) -> int:
        return len(self.dense_fields)

    @property
    def num_tasks(self) -> int:
        return len(self.labels)

    @property
    def num_sequences(self) -> int:
        return len(self.sequence_fields)

    @property
    def seq_width(self) -> int:
        """L_total: the columns of ``batch["seq"]``, every sequence field's ``max_len`` side by side."""
        return sum(s.max_len for s in self.sequence_fields)

    @property
    def seq_weight_width(self) -> int:
        """The columns of ``batch["seq_weight"]``: the ``max_len`` of every weighted sequence field."""
        return sum(s.max_len for s in self.sequence_fields if s.weighted)

    @property
    def seq_slices(self) -> dict[str, slice]:
        """Sequence field name -> its columns of ``batch["seq"]``."""
        out, start = {}, 0
        for s in self.sequence_fields:
            out[s.name] = slice(start, start + s.max_len)
            start += s.max_len
        return out

    @property
    def vocabs(self) -> dict[str, int]:
        """Vocabulary name -> size, in order of first use (sparse fields, then sequence fields)."""
        out: dict[str, int] = {}
        uses = [*zip(self.sparse_vocabs, self.vocab_sizes), *((s.vocab, s.vocab_size) for s in self.sequence_fields)]
        for vocab, size in uses:
            if out.setdefault(vocab, size) != size:
                raise ValueError(f"vocabulary {vocab!r} is used with sizes {out[vocab]} and {size}")
        return out

    def histories(self) -> list[tuple[str, str]]:
        """(candidate sparse field, its history sequence field) for every sequence field that shares its
        vocabulary with a sparse field (``item_id`` <- ``hist_item_id``): what attention models attend with."""
        by_vocab = {v: f for f, v in reversed(list(zip(self.sparse_fields, self.sparse_vocabs)))}
        return [(by_vocab[s.vocab], s.name) for s in self.sequence_fields if s.vocab in by_vocab]

    def blocks(self) -> list[Block]:
        """The arrays of a chunk and of a batch, in storage order (width-0 blocks included)."""
        return [Block("sparse", self.num_sparse, *_INT), Block("dense", self.num_dense, *_FLOAT),
                Block("label", self.num_tasks, *_FLOAT), Block("seq", self.seq_width, *_IDS32),
                Block("seq_len", self.num_sequences, *_INT), Block("seq_weight", self.seq_weight_width, *_FLOAT)]

    def batch_keys(self) -> list[str]:
        """Keys of a batch: sparse, dense and label always; the sequence keys when the store has them."""
        return [b.name for b in self.blocks() if b.name in ("sparse", "dense", "label") or b.width]

    def id_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Exclusive upper bound of every column of the sparse block and of the seq block (the vocab sizes),
        for checking stored ids."""
        seq = [np.full(s.max_len, s.vocab_size) for s in self.sequence_fields]
        return np.asarray(self.vocab_sizes, np.int64), np.concatenate(seq) if seq else np.zeros(0, np.int64)

    def select(self, drop: Sequence[str] = (), labels: Sequence[str] | None = None) -> tuple["Schema", dict[str, np.ndarray]]:
        """The schema without the sparse and sequence fields named in ``drop`` (an ablation) and with only the
        ``labels`` named (in that order; None: all), and the columns of each batch block that it keeps:
        ``{"sparse": [...], "seq": [...], "seq_len": [...], "seq_weight": [...], "label": [...]}`` (blocks whose
        columns all stay, in order, are left out)."""
        names = {*self.sparse_fields, *(s.name for s in self.sequence_fields)}
        unknown = sorted(set(drop) - names)
        if unknown:
            raise ValueError(f"no field {', '.join(unknown)} to drop; the fields are {', '.join(sorted(names))}")
        labels = list(self.labels if labels is None else labels)
        if not labels or set(labels) - set(self.labels) or len(set(labels)) != len(labels):
            raise ValueError(f"labels {labels}: name one or more of the store's labels {', '.join(self.labels)}, "
                             f"each once")
        keep_label = [self.labels.index(lab) for lab in labels]
        keep_sparse = [i for i, f in enumerate(self.sparse_fields) if f not in drop]
        keep_seq = [i for i, s in enumerate(self.sequence_fields) if s.name not in drop]
        seq_cols, weight_cols, col = [], [], 0
        for s, cols in zip(self.sequence_fields, self.seq_slices.values()):
            if s.name not in drop:
                seq_cols += range(cols.start, cols.stop)
                weight_cols += range(col, col + s.max_len) if s.weighted else []
            col += s.max_len if s.weighted else 0
        columns = {"sparse": keep_sparse, "seq_len": keep_seq, "seq": seq_cols, "seq_weight": weight_cols,
                   "label": keep_label}
        widths = {"sparse": self.num_sparse, "seq_len": self.num_sequences, "seq": self.seq_width,
                  "seq_weight": self.seq_weight_width, "label": self.num_tasks}
        kept = Schema([self.sparse_fields[i] for i in keep_sparse], [self.vocab_sizes[i] for i in keep_sparse],
                      self.dense_fields, labels, [self.task_types[i] for i in keep_label],
                      [self.sparse_vocabs[i] for i in keep_sparse], tuple(self.sequence_fields[i] for i in keep_seq),
                      self.user_field if self.user_field not in drop else None)
        return kept, {k: np.asarray(v, np.int64) for k, v in columns.items()
                      if list(v) != list(range(widths[k]))}

    # -- metadata record ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparse_fields": list(self.sparse_fields),
            "vocab_sizes": list(self.vocab_sizes),
            "sparse_vocabs": list(self.sparse_vocabs),
            "sequence_fields": [s.to_dict() for s in self.sequence_fields],
            "dense_fields": list(self.dense_fields),
            "labels": list(self.labels),
            "task_types": list(self.task_types),
            "user_field": self.user_field,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        """Reads format 2 records and format 1 ones (no vocabulary names, sequences or task types: every
        field its own vocabulary, every label binary)."""
        return cls(d["sparse_fields"], d["vocab_sizes"], d.get("dense_fields", ()), d.get("labels", ("label",)),
                   task_types=d.get("task_types"), sparse_vocabs=d.get("sparse_vocabs"),
                   sequence_fields=tuple(SequenceField(**s) for s in d.get("sequence_fields", ())),
                   user_field=d.get("user_field"))


def pad_sequences(lists: Sequence[Sequence[int]], max_len: int, keep: str = "last") -> tuple[np.ndarray, np.ndarray]:
    """Python lists of ids -> (ids int32 [n, max_len] left-aligned, zero-padded; lengths int32 [n]). Lists
    longer than ``max_len`` keep their last (``keep="last"``: the latest behaviours) or first elements.
    For small inputs and tests; dataset readers pad with vectorized code."""
    ids = np.zeros((len(lists), max_len), np.int32)
    lengths = np.zeros(len(lists), np.int32)
    for i, values in enumerate(lists):
        values = list(values)[-max_len:] if keep == "last" else list(values)[:max_len]
        ids[i, :len(values)] = values
        lengths[i] = len(values)
    return ids, lengths
