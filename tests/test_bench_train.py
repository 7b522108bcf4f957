"""scripts/bench_train.py: its summaries and table (fast), and a tiny run of our side and the ceiling (slow)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_train  # noqa: E402


def test_steady_rate_drops_the_first_window():
    assert bench_train.steady([1.0, 10.0, 20.0, 30.0]) == 20.0
    assert bench_train.steady([5.0]) == 5.0 and bench_train.steady([]) is None


def test_summary_takes_medians_over_repeats_and_ratios_skip_what_failed():
    runs = [{"wall_s": 10.0, "window_samples_per_s": [1, 100, 100], "test_auc": 0.7},
            {"wall_s": 12.0, "window_samples_per_s": [1, 300], "test_auc": 0.7},
            {"error": "RuntimeError: boom"}]
    assert bench_train.summarize(runs) == {"wall_s": 11.0, "samples_per_s": 200.0, "test_auc": 0.7, "repeats_ok": 2,
                                           "torch_threads": None}
    summary = {"ours, chunks": {"wall_s": 10.0, "samples_per_s": 90.0},
               "ours, resident": {"wall_s": 8.0, "samples_per_s": 95.0},
               "DeepCTR-Torch": {"error": "skipped (--skip-baseline)"},
               "MLP ceiling": {"wall_s": None, "samples_per_s": 100.0},
               "MLP ceiling, input gradient": {"error": "RuntimeError: boom"}}
    assert bench_train.ratios(summary) == {
        "wall: DeepCTR-Torch / ours, chunks": None, "wall: DeepCTR-Torch / ours, resident": None,
        "samples/s: ours, chunks / MLP ceiling": 0.9, "samples/s: ours, chunks / MLP ceiling, input gradient": None,
        "samples/s: ours, resident / MLP ceiling": 0.95,
        "samples/s: ours, resident / MLP ceiling, input gradient": None}
    # --compile: a compiled run of ours against every ceiling, a compiled ceiling only against it
    summary |= {"DeepCTR-Torch": {"wall_s": 20.0}, "ours, resident, compiled": {"wall_s": 16.0, "samples_per_s": 99.0},
                "MLP ceiling, input gradient, compiled": {"samples_per_s": 110.0}}
    got = bench_train.ratios(summary)
    assert got["wall: DeepCTR-Torch / ours, chunks"] == 2.0 and got["wall: DeepCTR-Torch / ours, resident, compiled"] == 1.25
    assert got["samples/s: ours, resident, compiled / MLP ceiling"] == 0.99
    assert got["samples/s: ours, resident, compiled / MLP ceiling, input gradient, compiled"] == 0.9
    assert not any(k.startswith("samples/s: ours, chunks / ") and k.endswith("compiled") for k in got)


def _ratio(text: str, name: str) -> str:
    return re.search(rf"^\| {re.escape(name)} \| (.*) \|$", text, re.M).group(1)


@pytest.mark.slow
def test_a_tiny_run_without_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Our two data paths and the ceiling on 20,000 rows (about 40 s here: three fresh processes)."""
    assert bench_train.main(["--rows", "20000", "--skip-baseline", "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    for name in ("ours, chunks", "ours, resident", *bench_train.CEILINGS):
        row = re.search(rf"^\| {name} \| (\d+) \| (.*?) \| ([\d,]+) \| (.*?) \|$", text, re.M)
        assert row, f"no row for {name} in:\n{text}"
        assert int(row.group(3).replace(",", "")) > 0
        if name.startswith("ours"):
            assert float(row.group(2)) > 0 and 0.4 < float(row.group(4)) < 1
    assert "| DeepCTR-Torch |  | skipped (--skip-baseline) |  |  |" in text
    for path in ("chunks", "resident"):
        for ceiling in bench_train.CEILINGS:
            assert float(_ratio(text, f"samples/s: ours, {path} / {ceiling}")) > 0
        assert _ratio(text, f"wall: DeepCTR-Torch / ours, {path}") == "n/a"
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["dnn_input_width"] == 39 * 16 and 15_000 < results["train_rows"] < 17_000  # 8:1:1
    assert "--data_path resident" in results["commands"]["ours, resident"]


def test_an_existing_baseline_venv_path_without_deepctr_is_refused_and_kept(tmp_path: Path):
    mine = tmp_path / "myenv"
    (mine / "bin").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="exists and is not a venv with deepctr-torch==0.3.0"):
        bench_train.baseline_venv(mine)
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["bin", "notes.txt"]
