"""Raw dataset -> LMDB store. One subcommand per dataset:

    python preprocess.py criteo [--input train.txt] [--out data/criteo] [--min-count 10] ...
    python preprocess.py census --input ../shared/data/census/census-income.test.gz

Each subcommand lives in its dataset/ module, which provides ``add_arguments(parser)`` and
``main(args) -> int``; this file only parses flags and dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "criteo": "dataset.criteo",
    "criteo_cvr": "dataset.criteo_cvr",
    "census": "dataset.census",
    "aliexpress": "dataset.aliexpress",
    "aliccp": "dataset.aliccp",
    "table": "dataset.table",
    "avazu": "dataset.avazu",
}


def common_arguments() -> argparse.ArgumentParser:
    """Flags every dataset takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", default=None, help="store directory (default: data/<dataset>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--min-count", type=int, default=10, help="values seen fewer times in train map to OOV")
    p.add_argument("--split", default="8,1,1", help="train,valid,test ratios (default 8,1,1)")
    p.add_argument("--seed", type=int, default=2018, help="seed of the split and the write-time shuffle")
    p.add_argument("--chunk-size", type=int, default=8192, help="rows per LMDB value")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    common = common_arguments()
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_arguments(sub.add_parser(name, parents=[common], help=(mod.__doc__ or "").strip().splitlines()[0]))
        sub.choices[name].set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = f"data/{args.dataset}"
    return args._main(args)


if __name__ == "__main__":
    sys.exit(main())
