"""The declarative spec of a CSV/TSV table: a small TOML file read with the standard library (tomllib).

Reference (every key optional unless marked)::

    name = "movielens"            # dataset name in the store (default: the spec file's stem)
    min_count = 2                 # default min_count of fitted vocabularies (--min-count overrides it; default 10)
    user_field = "user_id"        # the sparse field that identifies a user (gAUC groups rows by it)

    [format]
    separator = ","               # one character ("\\t" for TSV)
    header = true                 # true: the first line names the columns; false: no header line, the file's
                                  # columns are [columns] in order; "auto": skip a first line that names them
                                  # (the Kaggle Avazu train file has a header, splits of it do not)
    quoting = "none"              # "none": a quote is data; "csv": "..." cells may hold the separator, "" = "
    encoding = "utf-8"            # of the cells (vocabularies keep the decoded values)
    missing = ["NA"]              # spellings of a missing cell, besides the empty cell

    [columns]                     # every file column (in file order when there is no header): its kind,
                                  # as a string or as a table; fields keep this order, derived ones last
    user_id = "categorical"       # one id per row; vocabulary fit on train rows, ids 0 OOV, 1 missing, 2..
    item = { kind = "categorical", vocab = "item", min_count = 1 }   # `vocab`: shared with other columns
    site = { kind = "categorical", hash_buckets = 100000 }           # hashed: ids 2..N+1, no vocabulary pass
    price = { kind = "numeric", transform = "standardize" }  # standardize | log1p | none | bucketize
    age = { kind = "numeric", transform = "bucketize", buckets = 10 }  # train-quantile buckets: a sparse field
    genres = { kind = "multi", sep = "|", max_len = 6 }      # a sequence field; first max_len values kept
    tags = { kind = "multi", max_len = 8, weights = true }   # "a:0.5|b:2": per-value weights (default 1)
    click = "label"               # binary: 0/1 (`positive`/`negative` lists give other spellings)
    rating = { kind = "label", task = "regression" }
    id = "drop"

    [derived]                     # fields computed from a file column's raw text
    hour = { from = "ts", time = "%y%m%d%H", part = "hour" }  # time: a strptime format or "unix" (seconds)
    weekday = { from = "ts", time = "%y%m%d%H", part = "weekday", kind = "categorical" }

Missing values: an empty cell or a ``missing`` spelling is the missing id 1 of a categorical field, a
length-0 sequence, 0 after ``standardize`` (the train mean), ``log1p`` and ``none``, and the missing id 1
after ``bucketize``. A label may not be missing. ``log1p`` is ``log(1 + max(x, 0))``. Derived parts:
``hour`` 0-23, ``weekday`` 0-6 with Sunday 0 (strftime's ``%w``, as BARS), ``weekend`` 1 on Saturday and
Sunday, ``day``, ``month``, ``year``; written as decimal strings, so a derived field is an ordinary
categorical (or numeric) field.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.raw import InputError
from dataset.schema import TASK_TYPES

KINDS = ("categorical", "numeric", "multi", "label", "drop")
TRANSFORMS = ("standardize", "log1p", "none", "bucketize")
TIME_PARTS = ("hour", "weekday", "weekend", "day", "month", "year")
QUOTING = ("none", "csv")
DEFAULT_MIN_COUNT = 10
POSITIVE, NEGATIVE = ("1", "1.0"), ("0", "0.0")

_VOCAB_KEYS = {"vocab", "min_count", "hash_buckets"}
_KEYS = {  # allowed keys per kind, besides "kind"
    "categorical": _VOCAB_KEYS,
    "numeric": {"transform", "buckets"},
    "multi": _VOCAB_KEYS | {"sep", "max_len", "weights", "weight_sep"},
    "label": {"task", "positive", "negative"},
    "drop": set(),
}
_DERIVED_KEYS = {"from", "time", "part"}
_TOP_KEYS = {"name", "min_count", "user_field", "format", "columns", "derived"}
_FORMAT_KEYS = {"separator", "header", "quoting", "encoding", "missing"}


@dataclass(frozen=True)
class ColumnSpec:
    """One output field (or a dropped column). ``source`` is set for a derived field: the file column it is
    computed from, with ``time`` (format or "unix") and ``part``."""

    name: str
    kind: str
    vocab: str | None = None
    min_count: int | None = None
    hash_buckets: int | None = None
    transform: str = "standardize"
    buckets: int = 10
    sep: str = "|"
    max_len: int = 0
    weights: bool = False
    weight_sep: str = ":"
    task: str = "binary"
    positive: tuple[str, ...] = POSITIVE
    negative: tuple[str, ...] = NEGATIVE
    source: str | None = None
    time: str | None = None
    part: str | None = None

    @property
    def vocab_name(self) -> str:
        return self.vocab or self.name

    @property
    def is_sparse(self) -> bool:
        """One id per row: categorical, or numeric bucketized."""
        return self.kind == "categorical" or (self.kind == "numeric" and self.transform == "bucketize")


@dataclass(frozen=True)
class TableSpec:
    name: str
    separator: str = ","
    header: bool | str = True
    quoting: str = "none"
    encoding: str = "utf-8"
    missing: tuple[str, ...] = ()
    min_count: int | None = None
    user_field: str | None = None
    columns: tuple[ColumnSpec, ...] = ()  # file columns, in spec order
    derived: tuple[ColumnSpec, ...] = ()
    source: dict[str, Any] | None = None  # the TOML document, kept in the store's metadata

    @property
    def names(self) -> tuple[str, ...]:
        """The file's columns in order, for a file without a header line."""
        return tuple(c.name for c in self.columns)

    @property
    def fields(self) -> tuple[ColumnSpec, ...]:
        """Every kept column, then every derived field: the order of the store's fields."""
        return tuple(c for c in self.columns if c.kind != "drop") + self.derived


def load_spec(path: str | os.PathLike) -> TableSpec:
    """Read and check a spec file; :class:`InputError` names the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec file {path} does not exist; check --spec")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid TOML: {e}") from None
    return parse_spec(doc, str(path), default_name=path.stem)


def parse_spec(doc: dict[str, Any], where: str = "spec", default_name: str = "table") -> TableSpec:
    """A TOML document (a dict) -> :class:`TableSpec`, every key and value checked."""
    _no_unknown(doc, _TOP_KEYS, where)
    fmt = doc.get("format", {})
    _expect(isinstance(fmt, dict), where, "[format] must be a table")
    _no_unknown(fmt, _FORMAT_KEYS, f"{where} [format]")
    sep = fmt.get("separator", ",")
    _expect(isinstance(sep, str) and len(sep.encode()) == 1 and sep not in "\r\n\"", where,
            f"separator must be one single-byte character other than a newline or a quote, got {sep!r}")
    header = fmt.get("header", True)
    _expect(header in (True, False, "auto"), where, f'header must be true, false or "auto", got {header!r}')
    quoting = fmt.get("quoting", "none")
    _expect(quoting in QUOTING, where, f"quoting must be one of {QUOTING}, got {quoting!r}")
    encoding = fmt.get("encoding", "utf-8")
    try:
        "".encode(encoding)
    except (LookupError, TypeError):
        raise InputError(f"{where}: unknown encoding {encoding!r}") from None
    missing = fmt.get("missing", [])
    _expect(_str_list(missing), where, "missing must be a list of strings")
    min_count = doc.get("min_count")
    _expect(min_count is None or _positive_int(min_count), where,
            f"min_count must be an integer >= 1, got {min_count!r}")

    raw_columns = doc.get("columns")
    _expect(isinstance(raw_columns, dict) and raw_columns, where, "[columns] must list the file's columns")
    columns = tuple(_column(name, value, f"{where} column {name!r}") for name, value in raw_columns.items())
    raw_derived = doc.get("derived", {})
    _expect(isinstance(raw_derived, dict), where, "[derived] must be a table")
    derived = tuple(_derived(name, value, f"{where} derived {name!r}") for name, value in raw_derived.items())

    spec = TableSpec(name=str(doc.get("name", default_name)), separator=sep, header=header,
                     quoting=quoting, encoding=encoding, missing=tuple(missing), min_count=min_count,
                     user_field=doc.get("user_field"), columns=columns, derived=derived, source=doc)
    _check_fields(spec, where)
    return spec


def _column(name: str, value: Any, where: str) -> ColumnSpec:
    table = {"kind": value} if isinstance(value, str) else value
    _expect(isinstance(table, dict), where, f"give a kind {KINDS} or a table with `kind`, got {value!r}")
    kind = table.get("kind")
    _expect(kind in KINDS, where, f"kind must be one of {KINDS}, got {kind!r}")
    _no_unknown(table, _KEYS[kind] | {"kind"}, where)
    return _options(ColumnSpec(name=name, kind=kind), table, where)


def _derived(name: str, value: Any, where: str) -> ColumnSpec:
    _expect(isinstance(value, dict), where, "a derived field is a table with from, time and part")
    kind = value.get("kind", "categorical")
    _expect(kind in ("categorical", "numeric"), where, f"a derived field is categorical or numeric, got {kind!r}")
    _no_unknown(value, _KEYS[kind] | _DERIVED_KEYS | {"kind"}, where)
    _expect(isinstance(value.get("from"), str), where, "from must name a file column")
    _expect(isinstance(value.get("time"), str) and value["time"], where,
            'time must be a strptime format such as "%y%m%d%H", or "unix"')
    _expect(value.get("part") in TIME_PARTS, where, f"part must be one of {TIME_PARTS}, got {value.get('part')!r}")
    base = ColumnSpec(name=name, kind=kind, source=value["from"], time=value["time"], part=value["part"])
    return _options(base, value, where)


def _options(col: ColumnSpec, table: dict[str, Any], where: str) -> ColumnSpec:
    """Check the kind-specific options of ``table`` and return ``col`` with them set."""
    opts: dict[str, Any] = {}
    for key in ("min_count", "hash_buckets", "buckets", "max_len"):
        if key in table:
            _expect(_positive_int(table[key]), where, f"{key} must be an integer >= 1, got {table[key]!r}")
            opts[key] = table[key]
    for key in ("vocab", "sep", "weight_sep"):
        if key in table:
            _expect(isinstance(table[key], str) and table[key], where, f"{key} must be a non-empty string")
            opts[key] = table[key]
    for key in ("sep", "weight_sep"):
        if key in opts:
            _expect(len(opts[key].encode()) == 1, where, f"{key} must be one single-byte character, got {opts[key]!r}")
    if "weights" in table:
        _expect(isinstance(table["weights"], bool), where, "weights must be true or false")
        opts["weights"] = table["weights"]
    if "transform" in table:
        _expect(table["transform"] in TRANSFORMS, where, f"transform must be one of {TRANSFORMS}")
        opts["transform"] = table["transform"]
    if "task" in table:
        _expect(table["task"] in TASK_TYPES, where, f"task must be one of {TASK_TYPES}, got {table['task']!r}")
        opts["task"] = table["task"]
    for key in ("positive", "negative"):
        if key in table:
            _expect(_str_list(table[key]) and table[key], where, f"{key} must be a non-empty list of strings")
            opts[key] = tuple(table[key])
    col = ColumnSpec(**{**col.__dict__, **opts})
    if col.kind == "multi":
        _expect(col.max_len >= 1, where, "a multi column needs max_len")
        _expect(col.sep != col.weight_sep or not col.weights, where, "sep and weight_sep must differ")
    if col.kind == "label":
        _expect(not set(col.positive) & set(col.negative), where, "positive and negative spellings overlap")
        _expect(col.task == "binary" or not {"positive", "negative"} & set(table), where,
                "positive/negative spellings are for binary labels")
    if col.hash_buckets is not None:
        _expect(col.min_count is None, where, "a hashed column has no min_count")
    if "buckets" in table:
        _expect(col.transform == "bucketize", where, "buckets is for transform = \"bucketize\"")
    return col


def _check_fields(spec: TableSpec, where: str) -> None:
    """Rules across columns: distinct field names, derived sources, labels, vocabularies, user field."""
    by_name = {c.name: c for c in spec.columns}
    for d in spec.derived:
        _expect(d.source in by_name, where, f"derived {d.name!r}: from = {d.source!r} is not a column")
    names = [c.name for c in spec.fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _expect(not dupes, where, f"field names must be distinct (a derived field may reuse a dropped column's "
                              f"name), repeated: {dupes}")
    _expect(any(c.kind == "label" for c in spec.columns), where, 'at least one column must be kind = "label"')
    _expect(any(c.kind != "label" for c in spec.fields), where, "at least one feature column is needed")
    vocabs: dict[str, ColumnSpec] = {}
    for c in spec.fields:
        if c.kind not in ("categorical", "multi"):
            continue
        first = vocabs.setdefault(c.vocab_name, c)
        _expect(first.hash_buckets == c.hash_buckets, where,
                f"columns {first.name!r} and {c.name!r} share vocabulary {c.vocab_name!r} but not hash_buckets")
        _expect(None in (first.min_count, c.min_count) or first.min_count == c.min_count, where,
                f"columns {first.name!r} and {c.name!r} share vocabulary {c.vocab_name!r} with different min_count")
    for c in spec.fields:
        if c.kind == "multi":
            _expect(spec.separator != c.sep and not (c.weights and spec.separator == c.weight_sep), where,
                    f"column {c.name!r}: sep and weight_sep must differ from the file's separator")
    bucketized = {c.name for c in spec.fields if c.kind == "numeric" and c.transform == "bucketize"}
    _expect(not bucketized & set(vocabs), where,
            f"a bucketized numeric field has its own vocabulary; rename the vocab of "
            f"{sorted(bucketized & set(vocabs))}")
    if spec.user_field is not None:
        user = next((c for c in spec.fields if c.name == spec.user_field), None)
        _expect(user is not None and user.is_sparse, where,
                f"user_field {spec.user_field!r} must name a categorical field")


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    _expect(not unknown, where, f"unknown key(s) {unknown}; known here: {sorted(known)}")


def _expect(ok: Any, where: str, message: str) -> None:
    if not ok:
        raise InputError(f"{where}: {message}")


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
