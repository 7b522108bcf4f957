"""scripts/bench_models_vs.py: the size table, our side's timing, the summary (fast); --quick end to end against
DeepCTR-Torch (slow, skipped where its venv is absent: CI has none and must not build one)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_models_vs as vs  # noqa: E402
import models  # noqa: E402

# The models of the brief's list that DeepCTR-Torch 0.3.0 has (it has no FNN); DCNMix is our DCNv2.
SHARED = {"CCPM", "PNN", "WDL", "DeepFM", "MLR", "NFM", "AFM", "DCN", "DCNv2", "xDeepFM", "AutoInt", "ONN",
          "FiBiNET", "IFM", "DIFM", "AFN"}
OFF = {"dropout": 0.0, "batch_norm": False, "bi_batch_norm": False}
DEEPCTR_PYTHON = Path("/tmp/deepctr-venv/bin/python")


def test_table_covers_every_shared_model_at_equal_sizes():
    assert set(vs.PAIRS) == SHARED
    for name, pair in vs.PAIRS.items():
        takes = models.model_hparams(models.get_model_class(name))
        assert set(pair.ours) <= set(takes), name
        assert vs.size_mismatches(pair) == [], name
        for key, off in OFF.items():  # every regularizer our model has is set off explicitly
            if key in takes:
                assert pair.ours.get(key) == off, (name, key)
        for key in ("hidden_units", "num_cross_layers", "cin_layer_sizes", "attention_layers", "num_heads",
                    "logarithmic_neurons", "channels", "region_num", "attention_dim"):
            if key in pair.ours and not (name == "AutoInt" and key == "attention_dim"):  # see the docstring
                assert key in dict(pair.same), (name, key)  # a size of ours with no counterpart is not compared


def test_size_mismatches_names_each_differing_size():
    pair = dataclasses.replace(vs.PAIRS["DCN"], theirs={**vs.PAIRS["DCN"].theirs, "cross_num": 2})
    assert vs.size_mismatches(pair) == ["num_cross_layers=4 vs cross_num=2"]
    assert vs.size_mismatches(vs.PAIRS["FiBiNET"]) == []  # field_interaction is DeepCTR-Torch's "interaction"


def test_our_side_times_a_tiny_model(tmp_path):
    npz = tmp_path / "batch.npz"
    vs.write_batch(npz, 32)
    with np.load(npz) as data:
        assert data["sparse"].shape == (32, vs.FIELDS) and data["sparse"].max() < vs.VOCAB
    out = vs.ours(str(npz), "DeepFM", {"hidden_units": (8,)}, 16, 0, 1)
    assert out["rows"] == 16 and out["samples_per_s"] > 0 and out["torch_threads"] == 1
    assert out["params"] == vs.FIELDS * vs.VOCAB * (vs.EMBED_DIM + 1) + 1 + (vs.FIELDS * vs.EMBED_DIM * 8 + 8) + 9


def test_summary_flags_ours_under_half_of_the_baseline():
    def side(*rates):
        return [{"samples_per_s": r, "params": 10, "rows": 64} for r in rates]
    slow = vs.summarize({"ours": side(40.0, 45.0, 60.0), "deepctr": side(100.0)})
    assert slow["ours"] == 45.0 and slow["ratio"] == 0.45 and slow["flagged"]
    fine = vs.summarize({"ours": side(50.0), "deepctr": side(100.0) + [{"error": "RuntimeError: once"}]})
    assert fine["ratio"] == 0.5 and not fine["flagged"] and fine["errors"] == ["RuntimeError: once"]
    failed = vs.summarize({"ours": side(50.0), "deepctr": [{"error": "RuntimeError: boom"}]})
    assert failed["ratio"] is None and not failed["flagged"] and failed["errors"] == ["RuntimeError: boom"]


def test_bad_arguments_are_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        vs.parse_args(["--models", "DeepFM,FwFM"])
    assert "FwFM: pass all or names both libraries have" in capsys.readouterr().err
    existing = tmp_path / "out.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit):
        vs.parse_args(["--json", str(existing)])
    assert "pass --overwrite" in capsys.readouterr().err
    assert vs.parse_args(["--json", str(existing), "--overwrite", "--models", "dcnv2"]).models == ["DCNv2"]
    quick = vs.parse_args(["--quick"])
    assert (quick.batch, quick.steps, quick.models) == (256, 1, list(vs.QUICK_MODELS))


@pytest.mark.slow
def test_quick_run_against_deepctr_torch(tmp_path):
    probe = [str(DEEPCTR_PYTHON), "-c", "import importlib.metadata as m; print(m.version('deepctr-torch'))"]
    version = subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip() \
        if DEEPCTR_PYTHON.exists() else None
    if version != "0.3.0":
        pytest.skip(f"no DeepCTR-Torch 0.3.0 venv at {DEEPCTR_PYTHON.parent.parent} (made by scripts/bench_train.py's "
                    f"baseline_venv; not built in tests)")
    out = tmp_path / "vs.json"
    done = subprocess.run([sys.executable, "scripts/bench_models_vs.py", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, check=False,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["summary"]) == set(vs.QUICK_MODELS)
    for name, s in results["summary"].items():
        assert s["ours"] > 0 and s["deepctr"] > 0 and s["errors"] == [], name
        assert s["ratio"] == pytest.approx(s["ours"] / s["deepctr"])
        ours, theirs = s["params"]["ours"], s["params"]["deepctr"]
        assert abs(ours - theirs) <= 2, (name, ours, theirs)  # equal sizes: the same parameters, up to a bias
    assert "| DeepFM | 256 |" in done.stdout
