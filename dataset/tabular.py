"""Small tables that fit in memory (census-income, the AliExpress and Ali-CCP samples) -> LMDB store.

Data flow: raw text -> :func:`read_table` (cells as stripped strings, bad rows counted or, with
``--strict``, reported by line) -> the dataset module parses dense and label columns -> a
``pandas.DataFrame`` -> :func:`preprocess_frame`, which

1. assigns splits (``dataset/split.py`` seeded stream, or a predefined split column),
2. fits one :class:`~dataset.vocab.Vocabulary` per sparse column on the train rows only,
3. standardizes dense columns with train mean/std (``dense="numeric"``) or turns them into
   sparse fields of train-quantile buckets (``dense="bucketize"``),
4. shuffles each split once (seeded) and writes it with :class:`~dataset.store.StoreWriter` (atomic).

Same input and flags give byte-identical ``data.mdb`` files.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np
import pandas as pd

from dataset.raw import InputError, open_raw
from dataset.schema import Schema
from dataset.split import SPLITS, SplitAssigner, check_common, check_split_rows
from dataset.store import StoreWriter, check_out
from dataset.vocab import Vocabulary, count_values, ids_from_positions

DENSE_TRANSFORMS = ("numeric", "bucketize")
NEGATIVE, POSITIVE = ("0", "0.0"), ("1", "1.0")  # label spellings accepted in raw files
BINARY = NEGATIVE + POSITIVE


# ----------------------------------------------------------------------------------------------- reading


def open_text(path: str | os.PathLike) -> TextIO:
    """Open a plain or gzip text file (:func:`dataset.raw.open_raw`) as latin-1 text."""
    return io.TextIOWrapper(open_raw(path)[0], encoding="latin-1", newline="")


@dataclass
class RawTable:
    """Rows of one file as stripped strings.

    Attributes:
        path: the file read.
        frame: one string column per field, ``n`` rows.
        lines: int64 [n], 1-based line number of each row in the file (for error messages).
        skipped: reason -> number of rows dropped for it.
    """

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray
    skipped: Counter = field(default_factory=Counter)

    def drop(self, bad: np.ndarray, reason: str, strict: bool) -> None:
        """Drop rows where ``bad`` (bool [n]) holds; with ``strict`` raise at the first one instead.
        Dropping every row raises: there is nothing left to preprocess."""
        if not bad.any():
            return
        if strict:
            line = int(self.lines[np.flatnonzero(bad)[0]])
            raise InputError(f"{self.path} line {line}: {reason}; fix the row, or drop --strict to skip such rows")
        self.skipped[reason] += int(bad.sum())
        keep = ~bad
        self.frame = self.frame[keep].reset_index(drop=True)
        self.lines = self.lines[keep]
        if not len(self.frame):
            raise InputError(f"{self.path}: every row was skipped ({dict(self.skipped)}); "
                             f"check that it is the right file")


def read_table(path: str | os.PathLike, columns: Sequence[str] | None, strict: bool,
               missing: Sequence[str] = ()) -> RawTable:
    """Read a comma-separated file (no quoting; spaces around commas are dropped) into a :class:`RawTable`.

    ``columns``: field names of a headerless file; ``None`` reads them from the first line. Rows with
    another field count are skipped and counted (or, with ``strict``, raise naming the line); blank
    lines are ignored; a file without data rows raises. Cells are strings; those in ``missing``
    (spellings of "not recorded") become NaN, an empty cell stays ``""``.
    """
    with open_text(path) as f:
        text = f.read()
    while " ," in text:  # spaces before a comma (spaces after one are skipped by read_csv)
        text = text.replace(" ,", ",")
    numbered = [(i, stripped) for i, line in enumerate(text.splitlines(), 1) if (stripped := line.strip())]
    if columns is None and numbered:
        columns = [name.strip() for name in numbered.pop(0)[1].split(",")]
    columns = list(columns or [])
    if len(set(columns)) != len(columns):
        raise InputError(f"{path}: the header repeats a column name ({columns}); give every column its own name")
    wrong = np.fromiter((line.count(",") + 1 != len(columns) for _, line in numbered), bool, len(numbered))
    if strict and wrong.any():
        line_no, line = numbered[int(np.flatnonzero(wrong)[0])]
        raise InputError(f"{path} line {line_no}: {line.count(',') + 1} fields, expected {len(columns)}; "
                         f"fix the row, or drop --strict to skip such rows")
    good = [numbered[i] for i in np.flatnonzero(~wrong)]
    if not good:
        note = f" ({int(wrong.sum())} with a wrong field count)" if wrong.any() else ""
        raise InputError(f"{path} has no data rows{note}; pass a non-empty file with --input")
    frame = pd.read_csv(io.StringIO("\n".join(line for _, line in good)), header=None, names=columns, dtype=object,
                        keep_default_na=False, na_values=list(missing), quoting=csv.QUOTE_NONE,
                        skipinitialspace=True)
    table = RawTable(Path(path), frame, np.array([i for i, _ in good], dtype=np.int64))
    if wrong.any():
        table.skipped["wrong field count"] = int(wrong.sum())
    return table


def drop_non_numeric(table: RawTable, columns: Sequence[str], strict: bool) -> None:
    """Drop rows with a cell in ``columns`` that is neither missing (NaN or empty) nor a number."""
    for col in columns:
        cells = table.frame[col]
        bad = pd.to_numeric(cells, errors="coerce").isna() & cells.notna() & (cells != "")
        table.drop(bad.to_numpy(), f"non-numeric value in column {col!r}", strict)


def drop_non_binary(table: RawTable, columns: Sequence[str], strict: bool) -> None:
    """Drop rows whose label cell in ``columns`` is not 0 or 1 (an empty cell included)."""
    for col in columns:
        bad = ~table.frame[col].isin(BINARY)
        table.drop(bad.to_numpy(), f"label {col!r} is not 0 or 1", strict)


def drop_funnel_violations(table: RawTable, click: str, conversion: str, strict: bool) -> None:
    """Drop rows with ``conversion`` 1 and ``click`` 0: ESMM's sample space has a conversion imply a click.
    Call after :func:`drop_non_binary` on both columns."""
    bad = table.frame[conversion].isin(POSITIVE) & table.frame[click].isin(NEGATIVE)
    table.drop(bad.to_numpy(), f"{conversion} = 1 without {click}", strict)


def to_frame(table: RawTable, sparse_cols: Sequence[str], dense_cols: Sequence[str],
             label_cols: Sequence[str]) -> pd.DataFrame:
    """The checked table -> sparse columns as strings, dense as float64 (NaN = missing), labels as int8."""
    df = table.frame
    parts = [df[list(sparse_cols)],
             df[list(dense_cols)].apply(pd.to_numeric, errors="coerce").astype(np.float64),
             df[list(label_cols)].astype(np.float64).astype(np.int8)]
    return pd.concat(parts, axis=1)


def checked_frame(table: RawTable, sparse_cols: Sequence[str], dense_cols: Sequence[str],
                  label_cols: Sequence[str], strict: bool, funnel: tuple[str, str] | None = None) -> pd.DataFrame:
    """Drop bad label rows, then funnel violations (``funnel = (click, conversion)``), then non-numeric
    dense rows, and convert with :func:`to_frame`."""
    drop_non_binary(table, label_cols, strict)
    if funnel is not None:
        drop_funnel_violations(table, *funnel, strict)
    drop_non_numeric(table, dense_cols, strict)
    return to_frame(table, sparse_cols, dense_cols, label_cols)


def stack_splits(frames: dict[str, pd.DataFrame | None], ratios: tuple[float, float, float],
                 seed: int) -> tuple[pd.DataFrame, pd.Series | None]:
    """Join per-split inputs: ``frames["train"]`` is split among the splits that have no file of their
    own (ratios renormalized over those), the other frames become their split whole.

    -> (all rows, split name per row) or (train frame, None) when no other file is given.
    """
    given = [s for s in SPLITS[1:] if frames.get(s) is not None]
    if not given:
        return frames["train"], None
    kept = tuple(0.0 if s in given else r for s, r in zip(SPLITS, ratios))
    total = sum(kept)
    assigned = SplitAssigner(tuple(r / total for r in kept), seed).assign(len(frames["train"]))
    names = [np.asarray(SPLITS, dtype=object)[assigned]] + [np.full(len(frames[s]), s, dtype=object) for s in given]
    df = pd.concat([frames["train"]] + [frames[s] for s in given], ignore_index=True)
    return df, pd.Series(np.concatenate(names), dtype=object)


# ---------------------------------------------------------------------------------------------- encoding


@dataclass
class EncodedTable:
    """A table encoded for the store, rows still in input order.

    Attributes:
        schema: sparse fields (bucketized dense ones last), vocab sizes, dense fields, labels.
        split: int8 [n], 0 = train, 1 = valid, 2 = test.
        sparse: int32 [n, F_sparse] ids (0 = OOV, 1 = missing, 2.. kept values).
        dense: float32 [n, F_dense] standardized values (width 0 when bucketized).
        label: float32 [n, T].
        transforms: per dense column, the train statistics used (mean/std or bucket edges).
    """

    schema: Schema
    split: np.ndarray
    sparse: np.ndarray
    dense: np.ndarray
    label: np.ndarray
    transforms: dict[str, dict[str, Any]]


def assign_splits(n: int, ratios: tuple[float, float, float], seed: int,
                  predefined: pd.Series | None = None) -> np.ndarray:
    """-> int8 [n] split index per row, from ``predefined`` names ("train"/"valid"/"test") or the seeded stream."""
    if predefined is None:
        return SplitAssigner(ratios, seed).assign(n)
    if len(predefined) != n:
        raise InputError(f"predefined split has {len(predefined)} entries for {n} rows")
    index = pd.Index(SPLITS).get_indexer(pd.Series(predefined, dtype=object))
    if (index < 0).any():
        unknown = sorted(set(pd.Series(predefined)[index < 0].astype(str)))
        raise InputError(f"predefined split has values {unknown}; expected only {SPLITS}")
    return index.astype(np.int8)


def as_strings(values: pd.Series) -> pd.Series:
    """Cells -> str, NaN/None -> "" (the vocabulary's missing value)."""
    return values.astype(str).where(values.notna(), "")


def encode_sparse(values: pd.Series, train: np.ndarray, min_count: int) -> tuple[np.ndarray, int]:
    """Fit a vocabulary on the ``train`` rows (bool [n]) and encode all rows -> (int32 [n], vocab size)."""
    strings = as_strings(values)
    vocab = Vocabulary.fit(count_values(None, strings[train]), min_count)
    return vocab.encode(strings), len(vocab)


def standardize(values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """``(x - mean) / std`` with train mean/std (std 1 for a constant column); NaN -> 0 (the mean)."""
    fit = values[train & ~np.isnan(values)]
    mean = float(fit.mean()) if len(fit) else 0.0
    std = float(fit.std()) if len(fit) else 0.0
    std = std if std > 0 else 1.0
    z = np.nan_to_num((values - mean) / std, nan=0.0)
    return z.astype(np.float32), {"mean": mean, "std": std}


def bucketize(values: np.ndarray, train: np.ndarray, num_buckets: int) -> tuple[np.ndarray, int, dict[str, list]]:
    """Train-quantile buckets: edges = distinct train quantiles at ``k / num_buckets``; id = 2 + number of
    edges <= x; NaN -> the missing id 1 (id 0, OOV, is never produced). -> (int32 [n], vocab size, edges)."""
    fit = values[train & ~np.isnan(values)]
    quantiles = np.linspace(0.0, 1.0, num_buckets + 1)[1:-1]
    edges = np.unique(np.quantile(fit, quantiles)) if len(fit) else np.empty(0)
    ids = ids_from_positions(np.searchsorted(edges, values, side="right"), np.isnan(values))
    return ids.astype(np.int32), len(edges) + 3, {"edges": [float(e) for e in edges]}


def encode_frame(df: pd.DataFrame, split: np.ndarray, *, sparse_cols: Sequence[str], dense_cols: Sequence[str],
                 label_cols: Sequence[str], min_count: int, dense: str = "numeric",
                 num_buckets: int = 10) -> EncodedTable:
    """Encode ``df`` (sparse columns: any values; dense: numbers, NaN missing; labels: 0/1) with every
    statistic fit on the rows where ``split == 0``."""
    _check_columns(df, sparse_cols, dense_cols, label_cols, dense)
    train = split == 0
    if not train.any():
        raise InputError("the train split is empty: give more rows or a larger train share in --split")
    ids, sizes, dense_out, transforms = [], [], [], {}
    for col in sparse_cols:
        encoded, size = encode_sparse(df[col], train, min_count)
        ids.append(encoded)
        sizes.append(size)
    for col in dense_cols:
        x = df[col].to_numpy(dtype=np.float64)
        if dense == "numeric":
            z, transforms[col] = standardize(x, train)
            dense_out.append(z)
        else:
            encoded, size, transforms[col] = bucketize(x, train, num_buckets)
            ids.append(encoded)
            sizes.append(size)
    numeric = list(dense_cols) if dense == "numeric" else []
    bucketed = [] if dense == "numeric" else list(dense_cols)
    n = len(df)
    return EncodedTable(
        schema=Schema(tuple(sparse_cols) + tuple(bucketed), sizes, numeric, label_cols),
        split=split,
        sparse=np.stack(ids, axis=1) if ids else np.zeros((n, 0), np.int32),
        dense=np.stack(dense_out, axis=1) if dense_out else np.zeros((n, 0), np.float32),
        label=df[list(label_cols)].to_numpy(dtype=np.float32),
        transforms=transforms,
    )


def _check_columns(df: pd.DataFrame, sparse_cols: Sequence[str], dense_cols: Sequence[str],
                   label_cols: Sequence[str], dense: str) -> None:
    if dense not in DENSE_TRANSFORMS:
        raise InputError(f"--dense must be one of {DENSE_TRANSFORMS}, got {dense!r}")
    missing = [c for c in (*sparse_cols, *dense_cols, *label_cols) if c not in df.columns]
    if missing:
        raise InputError(f"columns {missing} are not in the table (it has {list(df.columns)})")
    if not label_cols:
        raise InputError("at least one label column is needed")
    for col in dense_cols:
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise InputError(f"dense column {col!r} has dtype {df[col].dtype}; parse it to numbers first")
    for col in label_cols:
        if not df[col].isin([0, 1]).all():
            raise InputError(f"label column {col!r} has values other than 0 and 1")


# ----------------------------------------------------------------------------------------------- writing


def label_rates(enc: EncodedTable) -> dict[str, dict[str, float | None]]:
    """Positive rate of each label per split (None for an empty split)."""
    rates = {}
    for i, name in enumerate(SPLITS):
        rows = enc.label[enc.split == i]
        rates[name] = {lab: (float(rows[:, t].mean()) if len(rows) else None)
                       for t, lab in enumerate(enc.schema.labels)}
    return rates


def write_store(enc: EncodedTable, out_path: str | os.PathLike, *, dataset: str, seed: int, chunk_size: int,
                overwrite: bool, options: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Shuffle each split with ``default_rng([seed, split index])`` and write it; -> the store metadata."""
    with StoreWriter(out_path, enc.schema, dataset=dataset, chunk_size=chunk_size, overwrite=overwrite,
                     expected_rows=len(enc.split)) as w:
        for i, name in enumerate(SPLITS):
            rows = np.random.default_rng([seed, i]).permutation(np.flatnonzero(enc.split == i))
            w.add(name, enc.sparse[rows], enc.dense[rows], enc.label[rows])
        w.meta["options"] = dict(options)
        w.meta["stats"] = {**stats, "label_rates": label_rates(enc), "dense_transforms": enc.transforms}
    return w.meta


def preprocess_frame(df: pd.DataFrame, out_path: str | os.PathLike, *, dataset: str, sparse_cols: Sequence[str],
                     dense_cols: Sequence[str], label_cols: Sequence[str], min_count: int,
                     split_ratios: tuple[float, float, float], seed: int, chunk_size: int, overwrite: bool,
                     dense: str = "numeric", options: dict[str, Any] | None = None,
                     predefined_split: pd.Series | None = None, num_buckets: int = 10,
                     stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Split, encode (train-fit vocabularies and dense statistics), shuffle and write ``df`` as a store.

    ``df``: sparse columns of any values (NaN/"" = missing), dense columns numeric (NaN = missing),
    label columns 0/1. ``stats`` (e.g. skipped-row counts) is merged into the metadata's ``stats``.
    Prints a summary; -> the store metadata (see ``dataset/store.py``).
    """
    start = time.perf_counter()
    check_out(out_path, overwrite)
    split = assign_splits(len(df), split_ratios, seed, predefined_split)
    check_split_rows(np.bincount(split, minlength=len(SPLITS)).tolist(), f"{dataset} input ({len(df):,} rows)")
    enc = encode_frame(df, split, sparse_cols=sparse_cols, dense_cols=dense_cols, label_cols=label_cols,
                       min_count=min_count, dense=dense, num_buckets=num_buckets)
    meta = write_store(enc, out_path, dataset=dataset, seed=seed, chunk_size=chunk_size, overwrite=overwrite,
                       options=options or {}, stats=stats or {})
    print(summary(meta, out_path, time.perf_counter() - start))
    return meta


def summary(meta: dict[str, Any], out_path: str | os.PathLike, seconds: float) -> str:
    """Rows per split, label positive rates, vocab sizes, skipped rows and time, as printable text."""
    schema = Schema.from_dict(meta["schema"])
    rates = meta["stats"]["label_rates"]
    total = sum(s["rows"] for s in meta["splits"].values())
    lines = [f"{meta['dataset']}: {total:,} rows -> {out_path} in {seconds:.1f}s",
             "  split  " + "".join(f"{'rows':>10}") + "".join(f"{lab:>12}" for lab in schema.labels)]
    for name in SPLITS:
        cells = "".join(f"{'-':>12}" if rates[name][lab] is None else f"{rates[name][lab]:>12.2%}"
                        for lab in schema.labels)
        lines.append(f"  {name:<7}{meta['splits'][name]['rows']:>10,}{cells}")
    vocab = ", ".join(f"{f} {v}" for f, v in zip(schema.sparse_fields, schema.vocab_sizes))
    lines.append(f"  {schema.num_sparse} sparse fields (vocab sizes: {vocab})")
    dense = f": {', '.join(schema.dense_fields)}" if schema.num_dense else ""
    lines.append(f"  {schema.num_dense} dense fields{dense}")
    skipped = meta["stats"].get("skipped_rows", 0)
    reasons = meta["stats"].get("skipped_by_reason", {})
    lines.append(f"  skipped rows: {skipped:,}" + (f" ({', '.join(f'{r}: {c:,}' for r, c in reasons.items())})"
                                                   if reasons else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command line


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every in-memory table dataset (on top of preprocess.py's common ones)."""
    parser.add_argument("--dense", choices=DENSE_TRANSFORMS, default="numeric",
                        help="numeric: standardize dense columns (train mean/std); "
                             "bucketize: train-quantile buckets as extra sparse fields")
    parser.add_argument("--buckets", type=int, default=10,
                        help="quantile buckets per dense column with --dense bucketize")


def frame_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`preprocess_frame` keyword arguments that come straight from the common flags."""
    ratios = check_common(args.split, args.min_count, args.chunk_size)
    if args.buckets < 1:
        raise InputError(f"--buckets must be >= 1, got {args.buckets}")
    options = {k: v for k, v in sorted(vars(args).items()) if k not in ("out", "overwrite") and not k.startswith("_")}
    return dict(min_count=args.min_count, split_ratios=ratios, seed=args.seed, chunk_size=args.chunk_size,
                overwrite=args.overwrite, dense=args.dense, num_buckets=args.buckets, options=options)


def skipped_stats(tables: Sequence[RawTable]) -> dict[str, Any]:
    """Skipped-row counts of the tables read, for the store metadata."""
    reasons = sum((t.skipped for t in tables), Counter())
    return {"skipped_rows": sum(reasons.values()), "skipped_by_reason": dict(sorted(reasons.items()))}


def resolve_input(given: str | None, default: str | os.PathLike, hint: str) -> str:
    """``--input`` if given, else ``default`` if it exists; otherwise an error that says where to get the data."""
    if given:
        return given
    if Path(default).is_file():
        return str(default)
    raise InputError(f"no --input given and nothing at {default}; {hint}")


def preprocess_csv_files(args: argparse.Namespace, *, dataset: str, inputs: dict[str, str | None],
                         roles: Callable[[Sequence[str], str], tuple[list[str], list[str]]],
                         label_cols: Sequence[str], funnel: tuple[str, str] | None = None) -> dict[str, Any]:
    """Headered CSV files, one per given split (``inputs["train"]`` is required; it is split among the
    splits without a file) -> store. ``roles(columns, path) -> (sparse_cols, dense_cols)``."""
    kwargs = frame_arguments(args)
    tables: list[RawTable] = []
    frames: dict[str, pd.DataFrame | None] = {}
    header: list[str] = []
    for split, path in inputs.items():
        if path is None:
            frames[split] = None
            continue
        table = read_table(path, None, args.strict)
        if not header:
            header = list(table.frame.columns)
        elif set(table.frame.columns) != set(header):
            raise InputError(f"{path} has columns {list(table.frame.columns)} but {inputs['train']} has {header}; "
                             f"every input file needs the same header")
        sparse_cols, dense_cols = roles(header, str(path))
        frames[split] = checked_frame(table, sparse_cols, dense_cols, label_cols, args.strict, funnel)
        tables.append(table)
    df, predefined = stack_splits(frames, kwargs["split_ratios"], args.seed)
    return preprocess_frame(df, args.out, dataset=dataset, sparse_cols=sparse_cols, dense_cols=dense_cols,
                            label_cols=label_cols, predefined_split=predefined, stats=skipped_stats(tables), **kwargs)
