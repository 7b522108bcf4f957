"""criteo_cvr: Criteo-format rows with a conversion label after the click -> a (click, conversion) store.

The repo's own ESMM data: ``dataset/synthetic.py --conversion`` writes Criteo's tab-separated format with
one more column, ``click conversion I1..I13 C1..C26`` (41 columns), where a conversion only follows a
click. Features are encoded as ``preprocess.py criteo --dense bucketize`` does (the AutoInt / Criteo_x4
buckets for I1..I13, then C1..C26), labels are ``(click, conversion)`` so that ESMM's second column,
pCTCVR, is trained on click-and-convert over the entire impression space.

    python preprocess.py criteo_cvr --synthetic 200000          # generate, then preprocess
    python preprocess.py criteo_cvr --input rows.txt

It goes through the in-memory table path (dataset/tabular.py): meant for generated data of up to a
few million rows, not for the 45M-row Criteo file (that is ``preprocess.py criteo``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dataset.criteo import CAT_FIELDS, INT_FIELDS, bucketize, synthetic_input
from dataset.tabular import (InputError, RawTable, checked_frame, frame_arguments, open_text,
                             preprocess_frame, skipped_stats)

LABELS = ("click", "conversion")
COLUMNS = (*LABELS, *INT_FIELDS, *CAT_FIELDS)


def read_rows(path: str | Path, strict: bool) -> pd.DataFrame:
    """41-column TSV -> frame of bucket strings for I1..I13, hex strings for C1..C26 ("" = missing) and
    int8 labels. Rows with another column count, a label that is not 0/1, a conversion without a click,
    or a non-numeric I value are skipped and counted (or, with ``strict``, an error naming the line)."""
    with open_text(path) as f:
        numbered = [(i, line.rstrip("\r\n").split("\t")) for i, line in enumerate(f, 1) if line.strip()]
    if not numbered:
        raise InputError(f"{path} has no data rows; pass a non-empty file with --input")
    wrong = np.array([len(cells) != len(COLUMNS) for _, cells in numbered])
    reason = f"wrong number of columns (expected {len(COLUMNS)}: click, conversion, I1..I13, C1..C26)"
    if strict and wrong.any():
        line = numbered[int(np.flatnonzero(wrong)[0])][0]
        raise InputError(f"{path} line {line}: {reason}; fix the row, or drop --strict to skip such rows")
    good = [(i, cells) for (i, cells), bad in zip(numbered, wrong) if not bad]
    if not good:
        raise InputError(f"{path}: no row has {len(COLUMNS)} columns; is it the click, conversion, I1..I13, "
                         f"C1..C26 format of dataset/synthetic.py --conversion?")
    table = RawTable(Path(path), pd.DataFrame([cells for _, cells in good], columns=COLUMNS, dtype=object),
                     np.array([i for i, _ in good]))
    if wrong.any():
        table.skipped[reason] = int(wrong.sum())
    df = checked_frame(table, CAT_FIELDS, INT_FIELDS, LABELS, strict, funnel=LABELS)
    for col in INT_FIELDS:
        values = df[col].to_numpy()
        present = ~np.isnan(values)
        buckets = np.full(len(df), "", dtype=object)
        buckets[present] = bucketize(np.floor(values[present]).astype(np.int64)).astype(str)
        df[col] = buckets
    df.attrs["stats"] = skipped_stats([table])
    return df


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=None, help="41-column TSV: click, conversion, I1..I13, C1..C26")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="generate N rows with dataset/synthetic.py (conversion=True) and preprocess them")
    parser.set_defaults(dense="bucketize", buckets=1)


def main(args: argparse.Namespace) -> int:
    """Run the subcommand (preprocess.py has checked --out and prints the errors)."""
    if bool(args.input) == bool(args.synthetic):
        raise InputError("give exactly one of --input PATH or --synthetic N")
    if args.synthetic:
        args.input = str(synthetic_input(args.synthetic, args.seed, conversion=True))
    df = read_rows(args.input, args.strict)
    kwargs = frame_arguments(args)
    kwargs.update(dense="numeric")  # no dense columns are left: I1..I13 are sparse buckets already
    preprocess_frame(df, args.out, dataset="criteo_cvr", sparse_cols=(*INT_FIELDS, *CAT_FIELDS), dense_cols=(),
                     label_cols=LABELS, stats=df.attrs["stats"], **kwargs)
    return 0
