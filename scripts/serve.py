"""Serve a trained run online: JSON rows of raw values in, click probabilities out, with hot model updates.

    python scripts/serve.py checkpoints/DeepFM/<run> [--host 127.0.0.1] [--port 8000] [--threads 4]
    python scripts/serve.py checkpoints/DeepFM/<run> --watch checkpoints/current   # follow a pointer file

HTTP on waitress (a pure-Python WSGI server); the app below is plain WSGI:

* ``POST /predict`` ``{"rows": [{"I1": "3", ..., "C1": "68fd1e64", ...}, ...]}`` -> ``{"predictions":
  [{"click": 0.123}, ...], "model": <run dir>, "loaded_at": <UTC time>}``, in request order. Values are the raw
  strings of the dataset's file format (a number is taken as its decimal text); a missing key, "" or null is
  a missing cell. Each row becomes one raw line (the encoder's ``line``) and the lines are encoded by the
  very ``blocks`` encoder scripts/predict.py runs on files, then scored by predict.py's :func:`predict.score`.
* ``GET /health`` -> ``{"status": "ok", "model": <model class>, "run": <run dir>, "loaded_at": ...,
  "requests": <predict requests answered>}``.
* ``POST /reload`` ``{"run": "<run dir>"}``, and ``--watch PATH`` (a file whose first line, or a symlink whose
  target, names a run dir; relative paths are taken from PATH's folder; polled every second): the new run is
  loaded and checked (its best.pt, its own store and vocabularies, same dataset, raw columns and tasks) and
  scored once while the old one keeps serving; then the (model, encoder) pair is swapped as one reference.
  A request takes that reference once when it starts, so requests in flight finish on the old model. A run
  that fails to load leaves the old one serving (reload: 422 with the reason; watch: logged).

A bad request is a 4xx with ``{"error": "..."}`` naming its bad part (400 bad JSON or row, 404 unknown path,
405 wrong method, 413 too many rows or too large a body); no bad input gets a 500 or a partial answer.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import predict  # noqa: E402
import train  # noqa: E402
from dataset.predict_encode import EncodedBlock, raw_rows  # noqa: E402
from dataset.raw import InputError  # noqa: E402

log = logging.getLogger("serve")
BYTES_PER_ROW = 4096  # request body allowed per row of --max_rows (a Criteo row in JSON is about 900 bytes)
WATCH_SECONDS = 1.0
Start = Callable[[str, list[tuple[str, str]]], Any]


class RequestError(Exception):
    """A client's fault: HTTP ``status`` and a one-line message naming the bad part."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------- the served run


@dataclass(frozen=True)
class Served:
    """Everything one request needs, swapped as one reference: the model, the columns it reads, the store's
    encoder, and where it came from."""

    model: nn.Module
    inputs: train.Inputs
    encoder: Any
    run: str
    name: str
    dataset: str
    loaded_at: str


def load(run_dir: str, scratch: Path) -> Served:
    """A run dir -> its :class:`Served`, checked by predict.py's :func:`predict.load_run` (best.pt intact, its
    store there with the run's schema and vocabularies) and by scoring one all-missing row end to end.
    :class:`predict.PredictError` or :class:`InputError` if it cannot serve."""
    model, inputs, store = predict.load_run(Path(run_dir), None, torch.device("cpu"))
    encoder = raw_rows(store)
    served = Served(model, inputs, encoder, str(run_dir), type(model).__name__, str(store.meta.get("dataset")),
                    datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"))
    probe = score_lines(served, [encoder.line([""] * len(encoder.columns))], scratch)
    if not np.isfinite(probe).all():
        raise predict.PredictError(f"run {run_dir} predicts {probe.tolist()} for an all-missing row; its weights "
                                   f"are not finite: serve another run")
    return served


def check_compatible(old: Served, new: Served) -> None:
    """A hot update must keep the request and response formats: same dataset, raw columns and tasks."""
    if new.dataset != old.dataset:
        raise predict.PredictError(f"run {new.run} was trained on dataset {new.dataset!r}, the service serves "
                                   f"{old.dataset!r}; start another service for it")
    if list(new.encoder.columns) != list(old.encoder.columns) or new.model.tasks != old.model.tasks:
        raise predict.PredictError(f"run {new.run} reads other raw columns or predicts other tasks "
                                   f"({', '.join(new.model.tasks)}) than the served run; start another service")


# ------------------------------------------------------------------------------------------- encoding


def encode_lines(served: Served, lines: list[bytes], scratch: Path) -> list[EncodedBlock]:
    """Raw lines -> their encoded blocks, by the encoder's ``blocks``: the code path of predict.py, which reads
    files, so the lines go through a temporary file in ``scratch`` (memory-backed /dev/shm where there is one)."""
    fd, name = tempfile.mkstemp(suffix=".txt", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(lines))
        return list(served.encoder.blocks(Path(name), False, None))
    finally:
        os.unlink(name)


def score_lines(served: Served, lines: list[bytes], scratch: Path, cells: list[list[str]] | None = None
                ) -> np.ndarray:
    """Raw lines (made of ``cells``, per row in ``columns`` order) -> predictions float64 [n, T] in line order.
    :class:`RequestError` naming the first bad row (0-based) and the fields the encoder rejects."""
    blocks = encode_lines(served, lines, scratch)
    bad = {kind: int(v[0]) for b in blocks for kind, v in b.bad.items() if len(v)}
    if bad:
        kind, line = min(bad.items(), key=lambda kv: kv[1])
        row = cells[line - 1] if cells is not None else None
        raise RequestError(400, bad_row_message(served, row, line - 1, kind, scratch))
    n_tasks = served.model.num_tasks
    preds = np.full((len(lines), n_tasks), np.nan)
    for block in blocks:
        _, p = predict.score(served.model, served.inputs, block, max(len(block.lines), 1), torch.device("cpu"))
        preds[block.lines - 1] = p
    if sum(len(b.lines) for b in blocks) != len(lines) or np.isnan(preds).any():
        raise RuntimeError(f"the encoder returned {sum(len(b.lines) for b in blocks)} rows for {len(lines)} lines")
    return preds


def bad_row_message(served: Served, cells: list[str] | None, index: int, kind: str, scratch: Path) -> str:
    """Which field of a rejected row is bad: each of its non-empty cells alone (the others missing) goes
    through the encoder again; the ones it rejects are named (with the encoder's reason for the row)."""
    columns = list(served.encoder.columns)
    reason = served.encoder.reason(kind, False)
    if cells is None:
        return f"rows[{index}]: rejected by the {served.dataset} encoder: {reason}"
    probes = [(name, cell) for name, cell in zip(columns, cells) if cell]
    lines = [served.encoder.line([cell if c == name else "" for c in columns]) for name, cell in probes]
    blocks = encode_lines(served, lines, scratch)
    rejected = sorted({int(x) - 1 for b in blocks for v in b.bad.values() for x in v})
    named = ", ".join(f"rows[{index}].{probes[i][0]} = {probes[i][1]!r}" for i in rejected)
    return f"{named or f'rows[{index}]'}: rejected by the {served.dataset} encoder: {reason}"


def raw_cell(value: Any, where: str) -> str:
    """A JSON value -> the raw cell text: a string as is, an integer (or an integral float) in decimal, a
    float by its repr (the encoder then decides), "" or null -> "" (missing)."""
    if value is None:
        return ""
    if isinstance(value, str):
        if value and not value.isprintable():
            raise RequestError(400, f"{where}: {value!r} holds a control character; send the raw value as text")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"{where}: a {type(value).__name__ if not isinstance(value, bool) else 'boolean'}"
                                f" ({json.dumps(value)[:40]}); send a string or a number, or \"\" / null if missing")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def request_lines(served: Served, body: Any, max_rows: int) -> tuple[list[bytes], list[list[str]]]:
    """A parsed /predict body -> one raw line per row and its cells, checked: rows a list of objects of known
    fields with string, number or null values."""
    if not isinstance(body, dict) or "rows" not in body:
        raise RequestError(400, 'the body must be a JSON object with "rows": a list of row objects, e.g. '
                                '{"rows": [{"I1": "3", "C1": "68fd1e64"}]}')
    extra = sorted(set(body) - {"rows"})
    if extra:
        raise RequestError(400, f"unknown key {extra[0]!r} in the body; it takes only \"rows\"")
    rows = body["rows"]
    if not isinstance(rows, list):
        raise RequestError(400, f'"rows" must be a list of row objects, got a {type(rows).__name__}')
    if len(rows) > max_rows:
        raise RequestError(413, f'{len(rows)} rows in one request; at most {max_rows} (--max_rows): split it')
    columns = list(served.encoder.columns)
    known = set(columns)
    lines, table = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(400, f"rows[{i}] is a {type(row).__name__}, not an object of field: value")
        if isinstance(row, Pairs) and row.repeated:
            raise RequestError(400, f"rows[{i}]: field {row.repeated[0]!r} is given twice")
        unknown = sorted(set(row) - known)
        if unknown:
            raise RequestError(400, f"rows[{i}]: unknown field {unknown[0]!r}; the fields of a {served.dataset} "
                                    f"row are {', '.join(columns)}")
        cells = [raw_cell(row.get(c), f"rows[{i}].{c}") for c in columns]
        try:
            lines.append(served.encoder.line(cells))
        except InputError as e:
            raise RequestError(400, f"rows[{i}].{e}") from None
        table.append(cells)
    return lines, table


class Pairs(dict):
    """A JSON object that remembers keys given more than once (json keeps the last silently)."""

    repeated: list[str]

    @classmethod
    def hook(cls, pairs: list[tuple[str, Any]]) -> "Pairs":
        out = cls(pairs)
        out.repeated = [k for k in dict.fromkeys(k for k, _ in pairs) if sum(1 for kk, _ in pairs if kk == k) > 1] \
            if len(out) != len(pairs) else []
        return out


# ------------------------------------------------------------------------------------------- the app


class App:
    """The WSGI app: routes, the served reference, hot updates."""

    def __init__(self, served: Served, max_rows: int, scratch: Path) -> None:
        self.served = served  # read once per request; replaced whole by a reload
        self.max_rows = max_rows
        self.scratch = scratch
        self.reload_lock = threading.Lock()
        self.count_lock = threading.Lock()
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start: Start) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        routes = {"/predict": ("POST", self.predict), "/health": ("GET", self.health),
                  "/reload": ("POST", self.reload)}
        try:
            if path not in routes:
                raise RequestError(404, f"no path {path}; use POST /predict, GET /health or POST /reload")
            allowed, handler = routes[path]
            if method != allowed:
                start("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", allowed)])
                return [json.dumps({"error": f"{method} {path}: use {allowed} {path}"}).encode()]
            status, payload = handler(environ)
        except RequestError as e:
            status, payload = e.status, {"error": str(e)}
        except Exception as e:  # a bug, not the client's fault: say so, keep serving
            log.exception("internal error on %s %s", method, path)
            status, payload = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        body = json.dumps(payload).encode()
        start(f"{status} {STATUS[status]}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def body(self, environ: dict[str, Any], limit: int) -> Any:
        """The request's JSON body, read up to ``limit`` bytes."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise RequestError(400, "bad Content-Length header") from None
        if length > limit:
            raise RequestError(413, f"body of {length} bytes; at most {limit} ({BYTES_PER_ROW} per row of "
                                    f"--max_rows)")
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            return json.loads(raw, object_pairs_hook=Pairs.hook)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON: {e}") from None

    def predict(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        served = self.served  # the one reference this request uses, whatever reloads meanwhile
        lines, cells = request_lines(served, self.body(environ, BYTES_PER_ROW * self.max_rows + 65536),
                                     self.max_rows)
        preds = score_lines(served, lines, self.scratch, cells) if lines else np.zeros((0, served.model.num_tasks))
        tasks = served.model.tasks
        with self.count_lock:
            self.requests += 1
        return 200, {"predictions": [dict(zip(tasks, map(float, row))) for row in preds], "model": served.run,
                     "loaded_at": served.loaded_at}

    def health(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        served = self.served
        return 200, {"status": "ok", "model": served.name, "run": served.run, "loaded_at": served.loaded_at,
                     "requests": self.requests}

    def reload(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = self.body(environ, 65536)
        if not isinstance(body, dict) or not isinstance(body.get("run"), str) or not body["run"]:
            raise RequestError(400, 'the body must be {"run": "<run dir>"}')
        try:
            served = self.swap(body["run"])
        except (predict.PredictError, InputError) as e:
            raise RequestError(422, f"run {body['run']} not loaded, still serving {self.served.run}: {e}") from None
        return 200, {"status": "ok", "model": served.name, "run": served.run, "loaded_at": served.loaded_at}

    def swap(self, run_dir: str) -> Served:
        """Load and check ``run_dir`` while the current run serves, then make it the served one."""
        with self.reload_lock:
            new = load(run_dir, self.scratch)
            check_compatible(self.served, new)
            self.served = new  # one assignment: a request sees the old pair or the new one, never a mix
        log.info("serving %s (%s), loaded at %s", new.run, new.name, new.loaded_at)
        return new


STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
          422: "Unprocessable Entity", 500: "Internal Server Error"}


# ------------------------------------------------------------------------------------------- --watch


def watched_run(path: Path) -> str | None:
    """The run dir ``path`` names now: a symlink's target, or a file's first line (relative to its folder);
    None if it is not there."""
    try:
        if path.is_symlink():
            return str((path.parent / os.readlink(path)).resolve())
        text = path.read_text().strip().splitlines()
    except OSError:
        return None
    return str((path.parent / text[0].strip()).resolve()) if text else None


def watch(app: App, path: Path, stop: threading.Event) -> None:
    """Poll ``path`` every second; when it names another run (or is rewritten after a failure), swap to it.
    A failed load is logged and the served run stays."""
    seen: tuple[str, int] | None = None
    while not stop.wait(WATCH_SECONDS):
        run = watched_run(path)
        try:
            stamp = path.lstat().st_mtime_ns
        except OSError:
            continue
        if run is None or (run, stamp) == seen or run == str(Path(app.served.run).resolve()):
            continue
        seen = (run, stamp)
        log.info("--watch %s names %s: loading it", path, run)
        try:
            app.swap(run)
        except (predict.PredictError, InputError) as e:
            log.error("--watch %s: run %s not loaded, still serving %s: %s", path, run, app.served.run, e)
        except Exception:  # keep watching whatever happens
            log.exception("--watch %s: run %s not loaded", path, run)


# ------------------------------------------------------------------------------------------- main


def torch_threads(server_threads: int, given: int | None) -> int:
    """Intra-op threads per model call: --torch_threads, or OMP_NUM_THREADS, or the cores shared by the
    server's threads (each request runs its model call on its own thread)."""
    if given is not None:
        return given
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // server_threads)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run dir of train.py (checkpoints/<Model>/<timestamp>), served by its best.pt")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--threads", type=int, default=4, help="request threads of the server")
    p.add_argument("--torch_threads", type=int, default=None,
                   help="intra-op threads per model call (default: OMP_NUM_THREADS, else cores / --threads)")
    p.add_argument("--max_rows", type=int, default=4096, help="most rows in one /predict request (more: 413)")
    p.add_argument("--watch", default=None, help="a file (its first line) or symlink (its target) naming the run "
                                                 "dir to serve; polled every second, a change is a hot update")
    args = p.parse_args(argv)
    for flag in ("threads", "max_rows"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.torch_threads is not None and args.torch_threads < 1:
        p.error(f"--torch_threads must be >= 1, got {args.torch_threads}")
    if not 0 <= args.port < 65536:
        p.error(f"--port must be in 0..65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve.py: %(message)s", stream=sys.stderr)
    torch.set_num_threads(torch_threads(args.threads, args.torch_threads))
    import waitress  # here, so that --help and the module's tests need no server

    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="serve-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    stop = threading.Event()
    try:
        try:
            app = App(load(args.run_dir, scratch), args.max_rows, scratch)
        except (predict.PredictError, InputError) as e:
            print(f"serve.py: error: {e}", file=sys.stderr)
            return 1
        try:
            server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads,
                                            max_request_body_size=2 * (BYTES_PER_ROW * args.max_rows + 65536))
        except OSError as e:
            print(f"serve.py: error: cannot listen on {args.host}:{args.port}: {e.strerror}; pass another "
                  f"--port (or 0 for any free one)", file=sys.stderr)
            return 1
        if args.watch:
            threading.Thread(target=watch, args=(app, Path(args.watch), stop), daemon=True, name="watch").start()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        log.info("serving %s (%s) on http://%s:%d with %d threads, torch threads %d", app.served.run,
                 app.served.name, args.host, server.effective_port, args.threads, torch.get_num_threads())
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        return 0
    finally:
        stop.set()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
