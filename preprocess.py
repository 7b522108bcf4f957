"""Raw dataset -> LMDB store. One subcommand per dataset:

    python preprocess.py criteo [--input train.txt] [--out data/criteo] [--min-count 10] ...
    python preprocess.py census --input ../shared/data/census/census-income.test.gz
    python preprocess.py criteo --train train.csv --valid valid.csv --test test.csv   # BARS given split files

Each subcommand lives in its dataset/ module, which provides ``add_arguments(parser)`` and
``main(args) -> int``; this file parses flags, checks the common ones before any work (``--split``, and
``--out`` with dataset/store.py's ``check_out``: --overwrite replaces only a store), dispatches, and turns
the errors a user can act on into one ``error:`` line: exit 2 for bad input or flags, 1 for a full disk.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dataset.raw import InputError
from dataset.split import DEFAULT_SPLIT, parse_split
from dataset.store import OutOfSpaceError, StoreExistsError, check_out

SUBCOMMANDS = {
    "criteo": "dataset.criteo",
    "criteo_cvr": "dataset.criteo_cvr",
    "census": "dataset.census",
    "aliexpress": "dataset.aliexpress",
    "aliccp": "dataset.aliccp",
    "libfm": "dataset.libfm",
    "frappe": "dataset.frappe",
    "amazon": "dataset.amazon",
    "synthetic_behaviour": "dataset.synthetic_behaviour",
    "table": "dataset.table",
    "avazu": "dataset.avazu",
}


GIVEN_SPLIT_FLAGS = ("train", "valid", "test")  # criteo and avazu: given split files, inputs like --input


def common_arguments() -> argparse.ArgumentParser:
    """Flags every dataset takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", default=None, help="store directory (default: data/<dataset>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the store at --out (only a store written by preprocess.py, nothing else)")
    p.add_argument("--min-count", type=int, default=10,
                   help="values seen fewer times in train map to OOV (default 10, or the dataset's own: amazon, "
                        "frappe, libfm, synthetic_behaviour 1; table and avazu: the spec's)")
    p.add_argument("--split", default=DEFAULT_SPLIT, help=f"train,valid,test ratios (default {DEFAULT_SPLIT})")
    p.add_argument("--seed", type=int, default=2018, help="seed of the split and the write-time shuffle")
    p.add_argument("--chunk-size", type=int, default=8192, help="rows per LMDB value")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        # A fresh parent per subcommand: argparse shares a parent's action objects with every child, so a
        # dataset's set_defaults(min_count=...) on a shared parent would change every dataset's default.
        mod.add_arguments(sub.add_parser(name, parents=[common_arguments()],
                                         help=(mod.__doc__ or "").strip().splitlines()[0]))
        sub.choices[name].set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = f"data/{args.dataset}"
    inputs = [path for name, value in sorted(vars(args).items())
              if (name.endswith("input") or name in GIVEN_SPLIT_FLAGS) and value
              for path in (value if isinstance(value, list) else [value])]
    try:
        try:
            if args.split is not None:  # None: the dataset's protocol fixes the splits (amazon)
                parse_split(args.split)
        except ValueError as e:
            raise InputError(str(e)) from None
        check_out(args.out, args.overwrite, inputs)
        return args._main(args)
    except (InputError, StoreExistsError) as e:  # OutPathError is an InputError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OutOfSpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
