"""Data-pipeline benchmark: our preprocessing and loader against pytorch-fm's, on the same synthetic data.

    python scripts/bench_data.py --rows 1000000 [--json bench_data.json] [--workdir DIR]

One run does, on this machine:

1. write ``--rows`` rows of synthetic raw Criteo (dataset/synthetic.py);
2. preprocessing, rows/s, each side in a freshly spawned process, both on the whole file: ours
   (``dataset.criteo.preprocess_criteo``: vocabulary, split, shuffle, chunked store) against pytorch-fm's
   cache build (scripts/baselines_pytorchfm.py: two pure-Python passes, one LMDB key per row). Its per-row
   cost grows with the file (bigger dicts, a deeper B-tree: about 12% slower per row at 1M rows than at
   100k), so ``--baseline-rows N``, which times only its first N rows to save time, flatters it. Ours takes
   about 2 s, so it runs ``--repeat`` times (each into a new store) and the median counts; theirs runs once,
   over about 25 s;
3. loading, samples/s through a DataLoader with ``--workers`` workers at ``--batch-size``: ours
   (``make_loader(train=True)``, full epochs of the train split after one warm-up epoch) against
   pytorch-fm's per-row Dataset (one LMDB ``get`` per row, default collate, shuffled) over a per-row cache
   of the same train rows, timed over ``--baseline-batches`` batches after ``WARMUP_BATCHES``. Worker
   start-up is excluded on both sides.

Prints a Markdown table (both sides and the ratios) and writes the numbers as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Only what preprocessing needs is imported here: a spawned process re-imports this module, and ours runs as
# `python preprocess.py` does, without torch in the process. pytorch-fm's side imports torch with its
# module, as pytorch-fm does.
from dataset.criteo import preprocess_criteo  # noqa: E402
from dataset.synthetic import write_synthetic_criteo  # noqa: E402

WARMUP_BATCHES = 4
AMAZON = ROOT.parent / "shared" / "data" / "amazon" / "Beauty.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic raw rows to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of our loader (after one warm-up)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of our preprocessing (each about 2 s, so one noisy second moves it): the median counts")
    p.add_argument("--baseline-rows", type=int, default=None,
                   help="time pytorch-fm's cache build on the first N rows only (default: all, as ours)")
    p.add_argument("--baseline-batches", type=int, default=40, help="timed batches of pytorch-fm's loader")
    p.add_argument("--amazon", type=Path, default=AMAZON,
                   help="also preprocess this Amazon review file (DIN's protocol, dataset/amazon.py) and time our "
                        "loader on its store (2 sequence fields of 50); 'none' skips it (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for flag in ("rows", "batch_size", "epochs", "repeat", "baseline_rows", "baseline_batches"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a newly spawned interpreter: it inherits no heap, page-fault history or
    peak RSS from this one (a user runs each tool as its own process)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _quiet_preprocess(raw: Path, store: Path) -> float:
    """Seconds of one ``preprocess_criteo`` call (its summary goes to stderr; stdout keeps only the table)."""
    with contextlib.redirect_stdout(sys.stderr):
        return timed(preprocess_criteo, raw, store, overwrite=True, progress=False)[1]


def bench_preprocessing(raw: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Each side in a fresh process, timed inside it (interpreter start-up excluded on both sides)."""
    from baselines_pytorchfm import build_cache
    runs = [in_fresh_process(_quiet_preprocess, raw, work / f"store{i}") for i in range(args.repeat)]
    for i in range(1, args.repeat):
        shutil.rmtree(work / f"store{i}")
    os.replace(work / "store0", work / "store")
    ours_s = statistics.median(runs)
    shutil.rmtree(work / "pytorchfm_cache", ignore_errors=True)  # as pytorch-fm does on a rebuild
    base_rows, base_s = in_fresh_process(timed, build_cache, raw, work / "pytorchfm_cache",
                                         max_rows=args.baseline_rows)
    return {"ours_rows": args.rows, "ours_seconds": ours_s, "ours_runs_seconds": runs,
            "ours_rows_per_s": args.rows / ours_s,
            "pytorchfm_rows": base_rows, "pytorchfm_seconds": base_s, "pytorchfm_rows_per_s": base_rows / base_s}


def _quiet_amazon(raw: Path, store: Path) -> tuple[int, float]:
    """(rows written, seconds) of one ``preprocess_amazon`` call, in this process."""
    from dataset.amazon import default_attributes, preprocess_amazon
    with contextlib.redirect_stdout(sys.stderr):
        meta, seconds = timed(preprocess_amazon, raw, default_attributes(raw), store, overwrite=True)
    return sum(s["rows"] for s in meta["splits"].values()), seconds


def bench_amazon(raw: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Our side only (pytorch-fm has no sequence fields): preprocessing ``--repeat`` times in fresh processes
    (median), then our loader on the store's train split, as for Criteo."""
    runs = [in_fresh_process(_quiet_amazon, raw, work / f"amazon{i}") for i in range(args.repeat)]
    rows, seconds = runs[0][0], statistics.median(s for _, s in runs)
    loader = bench_our_loader(work / "amazon0", args)
    return {"rows": rows, "seconds": seconds, "runs_seconds": [s for _, s in runs], "rows_per_s": rows / seconds,
            "loader": loader}


def bench_our_loader(store: Path, args: argparse.Namespace) -> dict[str, float]:
    from dataset.loader import make_loader
    loader = make_loader(store, "train", args.batch_size, train=True, num_workers=args.workers)
    rows, seconds = 0, 0.0
    for epoch in range(args.epochs + 1):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        n = sum(len(batch["label"]) for batch in loader)
        if epoch:  # epoch 0 warms up: worker start, page cache
            rows, seconds = rows + n, seconds + time.perf_counter() - start
    return {"ours_rows": rows, "ours_seconds": seconds, "ours_samples_per_s": rows / seconds}


def bench_pytorchfm_loader(store: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader

    from baselines_pytorchfm import CriteoRowDataset, write_row_cache
    from dataset.store import StoreReader
    reader = StoreReader(store)
    blocks = (reader.read_chunk("train", i) for i in range(reader.num_chunks("train")))
    shutil.rmtree(work / "pytorchfm_rows", ignore_errors=True)
    write_row_cache(work / "pytorchfm_rows", ((c["sparse"], c["label"][:, 0]) for c in blocks), reader.schema.vocab_sizes)
    loader = DataLoader(CriteoRowDataset(work / "pytorchfm_rows"), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed))
    batches = iter(loader)
    for _ in islice(batches, WARMUP_BATCHES):
        pass
    start = time.perf_counter()
    rows = sum(len(y) for _, y in islice(batches, args.baseline_batches))
    seconds = time.perf_counter() - start
    if not rows:
        raise SystemExit(f"the train split has {len(loader)} batches of {args.batch_size}, all spent on the "
                         f"{WARMUP_BATCHES} warm-up batches of pytorch-fm's loader: raise --rows or lower --batch-size")
    return {"pytorchfm_rows": rows, "pytorchfm_seconds": seconds, "pytorchfm_samples_per_s": rows / seconds}


def table(results: dict) -> str:
    pre, load = results["preprocessing"], results["loader"]
    lines = [
        "| stage | ours | pytorch-fm (re-implemented) | ours / pytorch-fm |",
        "|---|---:|---:|---:|",
        f"| preprocessing, rows/s | {pre['ours_rows_per_s']:,.0f} ({pre['ours_rows']:,} rows, median of "
        f"{len(pre['ours_runs_seconds'])} runs) | "
        f"{pre['pytorchfm_rows_per_s']:,.0f} ({pre['pytorchfm_rows']:,} rows) | {pre['speedup']:.1f}x |",
        f"| loader, samples/s ({results['workers']} workers, batch {results['batch_size']}) | "
        f"{load['ours_samples_per_s']:,.0f} ({load['ours_rows']:,} rows) | "
        f"{load['pytorchfm_samples_per_s']:,.0f} ({load['pytorchfm_rows']:,} rows) | {load['speedup']:.1f}x |",
    ]
    if "amazon" in results:
        a = results["amazon"]
        lines += [f"| Amazon Beauty preprocessing (DIN's protocol), rows/s | {a['rows_per_s']:,.0f} ({a['rows']:,} rows "
                  f"written, median of {len(a['runs_seconds'])} runs) | no sequence fields | |",
                  f"| loader on the Amazon store (2 sequence fields of 50), samples/s | "
                  f"{a['loader']['ours_samples_per_s']:,.0f} ({a['loader']['ours_rows']:,} rows) | | |"]
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> dict:
    raw, gen_s = timed(write_synthetic_criteo, work / "criteo_synthetic.txt", args.rows, args.seed)
    print(f"generated {args.rows:,} rows in {gen_s:.1f}s", file=sys.stderr)
    pre = bench_preprocessing(raw, work, args)
    pre["speedup"] = pre["ours_rows_per_s"] / pre["pytorchfm_rows_per_s"]
    load = {**bench_our_loader(work / "store", args), **bench_pytorchfm_loader(work / "store", work, args)}
    load["speedup"] = load["ours_samples_per_s"] / load["pytorchfm_samples_per_s"]
    out = {"rows": args.rows, "batch_size": args.batch_size, "workers": args.workers, "cpus": os.cpu_count(),
           "preprocessing": pre, "loader": load}
    if str(args.amazon) != "none":
        if not args.amazon.is_file():
            raise SystemExit(f"bench_data.py: no Amazon review file at {args.amazon}; pass --amazon PATH or --amazon none")
        out["amazon"] = bench_amazon(args.amazon, work, args)
    out["load_average_1min"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
            results = run(args, Path(tmp))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.workdir)
    print(table(results))
    print(f"\n{results['cpus']} CPUs, 1-min load average at the end {results['load_average_1min']:.1f}; "
          f"pytorch-fm's rates are measured on the row counts shown (its loader on a bounded number of batches).")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
