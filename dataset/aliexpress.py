"""aliexpress: AliExpress search logs (click, conversion) -> a two-task store for ESMM-style models.

The dataset of Li et al., "Improving Multi-Scenario Learning to Rank in E-commerce by Exploiting Task
Relationships in the Label Space" (CIKM 2020), released per country on Tianchi and used by the
torch-rechub ESMM / MMOE / PLE examples. CSV with a header: ``search_id`` (a query id, not a feature),
``categorical_1..16`` (sparse), ``numerical_1..63`` (dense), ``click``, ``conversion``.

    python preprocess.py aliexpress --input ../shared/data/aliexpress/aliexpress_train_sample.csv \\
        [--test-input ../shared/data/aliexpress/aliexpress_test_sample.csv]

With ``--test-input`` that file is the test split and ``--input`` is split into train/valid by the
train:valid part of ``--split``.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from dataset.tabular import InputError, add_table_arguments, preprocess_csv_files, resolve_input

ID_COLUMN = "search_id"
SPARSE_PREFIX = "categorical_"
DENSE_PREFIX = "numerical_"
LABELS = ("click", "conversion")
DEFAULT_INPUT = "data/raw/aliexpress/train.csv"
SHARED_INPUT = "../shared/data/aliexpress/aliexpress_train_sample.csv"
SOURCE = "https://tianchi.aliyun.com/dataset/74690"


def column_roles(columns: Sequence[str], path: str) -> tuple[list[str], list[str]]:
    """Header -> (sparse ``categorical_*`` columns, dense ``numerical_*`` columns); anything else but the
    id and the labels is an error."""
    missing = [c for c in LABELS if c not in columns]
    sparse = [c for c in columns if c.startswith(SPARSE_PREFIX)]
    dense = [c for c in columns if c.startswith(DENSE_PREFIX)]
    unknown = [c for c in columns if c not in (ID_COLUMN, *LABELS, *sparse, *dense)]
    if missing or unknown or not sparse:
        raise InputError(f"{path} is not an AliExpress CSV: header needs {ID_COLUMN}, {SPARSE_PREFIX}*, "
                         f"{DENSE_PREFIX}*, {', '.join(LABELS)}; missing labels {missing}, "
                         f"unknown columns {unknown}, {len(sparse)} {SPARSE_PREFIX}* columns")
    return sparse, dense


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help=f"train CSV (default {DEFAULT_INPUT})")
    parser.add_argument("--test-input", default=None, help="test CSV: becomes the test split as is")
    add_table_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run the subcommand (preprocess.py has checked --out and prints the errors)."""
    args.input = resolve_input(args.input, DEFAULT_INPUT,
                               f"pass --input {SHARED_INPUT} (a 100-row sample; add --min-count 1), "
                               f"or download a country's train.csv / test.csv from {SOURCE}")
    preprocess_csv_files(args, dataset="aliexpress", inputs={"train": args.input, "test": args.test_input},
                         roles=column_roles, label_cols=LABELS, funnel=LABELS)
    return 0
