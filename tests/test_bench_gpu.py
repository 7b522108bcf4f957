"""scripts/bench_gpu.py on a CPU: the per-phase split of train.py's step, its table and files, and what it refuses.
On the lent GPU, ../shared/gpu/check.sh runs it for real."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from test_train import write_store

sys.path.insert(0, str(ROOT / "scripts"))

import bench_gpu  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("store") / "s")


def test_cpu_phase_clock_gives_the_ms_between_marks():
    clock = bench_gpu.PhaseClock(torch.device("cpu"))
    for _ in range(2):
        clock.start_step()
        time.sleep(0.002)
        clock.mark()
        clock.mark()
    durations = clock.durations()
    assert len(durations) == 2 and all(len(d) == 2 for d in durations)
    assert all(d[0] >= 2.0 and 0 <= d[1] < d[0] for d in durations)


def test_rows_per_model_batch_and_mode_with_phases_that_fit_in_the_step(store: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    argv = ["--data", str(store), "--device", "cpu", "--models", "DeepFM", "LR", "--batch-sizes", "64", "100",
            "--modes", "eager", "cudagraphs", "--steps", "30", "--warmup", "2", "--out", str(tmp_path / "out")]
    assert bench_gpu.main(argv) == 0  # 1600 train rows: 30 steps of 100 run into a second epoch
    text = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "bench_gpu.json").read_text())["results"]
    assert [(r["model"], r["batch"], r["mode"]) for r in results] == [
        (m, b, mode) for m in ("DeepFM", "LR") for b in (64, 100) for mode in ("eager", "cudagraphs")]
    for r in results:
        if r["mode"] == "cudagraphs":
            assert r["error"] == "skipped: CUDA graphs need CUDA"
            continue
        phases = r["phase_ms"]
        assert set(phases) == set(bench_gpu.PHASES) and all(v > 0 for v in phases.values())
        assert sum(phases.values()) <= r["step_ms"] * 1.05  # medians of parts of the steps whose mean is step_ms
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["step_ms"] * 1000)
        assert re.search(rf"^\| {r['model']} \| {r['batch']} \| eager \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| ",
                         text, re.M)
    assert (tmp_path / "out" / "bench_gpu.md").read_text().count("| DeepFM |") == 4


def test_a_model_that_fails_is_its_row_and_the_exit_status(store: Path, capsys: pytest.CaptureFixture):
    argv = ["--data", str(store), "--device", "cpu", "--models", "NoSuchModel", "DeepFM", "--batch-sizes", "64",
            "--modes", "eager", "--steps", "2", "--warmup", "1"]
    assert bench_gpu.main(argv) == 1
    text = capsys.readouterr().out
    assert re.search(r"^\| NoSuchModel \| 64 \| eager \|.*failed: ", text, re.M)
    assert re.search(r"^\| DeepFM \| 64 \| eager \| [\d.]+ \|", text, re.M)


def test_cuda_without_a_device_is_one_line(store: Path, capsys: pytest.CaptureFixture):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench_gpu.main(["--data", str(store), "--device", "cuda"]) == 2
    assert "torch sees no CUDA device; pass --device cpu" in capsys.readouterr().err


def test_earlier_results_in_out_are_kept_without_overwrite(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "bench_gpu.md").write_text("mine")
    argv = ["--data", str(store), "--device", "cpu", "--models", "LR", "--batch-sizes", "64", "--modes", "eager",
            "--steps", "1", "--warmup", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        bench_gpu.main(argv)
    assert "already holds bench_gpu.md; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "bench_gpu.md").read_text() == "mine" and not (tmp_path / "bench_gpu.json").exists()
    assert bench_gpu.main([*argv, "--overwrite"]) == 0
    assert "| LR | 64 | eager |" in (tmp_path / "bench_gpu.md").read_text()
