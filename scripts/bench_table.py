"""Speed of the spec-driven table reader (dataset/table.py) on generated Avazu-like rows.

    python scripts/bench_table.py --rows 1000000 [--workdir DIR] [--repeat 3] [--criteo]

Writes ``--rows`` rows shaped like the Kaggle Avazu train file (24 columns: a 20-digit id, the click, a
YYMMDDHH hour over 10 days, 8-hex-digit ids and small integers with heavy-tailed frequencies, a few columns
with hundreds of thousands of distinct values like device_ip) unless the file is already there, then
preprocesses it with dataset/specs/avazu.toml ``--repeat`` times (each into a new store) and prints rows/s
(both passes, shuffle and write included; the median counts), and rows per CPU second, which a busy
machine disturbs less. ``--criteo`` also times the tuned Criteo reader (threaded) on as many synthetic
Criteo rows, a reference for how busy the machine is.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.avazu import SPEC  # noqa: E402
from dataset.table import preprocess_table  # noqa: E402

HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
          "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
# (distinct values, skew, hex): value index = floor(distinct * u ** skew), so a larger skew puts more rows on
# fewer values; roughly the cardinalities of one day of real Avazu
COLUMNS = {
    "C1": (7, 3, False), "banner_pos": (7, 4, False), "site_id": (3000, 3, True), "site_domain": (3500, 3, True),
    "site_category": (22, 3, True), "app_id": (4000, 4, True), "app_domain": (250, 4, True),
    "app_category": (28, 4, True), "device_id": (400_000, 6, True), "device_ip": (900_000, 2, True),
    "device_model": (6000, 2, True), "device_type": (5, 4, False), "device_conn_type": (4, 4, False),
    "C14": (2500, 2, False), "C15": (8, 4, False), "C16": (9, 4, False), "C17": (420, 2, False),
    "C18": (4, 2, False), "C19": (66, 3, False), "C20": (160, 3, False), "C21": (60, 2, False),
}


def write_avazu_like(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cols = [np.char.mod("%d", rng.integers(10**18, 10**19 - 1, rows, dtype=np.uint64)),
            (rng.random(rows) < 0.17).astype(np.int8).astype("S1"),
            np.char.mod("%d", 14102100 + 100 * np.sort(rng.integers(0, 10, rows)) + rng.integers(0, 24, rows))]
    for distinct, skew, hexed in COLUMNS.values():
        index = (distinct * rng.random(rows) ** skew).astype(np.uint64)
        if hexed:
            cols.append(np.char.mod("%08x", (index * np.uint64(2654435761) + np.uint64(97)) % np.uint64(1 << 32)))
        else:
            cols.append(np.char.mod("%d", index * np.uint64(7) + np.uint64(1000 if distinct > 100 else 0)))
    lists = [c.astype("S").tolist() for c in cols]
    with open(path, "wb") as f:
        f.write(HEADER.encode() + b"\n")
        step = 100_000
        for lo in range(0, rows, step):
            f.write(b"\n".join(b",".join(t) for t in zip(*(c[lo:lo + step] for c in lists))) + b"\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="where the CSV and stores go (default: a temp dir)")
    p.add_argument("--criteo", action="store_true", help="also time the Criteo reader on as many rows")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_table_"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"avazu_like_{args.rows}.csv"
    if not raw.is_file():
        started = time.perf_counter()
        write_avazu_like(raw, args.rows)
        print(f"wrote {raw} ({raw.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    speeds, cpu_speeds = [], []
    for i in range(args.repeat):
        started, cpu = time.perf_counter(), time.process_time()
        preprocess_table(SPEC, {"train": raw}, workdir / f"store{i}", overwrite=True, progress=False)
        speeds.append(args.rows / (time.perf_counter() - started))
        cpu_speeds.append(args.rows / (time.process_time() - cpu))
    print(f"table reader, Avazu spec: {statistics.median(speeds):,.0f} rows/s (median of "
          f"{', '.join(f'{s:,.0f}' for s in speeds)}); {statistics.median(cpu_speeds):,.0f} rows per CPU second")
    if args.criteo:
        from dataset.criteo import preprocess_criteo
        from dataset.synthetic import write_synthetic_criteo
        criteo = workdir / f"criteo_{args.rows}.txt"
        if not criteo.is_file():
            write_synthetic_criteo(criteo, args.rows, seed=0)
        started, cpu = time.perf_counter(), time.process_time()
        preprocess_criteo(criteo, workdir / "criteo_store", overwrite=True, progress=False)
        print(f"criteo reader (reference): {args.rows / (time.perf_counter() - started):,.0f} rows/s; "
              f"{args.rows / (time.process_time() - cpu):,.0f} rows per CPU second")


if __name__ == "__main__":
    main()
