"""avazu: the Kaggle Avazu CTR file -> a 24-field store, as BARS Avazu_x4 (dataset/specs/avazu.toml).

    python preprocess.py avazu --input ../shared/data/avazu/avazu_train.csv \\
        [--valid-input ../shared/data/avazu/avazu_dev.csv --test-input ../shared/data/avazu/avazu_test.csv]
    python preprocess.py avazu --train train.csv --valid valid.csv --test test.csv    # BARS Avazu_x4 files

The Kaggle train.csv (40,428,967 rows, with a header line) or files split from it (without one): ``id``
is dropped, ``hour`` (YYMMDDHH) becomes hour of day, weekday and weekend, every other column is
categorical with ``--min-count 2`` by default, and ``click`` is the label. The whole work is the table
reader's (dataset/table.py) driven by the shipped spec; this module only names the input.

Given split files (``--train F --valid F --test F``, BARS Avazu_x4: https://github.com/reczoo/Datasets,
Avazu/Avazu_x4, the Kaggle columns ``id,click,hour,C1,banner_pos,site_id,...,C21`` with their header line, as
its convert_avazu_x4.py writes them): each must start with that header (columns matched by name), every row
stays in the split of its file (``--split`` does not apply) and the vocabularies are fitted on the train file
alone.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from dataset.raw import InputError, open_raw
from dataset.split import DEFAULT_SPLIT, SPLITS, check_common
from dataset.store import StoreReader
from dataset.table import BUFFER_BYTES, add_input_arguments, preprocess_table, run
from dataset.table_predict import TableRawRows
from dataset.table_spec import TableSpec, load_spec
from dataset.tabular import resolve_input

SPEC = Path(__file__).resolve().parent / "specs" / "avazu.toml"
DEFAULT_INPUT = Path("data/raw/avazu/train.csv")
SHARED_INPUT = "../shared/data/avazu/avazu_train.csv"
SOURCE = "https://www.kaggle.com/c/avazu-ctr-prediction/data"
SPLIT_FLAGS = {"train": "--train", "valid": "--valid", "test": "--test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help=f"Avazu CSV, plain or gzip (default {DEFAULT_INPUT})")
    for split, flag in SPLIT_FLAGS.items():
        parser.add_argument(flag, default=None, metavar="FILE",
                            help=f"given split file: BARS Avazu_x4 {split}.csv (plain or gzip, with its header); "
                                 f"pass --train, --valid and --test together, instead of --input")
    add_input_arguments(parser)


def check_split_files(files: dict[str, str | None], spec: TableSpec) -> dict[str, Path]:
    """Given split files, checked before any work: all three, each exists and has the spec's columns in its
    header line -> split -> path."""
    missing = [SPLIT_FLAGS[s] for s in SPLITS if not files.get(s)]
    if missing:
        raise InputError(f"given split files need all of --train, --valid and --test; missing {', '.join(missing)}")
    paths = {s: Path(files[s]) for s in SPLITS}  # type: ignore[arg-type]
    for split, path in paths.items():
        flag = SPLIT_FLAGS[split]
        if not path.is_file():
            raise InputError(f"{flag} file {path} does not exist; pass the BARS Avazu_x4 {split}.csv")
        stream, _ = open_raw(path)
        with stream:
            first = stream.readline().decode(spec.encoding, "replace").rstrip("\r\n")
        cells = first.split(spec.separator)
        absent = [c for c in spec.names if c not in cells]
        extra = [c for c in cells if c not in spec.names]
        if absent or extra or len(set(cells)) != len(cells):
            detail = (f"it lacks {', '.join(absent)}" if absent else
                      f"it has columns Avazu does not: {', '.join(extra)}" if extra else "it repeats a column")
            raise InputError(f"{flag} file {path} is not an Avazu_x4 CSV with a header: {detail}; the first line "
                             f"must name the columns {','.join(spec.names[:4])},...,C21")
    return paths


def main(args: argparse.Namespace) -> int:
    given = {s: getattr(args, s) for s in SPLITS if getattr(args, s, None)}
    if not given:
        args.input = resolve_input(args.input, DEFAULT_INPUT,
                                   f"pass --input {SHARED_INPUT} (8,087 rows of it in this workspace), or "
                                   f"download train.gz from {SOURCE} into {DEFAULT_INPUT.parent}/")
        return run(args, SPEC)
    mixed = [f for f, v in (("--input", args.input), ("--valid-input", args.valid_input),
                            ("--test-input", args.test_input)) if v]
    if mixed:
        raise InputError(f"pass either {'/'.join(mixed)} or the given split files --train/--valid/--test, not both")
    if args.split != DEFAULT_SPLIT:
        raise InputError(f"--split {args.split} does not apply to given split files (each file is its split); drop it")
    spec = dataclasses.replace(load_spec(SPEC), header=True)  # given files name their columns in a header
    paths = check_split_files(given, spec)
    ratios = check_common(args.split, args.min_count, args.chunk_size)  # only checked: every file is one split
    preprocess_table(spec, paths, args.out, min_count=args.min_count, split=ratios, seed=args.seed,
                     chunk_size=args.chunk_size, overwrite=args.overwrite, strict=args.strict,
                     buffer_bytes=getattr(args, "buffer_mb", BUFFER_BYTES >> 20) << 20)
    return 0


class RawRows(TableRawRows):
    """New raw Avazu rows (the Kaggle CSV, with or without its header line; test.csv's rows lack ``click``)
    -> the store's batch arrays, by the table reader's own functions with the store's vocabularies
    (dataset/table_predict.py). dataset/predict_encode.py finds this class by the store's dataset name."""

    def __init__(self, store: StoreReader) -> None:
        super().__init__(store, load_spec(SPEC))
