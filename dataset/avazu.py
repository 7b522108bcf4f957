"""avazu: the Kaggle Avazu CTR file -> a 24-field store, as BARS Avazu_x4 (dataset/specs/avazu.toml).

    python preprocess.py avazu --input ../shared/data/avazu/avazu_train.csv \\
        [--valid-input ../shared/data/avazu/avazu_dev.csv --test-input ../shared/data/avazu/avazu_test.csv]

The Kaggle train.csv (40,428,967 rows, with a header line) or files split from it (without one): ``id``
is dropped, ``hour`` (YYMMDDHH) becomes hour of day, weekday and weekend, every other column is
categorical with ``--min-count 2`` by default, and ``click`` is the label. The whole work is the table
reader's (dataset/table.py) driven by the shipped spec; this module only names the input.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dataset.table import add_input_arguments, run
from dataset.tabular import resolve_input

SPEC = Path(__file__).resolve().parent / "specs" / "avazu.toml"
DEFAULT_INPUT = Path("data/raw/avazu/train.csv")
SHARED_INPUT = "../shared/data/avazu/avazu_train.csv"
SOURCE = "https://www.kaggle.com/c/avazu-ctr-prediction/data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help=f"Avazu CSV, plain or gzip (default {DEFAULT_INPUT})")
    add_input_arguments(parser)


def main(args: argparse.Namespace) -> int:
    args.input = resolve_input(args.input, DEFAULT_INPUT,
                               f"pass --input {SHARED_INPUT} (8,087 rows of it in this workspace), or download "
                               f"train.gz from {SOURCE} into {DEFAULT_INPUT.parent}/")
    return run(args, SPEC)
