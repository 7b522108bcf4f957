"""Benchmark scripts/predict.py: rows/s of scoring a raw Criteo file with a DeepFM run, split into read+encode
and model time.

    OMP_NUM_THREADS=1 python scripts/bench_predict.py --rows 1000000

Steps (in a temporary directory, removed at the end unless --keep): generate ``--rows`` synthetic rows in the
raw Criteo format (dataset/synthetic.py), preprocess the first ``--store_rows`` of them into a store (its
vocabularies), train DeepFM for ``--max_steps`` steps (the weights do not change the speed), then

1. read+encode alone: every line of the file through :class:`dataset.criteo.RawRows` (the tokenizer and
   encoder prediction uses, on its thread pool), no model;
2. the whole command: :func:`predict.predict_file` (read, encode, DeepFM forward, write the TSV), with its
   time per stage (its read+encode is the time the model waited for encoded blocks).

Prints one JSON record.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

import predict  # noqa: E402
import train  # noqa: E402
from dataset.criteo import RawRows, preprocess_criteo  # noqa: E402
from dataset.store import StoreReader  # noqa: E402
from dataset.synthetic import write_synthetic_criteo  # noqa: E402


def encode_only(store: Path, path: Path) -> tuple[int, float]:
    """-> (rows encoded, seconds) of reading and encoding every line of ``path``, no model."""
    start = time.perf_counter()
    rows = 0
    with ThreadPoolExecutor(predict.WORKERS) as pool:
        for block in RawRows(StoreReader(store)).blocks(path, True, pool):
            rows += len(block.lines)
    return rows, time.perf_counter() - start


def trained_run(raw: Path, work: Path, max_steps: int, caller: str) -> tuple[Path, Path]:
    """``raw`` Criteo rows -> (their store ``work/store``, a DeepFM run dir ``work/run`` with train.py's default
    sizes trained ``max_steps`` steps on it): the run the prediction and serving benchmarks score with."""
    store = work / "store"
    preprocess_criteo(raw, store, progress=False)
    run = work / "run"
    code = train.main(["--model", "DeepFM", "--data", str(store), "--max_steps", str(max_steps), "--gpu_ids", "",
                       "--num_workers", "0", "--model_save_dir", str(run)])
    if code:
        raise SystemExit(f"{caller}: training the DeepFM run failed (exit {code})")
    return store, run


def print_in_workdir(workdir: str | None, keep: bool, prefix: str, bench: Callable[[Path], dict]) -> int:
    """Run ``bench(work)`` in ``workdir`` (default: a temporary directory, removed afterwards unless ``keep``)
    and print its result as JSON."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(json.dumps(bench(work), indent=2))
    finally:
        if not keep and not workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def bench(rows: int, store_rows: int, max_steps: int, batch_size: int, work: Path) -> dict:
    raw = write_synthetic_criteo(work / "rows.txt", rows, seed=0)
    head = work / "head.txt"
    with open(raw, "rb") as src, open(head, "wb") as dst:
        for _, line in zip(range(store_rows), src):
            dst.write(line)
    store, run = trained_run(head, work, max_steps, "bench_predict.py")
    encoded, encode_s = encode_only(store, raw)
    result = predict.predict_file(run, raw, work / "preds.tsv", batch_size=batch_size, progress=False)
    stages = result["stage_seconds"]
    return {
        "rows": rows, "model": "DeepFM (train.py defaults)", "store_rows": store_rows,
        "threads": {"torch": torch.get_num_threads(), "encode_workers": predict.WORKERS,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "read+encode only": {"seconds": round(encode_s, 2), "rows_per_s": round(encoded / encode_s)},
        "predict": {"seconds": result["seconds"], "rows_per_s": result["rows_per_s"], "stage_seconds": stages,
                    "model_rows_per_s": round(rows / max(stages["model"], 1e-9)),
                    "auc": result["metrics"]["auc"]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows to score")
    p.add_argument("--store_rows", type=int, default=100_000, help="of them, rows preprocessed into the store")
    p.add_argument("--max_steps", type=int, default=10, help="DeepFM training steps before scoring")
    p.add_argument("--batch_size", type=int, default=8192, help="predict.py --batch_size")
    p.add_argument("--workdir", default=None, help="where the files go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    args = p.parse_args(argv)
    if args.rows < 1 or args.store_rows < 1000:
        p.error("--rows must be >= 1 and --store_rows >= 1000 (every split needs rows)")
    return print_in_workdir(args.workdir, args.keep, "bench_predict-",
                            lambda work: bench(args.rows, args.store_rows, args.max_steps, args.batch_size, work))


if __name__ == "__main__":
    sys.exit(main())
