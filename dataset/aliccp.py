"""aliccp: Ali-CCP (Alibaba Click and Conversion Prediction) -> a two-task store (click, purchase).

The dataset of Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating
Post-Click Conversion Rate" (SIGIR 2018), in the single-value CSV layout of the torch-rechub examples:
a header of ``click``, ``purchase``, one column per Ali-CCP feature field holding an encoded id
(``101``, ``205``, ``150_14`` ...: sparse), and ``D*`` columns holding numbers (``D508``, ``D150_14`` ...: dense).
A purchase implies a click; rows that break this are skipped and counted (``--strict``: an error).

    python preprocess.py aliccp --input ../shared/data/aliccp/ali_ccp_train_sample.csv \\
        [--valid-input ..._val_sample.csv] [--test-input ..._test_sample.csv]

A ``--valid-input`` / ``--test-input`` file becomes that split as is; ``--input`` is split among the
other splits by their part of ``--split``.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from dataset.tabular import InputError, add_table_arguments, preprocess_csv_files, resolve_input

LABELS = ("click", "purchase")
DENSE_PREFIX = "D"
DEFAULT_INPUT = "data/raw/aliccp/ali_ccp_train.csv"
SHARED_INPUT = "../shared/data/aliccp/ali_ccp_train_sample.csv"
SOURCE = "https://tianchi.aliyun.com/dataset/408"


def column_roles(columns: Sequence[str], path: str) -> tuple[list[str], list[str]]:
    """Header -> (sparse field columns, dense ``D*`` columns); the labels must be present."""
    missing = [c for c in LABELS if c not in columns]
    dense = [c for c in columns if c.startswith(DENSE_PREFIX)]
    sparse = [c for c in columns if c not in LABELS and c not in dense]
    if missing or not sparse:
        raise InputError(f"{path} is not an Ali-CCP CSV: header needs {', '.join(LABELS)} and feature columns; "
                         f"missing labels {missing}, {len(sparse)} sparse columns")
    return sparse, dense


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help=f"train CSV (default {DEFAULT_INPUT})")
    parser.add_argument("--valid-input", default=None, help="validation CSV: becomes the valid split as is")
    parser.add_argument("--test-input", default=None, help="test CSV: becomes the test split as is")
    add_table_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run the subcommand (preprocess.py has checked --out and prints the errors)."""
    args.input = resolve_input(args.input, DEFAULT_INPUT,
                               f"pass --input {SHARED_INPUT} (a 100-row sample; add --min-count 1), or build "
                               f"the CSVs from the Ali-CCP release at {SOURCE}")
    preprocess_csv_files(args, dataset="aliccp",
                         inputs={"train": args.input, "valid": args.valid_input, "test": args.test_input},
                         roles=column_roles, label_cols=LABELS, funnel=LABELS)
    return 0
