"""Load-test scripts/serve.py on loopback: p50/p99 latency, requests/s and rows/s for 1-row and 256-row requests.

    OMP_NUM_THREADS=1 python scripts/bench_serve.py --seconds 10 --clients 4

Steps (in a temporary directory, removed at the end unless --keep): generate ``--store_rows`` synthetic raw
Criteo rows (dataset/synthetic.py), preprocess them into a store, train DeepFM (train.py's default sizes) for
``--max_steps`` steps (the weights do not change the speed), start ``serve.py`` on it at a free port, then for
each request size: ``--clients`` threads, each with its own keep-alive connection (http.client), send
requests of distinct raw rows back to back for ``--seconds`` (after ``--warmup`` requests each, not
counted); the server is stopped at the end whatever happens. Prints one JSON record.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402
from bench_predict import print_in_workdir, trained_run  # noqa: E402
from dataset.criteo import CAT_FIELDS, INT_FIELDS  # noqa: E402
from dataset.synthetic import write_synthetic_criteo  # noqa: E402

FIELDS = [*INT_FIELDS, *CAT_FIELDS]


def json_rows(path: Path) -> list[dict[str, str]]:
    """The raw file's rows, click dropped, as /predict rows (empty cells left out)."""
    rows = []
    for line in path.read_text().splitlines():
        rows.append({k: v for k, v in zip(FIELDS, line.split("\t")[1:]) if v})
    return rows


def wait_healthy(proc: subprocess.Popen, port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve.py: serve.py exited {proc.returncode} before answering /health")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"bench_serve.py: serve.py did not answer /health within {seconds:.0f} s")


def load(port: int, bodies: list[bytes], clients: int, seconds: float, warmup: int) -> dict[str, float]:
    """``clients`` keep-alive connections post ``bodies`` (round robin, each client from its own offset) for
    ``seconds`` -> latency percentiles (ms) and throughput; every answer must be a 200."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start_at = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        i = k * 7919
        try:
            for _ in range(warmup):
                conn.request("POST", "/predict", bodies[i % len(bodies)], headers)
                conn.getresponse().read()
                i += 1
            start_at.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                conn.request("POST", "/predict", bodies[i % len(bodies)], headers)
                resp = conn.getresponse()
                resp.read()
                latencies[k].append(time.perf_counter() - t0)
                if resp.status != 200:
                    errors.append(str(resp.status))
                i += 1
        except Exception as e:  # noqa: BLE001 - reported, the run fails below
            errors.append(repr(e))
            start_at.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at.append(time.perf_counter() + 1e9)
    began = time.perf_counter()
    try:
        start_at.wait()
        began = time.perf_counter()
        stop_at[0] = began + seconds
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench_serve.py: {len(errors)} failed requests, first: {errors[0]}")
    took = time.perf_counter() - began
    lat = np.concatenate([np.array(x) for x in latencies]) * 1000
    return {"requests": int(len(lat)), "seconds": round(took, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "requests_per_s": round(len(lat) / took, 1)}


def bench(args: argparse.Namespace, work: Path) -> dict:
    raw = write_synthetic_criteo(work / "rows.txt", args.store_rows, seed=0)
    _, run = trained_run(raw, work, args.max_steps, "bench_serve.py")
    rows = json_rows(raw)
    port = train.free_port()
    cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), str(run), "--port", str(port), "--threads",
           str(args.threads), "--max_rows", "256"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(proc, port)
        result: dict = {"model": "DeepFM (train.py defaults)", "server_threads": args.threads,
                        "clients": args.clients, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                        "cores": os.cpu_count()}
        for size in args.sizes:
            bodies = [json.dumps({"rows": rows[lo:lo + size]}).encode()
                      for lo in range(0, len(rows) - size + 1, size)][:2000]
            stats = load(port, bodies, args.clients, args.seconds, args.warmup)
            stats["rows_per_s"] = round(stats["requests_per_s"] * size)
            result[f"{size} rows/request"] = stats
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per request size")
    p.add_argument("--clients", type=int, default=4, help="client threads, one keep-alive connection each")
    p.add_argument("--threads", type=int, default=4, help="serve.py --threads")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 256], help="rows per request (at most 256)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted requests per client first")
    p.add_argument("--store_rows", type=int, default=20_000, help="synthetic rows: the store and the requests")
    p.add_argument("--max_steps", type=int, default=10, help="DeepFM training steps before serving")
    p.add_argument("--workdir", default=None, help="where the files go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1 or args.threads < 1 or args.warmup < 0:
        p.error("--seconds must be > 0, --clients and --threads >= 1, --warmup >= 0")
    if any(not 1 <= s <= 256 for s in args.sizes) or args.store_rows < 1000:
        p.error("--sizes must be in 1..256 and --store_rows >= 1000 (every split needs rows)")
    return print_in_workdir(args.workdir, args.keep, "bench_serve-", lambda work: bench(args, work))


if __name__ == "__main__":
    sys.exit(main())
