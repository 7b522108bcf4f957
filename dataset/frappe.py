"""frappe: Frappe app-usage log in NFM's libFM files -> a store of its 10 fields (the BARS Frappe_x1 protocol).

    python preprocess.py frappe --input ../shared/data/frappe/frappe.validation.libfm \\
        ../shared/data/frappe/frappe.test.libfm

Frappe (Baltrunas et al., arXiv:1505.03014) as released with NFM (He & Chua, "Neural Factorization Machines
for Sparse Predictive Analytics", SIGIR 2017; github.com/hexiangnan/neural_factorization_machine,
data/frappe): 288,609 rows (each logged use plus two sampled non-uses), label 1 / -1, and 10 one-hot
fields of 5,382 features in all. This is :mod:`dataset.libfm` with Frappe's defaults:

* ``--fields``: the 10 fields and their index ranges, in file order, from the per-field counts in the
  dataset's README (user 957, item 4,082, daytime 7, weekday 7, isweekend 2, homework 3, cost 2,
  weather 9, country 80, city 233): ``user:0-956,item:957-5038,...,city:5149-5381``. Every row is
  checked against them (pass ``--fields user,item,...`` without ranges to infer them from the data instead;
  on NFM's files both give the same ranges);
* ``--split 7,2,1``, a seeded random split: the protocol of NFM ("randomly split into training (70%),
  validation (20%) and test (10%)"), followed by AFN and kept by the BARS benchmark's Frappe_x1
  (reczoo/BARS, ``docs/CTR/leaderboard/frappe_x1.md``; its dataset README gives the split as 202,027 /
  57,722 / 28,860 rows, which are NFM's ``frappe.train/validation/test.libfm``). With those three files,
  ``--split-by-file`` reproduces Frappe_x1's split exactly. The workspace has only the validation and test
  files (86,582 rows), so the default re-splits what is given 7:2:1;
* ``--min-count 1``: BARS fixes ``min_categr_count=1`` for Frappe_x1, and NFM feeds every feature index;
* ``user`` is the store's user field (for gAUC).

The files' licence allows research use only and no redistribution: read them where they are, never copy
them into the project.
"""
from __future__ import annotations

import argparse
from itertools import accumulate
from pathlib import Path

from dataset import libfm
from dataset.raw import InputError

FIELD_SIZES = (("user", 957), ("item", 4082), ("daytime", 7), ("weekday", 7), ("isweekend", 2), ("homework", 3),
               ("cost", 2), ("weather", 9), ("country", 80), ("city", 233))
FIELDS = tuple(name for name, _ in FIELD_SIZES)
_ENDS = tuple(accumulate(size for _, size in FIELD_SIZES))
FIELD_SPEC = ",".join(f"{name}:{end - size}-{end - 1}" for (name, size), end in zip(FIELD_SIZES, _ENDS))
SPLIT = "7,2,1"
USER_FIELD = "user"
DEFAULT_DIR = Path("data/raw/frappe")
FILES = ("frappe.train.libfm", "frappe.validation.libfm", "frappe.test.libfm")
SHARED_INPUT = "../shared/data/frappe/frappe.validation.libfm ../shared/data/frappe/frappe.test.libfm"
SOURCE = "https://github.com/hexiangnan/neural_factorization_machine/tree/master/data/frappe"


def default_inputs() -> list[str]:
    """NFM's Frappe files found in ``DEFAULT_DIR``, in train, validation, test order."""
    found = [str(DEFAULT_DIR / name) for name in FILES if (DEFAULT_DIR / name).is_file()]
    if not found:
        raise InputError(f"no --input given and no {', '.join(FILES)} in {DEFAULT_DIR}/; pass --input "
                         f"{SHARED_INPUT} (NFM's validation and test files in this workspace), or put NFM's "
                         f"files from {SOURCE} into {DEFAULT_DIR}/")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    libfm.add_arguments(parser, input_default=f"NFM's {', '.join(FILES)} found in {DEFAULT_DIR}/")
    parser.set_defaults(fields=FIELD_SPEC, split=SPLIT)


def main(args: argparse.Namespace) -> int:
    args.input = args.input or default_inputs()
    return libfm.main(args, dataset="frappe", user_field=USER_FIELD)
