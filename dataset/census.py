"""census: UCI Census-Income (KDD) -> a two-task store (income > 50K, never married), as in MMOE.

The multi-task setup of Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts" (KDD 2018), Sec. 5.2, as in drawbridge/keras-mmoe: task 1 predicts whether income
exceeds 50K, task 2 whether the person was never married; ``marital_stat`` is therefore not a feature,
and ``instance_weight`` (a survey weight) is dropped.

Raw format: comma (+ space) separated, 42 columns, no header, plain or gzip; ``census-income.sample``
(DeepCTR) has an extra leading id column, detected from the field count. ``?`` marks a value not
recorded (e.g. migration codes of one survey year) and maps to the missing id.

    python preprocess.py census --input ../shared/data/census/census-income.test.gz [--dense bucketize]
"""
from __future__ import annotations

import argparse
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from dataset.tabular import (InputError, RawTable, add_table_arguments, drop_non_numeric,
                             frame_arguments, open_text, preprocess_frame, read_table, resolve_input,
                             skipped_stats, to_frame)

COLUMNS = (
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
    "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits",
    "weeks_worked", "year", "income_50k",
)
ID_COLUMN = "id"
# The UCI census-income.names lists these as continuous; the coded columns det_ind_code, det_occ_code,
# own_or_self, vet_benefits and year are nominal and stay sparse.
CONTINUOUS = ("age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp",
              "weeks_worked")
SPARSE = tuple(c for c in COLUMNS if c not in CONTINUOUS + ("instance_weight", "marital_stat", "income_50k"))
LABELS = ("income", "marital")
INCOME_CLASSES = {"- 50000.": 0, "50000+.": 1}
NEVER_MARRIED = "Never married"
NOT_RECORDED = "?"

DEFAULT_INPUT = Path("data/raw/census/census-income.test.gz")
SHARED_INPUT = "../shared/data/census/census-income.test.gz"
UCI_SOURCE = "https://archive.ics.uci.edu/dataset/117/census+income+kdd"
_PEEK_LINES = 1000


def census_columns(path: str | Path) -> tuple[str, ...]:
    """Column names of a census file: 42 fields, or 43 with a leading id (the most common field count
    of the first lines decides, so a bad first row does not)."""
    with open_text(path) as f:
        counts = Counter(line.count(",") + 1 for line in islice((ln for ln in f if ln.strip()), _PEEK_LINES))
    if not counts:
        raise InputError(f"{path} has no data rows; pass a census-income file with --input")
    fields = counts.most_common(1)[0][0]
    if fields == len(COLUMNS):
        return COLUMNS
    if fields == len(COLUMNS) + 1:
        return (ID_COLUMN,) + COLUMNS
    raise InputError(f"{path}: rows have {fields} fields; a census-income file has {len(COLUMNS)} "
                     f"(or {len(COLUMNS) + 1} with a leading id, as census-income.sample); check --input")


def read_census(path: str | Path, strict: bool = False) -> tuple[pd.DataFrame, RawTable]:
    """Read and check a census file -> (frame with SPARSE strings, CONTINUOUS floats, LABELS int8; the
    raw table, whose ``skipped`` counts the dropped rows)."""
    table = read_table(path, census_columns(path), strict, missing=(NOT_RECORDED,))
    income = table.frame["income_50k"]
    table.drop(~income.isin(list(INCOME_CLASSES)).to_numpy(),
               f"income class is not one of {sorted(INCOME_CLASSES)}", strict)
    drop_non_numeric(table, CONTINUOUS, strict)
    df = to_frame(table, SPARSE, CONTINUOUS, ())
    df["income"] = table.frame["income_50k"].map(INCOME_CLASSES).astype(np.int8)
    df["marital"] = (table.frame["marital_stat"] == NEVER_MARRIED).astype(np.int8)
    return df, table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None,
                        help=f"census-income.test.gz / .data.gz / .sample (default {DEFAULT_INPUT})")
    add_table_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run the subcommand (preprocess.py has checked --out and prints the errors)."""
    args.input = resolve_input(
        args.input, DEFAULT_INPUT,
        f"pass --input {SHARED_INPUT} (the 99,762-row test split in this workspace), or download "
        f"census-income.data.gz / census-income.test.gz from {UCI_SOURCE} into {DEFAULT_INPUT.parent}/",
    )
    kwargs = frame_arguments(args)
    df, table = read_census(args.input, args.strict)
    preprocess_frame(df, args.out, dataset="census", sparse_cols=SPARSE, dense_cols=CONTINUOUS, label_cols=LABELS,
                     stats=skipped_stats([table]), **kwargs)
    return 0
