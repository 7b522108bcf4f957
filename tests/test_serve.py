"""scripts/serve.py as a real server process on 127.0.0.1: predictions equal scripts/predict.py's for the same
real Criteo rows, every bad request is a 4xx naming its bad part, and a hot reload under concurrent load fails
no request and mixes no models."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

import train
from conftest import ROOT, SHARED_DATA
from dataset.criteo import CAT_FIELDS, INT_FIELDS, preprocess_criteo

sys.path.insert(0, str(ROOT / "scripts"))
import predict  # noqa: E402

HEAD = SHARED_DATA / "criteo" / "head8k.txt"
FIELDS = [*INT_FIELDS, *CAT_FIELDS]
N_ROWS = 200


def train_run(store: Path, out: Path, seed: int) -> Path:
    argv = ["--model", "DeepFM", "--hidden_units", "16", "--embed_size", "4", "--data", str(store), "--max_steps",
            "5", "--batch_size", "256", "--gpu_ids", "", "--num_workers", "0", "--seed", str(seed),
            "--model_save_dir", str(out)]
    assert train.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("serve")
    store = work / "criteo"
    preprocess_criteo(HEAD, store, min_count=2, progress=False)
    return train_run(store, work / "run_a", 1), train_run(store, work / "run_b", 2)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """The first N_ROWS real rows without their click, as a test.txt file and as JSON rows (empty cells left out,
    so a missing key is exercised too)."""
    lines = [line.split(b"\t", 1)[1] for line in HEAD.read_bytes().splitlines(keepends=True)[:N_ROWS]]
    path = tmp_path_factory.mktemp("serve") / "test.txt"
    path.write_bytes(b"".join(lines))
    rows = [{k: v for k, v in zip(FIELDS, line.decode().rstrip("\n").split("\t")) if v} for line in lines]
    return path, rows


def predictions_of(run: Path, path: Path, out: Path) -> list[float]:
    predict.predict_file(run, path, out, progress=False)
    return [float(line.split("\t")[1]) for line in out.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def expected(runs, raw, tmp_path_factory) -> dict[str, list[float]]:
    """predict.py's click probability of each row, per run dir."""
    work = tmp_path_factory.mktemp("serve")
    return {str(run): predictions_of(run, raw[0], work / f"{run.name}.tsv") for run in runs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, path: str, body: Any = None, method: str | None = None, raw_body: bytes | None = None,
         timeout: float = 30) -> tuple[int, dict[str, Any]]:
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_server(run: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), str(run), "--port", str(port),
                             *flags], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve.py exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if call(port, "/health", timeout=1)[0] == 200:
                return proc, port
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("serve.py did not answer /health within 60 s")


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.fixture(scope="module")
def server(runs) -> Iterator[int]:
    proc, port = start_server(runs[0], "--max_rows", "300")
    try:
        yield port
    finally:
        stop_server(proc)


def test_a_batch_gets_predict_pys_predictions_in_order(server, runs, raw, expected):
    status, out = call(server, "/predict", {"rows": raw[1]})
    assert status == 200 and out["model"] == str(runs[0]) and out["loaded_at"]
    got = [p["click"] for p in out["predictions"]]
    assert got == pytest.approx(expected[str(runs[0])], abs=1e-6)


def test_a_single_row_numbers_and_nulls(server, runs, raw, expected):
    row = dict(raw[1][7])
    row["I1"] = int(row["I1"]) if "I1" in row else None  # a number is its decimal text; null is missing
    status, out = call(server, "/predict", {"rows": [row]})
    assert status == 200 and out["predictions"][0]["click"] == pytest.approx(expected[str(runs[0])][7], abs=1e-6)
    status, health = call(server, "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "DeepFM"
    assert health["run"] == str(runs[0]) and health["requests"] >= 1


@pytest.mark.parametrize("request_, status, words", [
    ({"raw_body": b'{"rows": [{"I1": "3"'}, 400, ["not valid JSON"]),
    ({"body": {"rowz": []}}, 400, ['"rows"']),
    ({"body": {"rows": {"I1": "3"}}}, 400, ['"rows" must be a list']),
    ({"body": {"rows": [{"I1": "3"}, ["3"]]}}, 400, ["rows[1]", "not an object"]),
    ({"body": {"rows": [{"I1": "3"}, {"I99": "3"}]}}, 400, ["rows[1]", "unknown field 'I99'"]),
    ({"body": {"rows": [{"C3": ["68fd1e64"]}]}}, 400, ["rows[0].C3", "list"]),
    ({"body": {"rows": [{"C3": True}]}}, 400, ["rows[0].C3", "boolean"]),
    ({"body": {"rows": [{"C3": "68fd\t1e64"}]}}, 400, ["rows[0].C3", "control character"]),
    ({"body": {"rows": [{"I1": "3"}, {"I1": "1", "I2": "x7", "C1": "68fd1e64"}]}}, 400,
     ["rows[1].I2 = 'x7'", "not an integer"]),
    ({"body": {"rows": [{"C5": "68FD1E64"}]}}, 400, ["rows[0].C5 = '68FD1E64'", "8 lowercase hex"]),
    ({"body": {"rows": [{"I4": 3.5}]}}, 400, ["rows[0].I4 = '3.5'"]),
    ({"raw_body": b'{"rows": [{"I1": "3", "I1": "4"}]}'}, 400, ["rows[0]", "'I1' is given twice"]),
    ({"body": {"rows": [{}] * 301}}, 413, ["301 rows", "--max_rows"]),
    ({"body": None, "method": "GET"}, 405, ["use POST /predict"]),
])
def test_bad_requests_get_a_4xx_naming_the_bad_part(server, request_, status, words):
    got, out = call(server, "/predict", **request_)
    assert got == status, out
    assert all(w in out["error"] for w in words), out["error"]


def test_unknown_path_and_wrong_methods(server):
    assert call(server, "/nothing")[0] == 404
    assert call(server, "/health", {"x": 1})[0] == 405
    assert call(server, "/reload", method="GET")[0] == 405
    assert call(server, "/reload", {"runs": "x"})[0] == 400


def test_a_failed_reload_keeps_the_served_run(server, runs, raw, expected, tmp_path):
    status, out = call(server, "/reload", {"run": str(tmp_path / "no_such_run")})
    assert status == 422 and "no_such_run" in out["error"] and "does not exist" in out["error"]
    status, out = call(server, "/predict", {"rows": raw[1][:3]})
    assert out["model"] == str(runs[0])
    assert [p["click"] for p in out["predictions"]] == pytest.approx(expected[str(runs[0])][:3], abs=1e-6)


def answers_of(port: int, rows: list[dict[str, str]], batches: range, run: str) -> dict[int, list[float]]:
    """The service's answer to each batch of 8 rows, which must come from ``run``."""
    table = {}
    for lo in batches:
        status, out = call(port, "/predict", {"rows": rows[lo:lo + 8]})
        assert status == 200 and out["model"] == run
        table[lo] = [p["click"] for p in out["predictions"]]
    return table


@pytest.mark.slow
def test_hot_swap_under_load_fails_nothing_and_mixes_nothing(runs, raw, expected):
    """Client threads post batches without pause while /reload switches run A -> B: every request succeeds,
    every answer is exactly the answering run's prediction of its rows (never a mix), and every request sent
    after the reload returned is answered by B."""
    proc, port = start_server(runs[0], "--threads", "4")
    a, b = str(runs[0]), str(runs[1])
    batches = range(0, N_ROWS, 8)  # fixed batches: a row's float result depends on its batch's shape
    served: dict[str, dict[int, list[float]]] = {}  # run -> first row -> the service's answer to that batch
    stop = threading.Event()
    answers: list[tuple[int, float, str, list[float]]] = []  # (first row, sent at, model, predictions)
    failures: list[str] = []

    def client(k: int) -> None:
        i = k * 7
        while not stop.is_set():
            lo = batches[i % len(batches)]
            sent = time.monotonic()
            try:
                status, out = call(port, "/predict", {"rows": raw[1][lo:lo + 8]})
            except Exception as e:  # noqa: BLE001 - any failure counts
                failures.append(repr(e))
                continue
            if status != 200:
                failures.append(f"{status} {out}")
                continue
            answers.append((lo, sent, out["model"], [p["click"] for p in out["predictions"]]))
            i += 1

    try:
        served[a] = answers_of(port, raw[1], batches, a)
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert call(port, "/reload", {"run": b})[0] == 200
        reloaded = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        served[b] = answers_of(port, raw[1], batches, b)
    finally:
        stop.set()
        stop_server(proc)
    assert not failures, failures[:3]
    assert {m for _, _, m, _ in answers} == {a, b}
    for model, table in served.items():
        assert sum(table.values(), []) == pytest.approx(expected[model], abs=1e-6)
    for lo, sent, model, preds in answers:
        assert preds == served[model][lo]
        if sent > reloaded:
            assert model == b


@pytest.mark.slow
def test_watch_follows_a_pointer_file_and_survives_a_bad_one(runs, raw, tmp_path):
    pointer = tmp_path / "current"
    pointer.write_text(f"{runs[0]}\n")
    proc, port = start_server(runs[0], "--watch", str(pointer))
    try:
        pointer.write_text("no_such_run\n")
        time.sleep(2.5)
        assert call(port, "/health")[1]["run"] == str(runs[0])
        pointer.write_text(f"{runs[1]}\n")
        deadline = time.monotonic() + 20
        while call(port, "/health")[1]["run"] != str(runs[1]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert call(port, "/predict", {"rows": raw[1][:2]})[1]["model"] == str(runs[1])
    finally:
        err = stop_server(proc)
    assert "no_such_run" in err and "not loaded" in err
