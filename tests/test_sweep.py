"""scripts/sweep.py (grids of train.py runs, resumable), results.py (mean ± std per configuration) and plot.py.

The sweeps run real train.py subprocesses on a 2,000-row store of the real Criteo rows (LR and FM, embedding
4, 2 epochs of 13 steps). A train.py process costs 7-17 s on this machine (mostly imports), so
the 8-run grid and the kill-and-restart test are marked slow; the failing-run sweep (2 runs) is not.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / "scripts"))

import plot  # noqa: E402
import results  # noqa: E402
import sweep  # noqa: E402

TINY = {"epochs": 2, "batch_size": 128, "num_workers": 0, "embed_size": 4}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from dataset.criteo import preprocess_criteo

    work = tmp_path_factory.mktemp("sweep_store")
    rows = work / "criteo2k.txt"
    with open(SHARED_DATA / "criteo" / "head8k.txt", "rb") as f:
        rows.write_bytes(b"".join(f.readline() for _ in range(2000)))
    preprocess_criteo(rows, work / "store", min_count=2, chunk_size=256, progress=False)
    return work / "store"


def toml_value(v) -> str:
    return json.dumps(v)  # numbers, strings, booleans and flat lists read the same in TOML


def write_spec(path: Path, store: Path | str, models: list[str], grid: dict, seeds: list[int],
               fixed: dict | None = None, extra: str = "") -> Path:
    lines = [f"data = {toml_value(str(store))}", f"models = {toml_value(models)}", f"seeds = {toml_value(seeds)}",
             "[fixed]", *(f"{k} = {toml_value(v)}" for k, v in {**TINY, **(fixed or {})}.items() if k not in grid),
             "[grid]", *(f"{k} = {toml_value(v)}" for k, v in grid.items()), extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def sweep_cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(spec), "--out", str(out), *extra]


def run_sweep(spec: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(spec, out, *extra), capture_output=True, text=True, timeout=600)


def test_metrics(out: Path) -> dict[str, dict]:
    """Run name -> metrics.json test results of every finished run below ``out``."""
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())["test"] for p in out.rglob("metrics.json")}


test_metrics.__test__ = False  # a helper, not a test


# -- the spec --------------------------------------------------------------------------------------------------


def test_plan_names_runs_by_their_grid_values_and_applies_hyperparameters_to_the_models_that_take_them(tmp_path):
    spec = write_spec(tmp_path / "s.toml", "/data/store", ["LR", "DeepFM"], {"lr": [0.01, 0.001],
                      "hidden_units": [[8], [8, 8]]}, [1, 2],
                      extra='[model.DeepFM]\nfixed = { dropout = 0.1 }')
    runs = sweep.plan(sweep.load_spec(spec))
    names = [r.name for r in runs]
    assert names[:4] == ["LR/lr=0.01/seed=1", "LR/lr=0.01/seed=2", "LR/lr=0.001/seed=1", "LR/lr=0.001/seed=2"]
    assert "DeepFM/lr=0.01,hidden_units=8-8/seed=2" in names
    assert len(runs) == 4 + 8 and len(set(names)) == len(names)
    lr_run = runs[0]
    assert "hidden_units" not in lr_run.flags and lr_run.flags["lr"] == 0.01 and lr_run.seed == 1
    deep = next(r for r in runs if r.name == "DeepFM/lr=0.01,hidden_units=8-8/seed=2")
    assert deep.flags == {"epochs": 2, "batch_size": 128, "num_workers": 0, "embed_size": 4, "dropout": 0.1,
                          "lr": 0.01, "hidden_units": (8, 8)}
    argv = sweep.new_argv(deep, tmp_path / deep.name, ["--gpu_ids", "3"], {"amp"})
    assert argv[argv.index("--hidden_units") + 1:argv.index("--hidden_units") + 3] == ["8", "8"]
    assert argv[-4:] == ["--gpu_ids", "3", "--model_save_dir", str(tmp_path / deep.name)]


def test_long_grid_names_are_cut_with_a_hash_and_stay_distinct():
    a = sweep.run_name("DCN", [("hidden_units", (1000,) * 30)], 1)
    b = sweep.run_name("DCN", [("hidden_units", (1000,) * 31)], 1)
    assert a != b and len(a.split("/")[1]) == sweep.NAME_LIMIT and a.endswith("/seed=1")


@pytest.mark.parametrize("body, message", [
    ('data = "s"\nmodels = ["LR"]\nbogus = 1', "unknown key"),
    ('data = "s"\nmodels = ["LR"]\n[grid]\nlr = 0.1', "non-empty list"),
    ('data = "s"\nmodels = ["LR"]\n[fixed]\nnot_a_flag = 1', "neither a train.py flag"),
    ('data = "s"\nmodels = ["LR"]\n[fixed]\nseed = 1', "set by the sweep"),
    ('data = "s"\nmodels = ["LR"]\n[model.LR]\nfixed = { hidden_units = [8] }', "neither a train.py flag nor a LR"),
    ('data = "s"\nmodels = ["NoSuchModel"]', "models:"),
    ('data = "s"\nmodels = ["DCN"]\npreset = "DeepFM_criteo_x4_001"', "is a DeepFM configuration"),
    ('data = "s"\nmodels = ["LR"]\nseeds = [1, 1]', "distinct"),
])
def test_bad_specs_are_one_line_errors(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    with pytest.raises(sweep.SpecError, match=message):
        sweep.plan(sweep.load_spec(path))


def test_dry_run_prints_each_command_with_its_gpu_and_creates_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", "/data/store", ["LR"], {"lr": [0.01, 0.001]}, [1])
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--out", str(out), "--gpu_ids", "0,1", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["new", "LR/lr=0.01/seed=1"], ["new", "LR/lr=0.001/seed=1"]]
    assert "--gpu_ids 0 --model_save_dir" in lines[0] and "--gpu_ids 1 --model_save_dir" in lines[1]
    assert not out.exists()


def test_a_changed_spec_is_refused_for_an_existing_out_dir(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.toml", "/data/store", ["LR"], {"lr": [0.01]}, [1])
    out = tmp_path / "out"
    out.mkdir()
    old = sweep.plan(sweep.load_spec(spec))
    old[0].flags["epochs"] = 5  # what an earlier spec ran in LR/lr=0.01/seed=1
    sweep.record(out, spec, old)
    assert sweep.main([str(spec), "--out", str(out)]) == 2
    assert "the spec changed: pass a new --out" in capsys.readouterr().err


# -- run directories -------------------------------------------------------------------------------------------


def test_action_tells_finished_resumable_clearable_and_foreign_run_dirs_apart(tmp_path):
    run = tmp_path / "LR" / "seed=1"
    assert sweep.action(run, listed=True) == ("new", "")
    run.mkdir(parents=True)
    (run / "train.log").write_text("log")
    (run / "config.json").write_text(json.dumps({"run_dir": str(run)}))
    (run / "events.out.tfevents.1.vm.1.0").write_bytes(b"")
    (run / "best.pt").write_bytes(b"")
    (run / ".last.pt.tmp-999999").write_bytes(b"")
    assert sweep.action(run, listed=True)[0] == "clear"
    assert sweep.action(run, listed=False)[0] == "blocked"  # not made by this sweep: left alone
    (run / "notes.txt").write_text("mine")
    what, why = sweep.action(run, listed=True)
    assert what == "blocked" and "notes.txt" in why
    (run / "notes.txt").unlink()
    (run / "config.json").write_text(json.dumps({"run_dir": str(tmp_path / "elsewhere")}))
    assert sweep.action(run, listed=True)[0] == "blocked"  # a config.json of another run
    (run / "config.json").write_text(json.dumps({"run_dir": str(run)}))
    sweep.clear(run)
    assert not run.exists() and run.parent.is_dir()
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    assert sweep.action(run, listed=False)[0] == "resume"
    (run / "metrics.json").write_text(json.dumps({"test": {"auc": 0.7}}))
    assert sweep.action(run, listed=False)[0] == "done"


# -- real sweeps -----------------------------------------------------------------------------------------------


def test_a_failing_run_is_reported_with_its_log_and_the_others_finish(store, tmp_path):
    spec = write_spec(tmp_path / "s.toml", store, ["LR"], {"lr": [-1.0, 0.01]}, [1])
    out = tmp_path / "out"
    done = run_sweep(spec, out)
    assert done.returncode == 1, done.stderr
    bad_log = out / "LR" / "lr=-1.0" / "seed=1" / "train.log"
    assert "failed: LR/lr=-1.0/seed=1" in done.stdout and str(bad_log) in done.stdout
    assert "--lr must be a finite number > 0" in bad_log.read_text()
    assert "(log: " + str(bad_log) in done.stdout
    assert list(test_metrics(out)) == ["LR/lr=0.01/seed=1"]
    record = {r["dir"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert record["LR/lr=-1.0/seed=1"]["status"] == "failed" and record["LR/lr=-1.0/seed=1"]["returncode"] == 2
    assert record["LR/lr=0.01/seed=1"]["status"] == "done" and "--lr 0.01" in record["LR/lr=0.01/seed=1"]["command"]
    assert (out / "LR" / "lr=0.01" / "seed=1" / "train.log").read_text().startswith("# sweep: ")
    assert not (out / ".pending_logs").exists()


GRID = {"lr": [0.01, 0.001]}
GRID_MODELS = ["LR", "FM"]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def grid_sweep(store, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The 2 models x 2 learning rates x 2 seeds grid, run once without interruption."""
    work = tmp_path_factory.mktemp("grid")
    spec = write_spec(work / "grid.toml", store, GRID_MODELS, GRID, SEEDS)
    out = work / "out"
    return spec, out, run_sweep(spec, out)


@pytest.mark.slow
def test_a_grid_runs_to_completion_and_a_second_invocation_runs_nothing(grid_sweep):
    spec, out, first = grid_sweep
    assert first.returncode == 0, first.stdout + first.stderr
    assert "8/8 runs done, 0 failed" in first.stdout
    metrics = test_metrics(out)
    assert sorted(metrics) == sorted(f"{m}/lr={lr}/seed={s}" for m in GRID_MODELS for lr in GRID["lr"] for s in SEEDS)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    again = run_sweep(spec, out)
    assert again.returncode == 0 and "8/8 runs done, 0 failed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing ran, nothing was rewritten
    assert {r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]} == {"done"}
    table = results.aggregate([out], params=False)
    assert len(table.rows) == 4 and {len(r.runs) for r in table.rows} == {2}


@pytest.mark.slow
def test_a_killed_sweep_continues_where_it_stopped_with_the_same_test_metrics(grid_sweep, store, tmp_path):
    _, grid_out, _ = grid_sweep
    spec = write_spec(tmp_path / "kill.toml", store, ["LR"], GRID, SEEDS)  # 4 runs of the same grid
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(spec, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_at = time.monotonic() + 300, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [p.parent for p in out.rglob("metrics.json")]
            started = [p.parent for p in out.rglob("config.json") if p.parent not in done]
            checkpointed = [d for d in started if (d / "last.pt").is_file()]
            # Kill in a run's second epoch (it resumes from last.pt); failing that, once two runs are done
            # and a third has started (it starts again)
            if done and (checkpointed or (len(done) >= 2 and started)):
                proc.send_signal(signal.SIGKILL)
                killed_at = (checkpointed or started)[0]
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert killed_at is not None, "the sweep ended before a run was caught in progress"
    time.sleep(1.0)  # train.py died with the sweep (PR_SET_PDEATHSIG): its run stays unfinished
    assert not (killed_at / "metrics.json").exists()
    resumable = (killed_at / "last.pt").is_file()
    print(f"killed during {killed_at.relative_to(out)}: {'resumes from last.pt' if resumable else 'starts again'}")
    again = run_sweep(spec, out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4/4 runs done" in again.stdout
    name = str(killed_at.relative_to(out))
    record = {r["dir"]: r for r in json.loads((out / "sweep.json").read_text())["runs"]}
    if resumable:
        assert record[name]["note"] == "resumed from last.pt" and "--resume" in record[name]["command"]
        assert (killed_at / "train.log").read_text().count("# sweep: ") == 2  # the log goes on
    expected = {k: v for k, v in test_metrics(grid_out).items() if k.startswith("LR/")}
    assert test_metrics(out) == expected  # bit for bit: seeded CPU runs, exact resume


# -- results.py ------------------------------------------------------------------------------------------------


def fake_run(root: Path, name: str, model: str, lr: float, seed: int, auc: float, logloss: float,
             speeds: list[float] = (), gpu: str = "0", best_epoch: int = 1, curve: bool = False) -> Path:
    """A run dir written by hand: config.json, metrics.json and (``speeds``) train/samples_per_s points."""
    run = root / name
    run.mkdir(parents=True)
    config = {"model": model, "model_hparams": {"embed_dim": 4}, "world_size": 1, "run_dir": str(run),
              "train": {"seed": seed, "lr": lr, "data": f"/stores/s{seed}", "gpu_ids": gpu, "epochs": 2},
              "store": {"path": f"/stores/s{seed}", "dataset": "criteo", "schema": {}, "splits": {}, "options": {}}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"best_epoch": best_epoch, "test": {"auc": auc, "logloss": logloss}}))
    if speeds or curve:
        from torch.utils.tensorboard import SummaryWriter
        with SummaryWriter(str(run)) as w:
            for step, s in enumerate(speeds, 1):
                w.add_scalar("train/samples_per_s", s, step)
            if curve:
                for step in (10, 20, 30):
                    w.add_scalar("train/loss", 0.6 - step / 1000 - seed / 100, step)
                    w.add_scalar("valid/auc", auc - 0.03 + step / 1000, step)
    return run


@pytest.fixture
def hand_runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    # A: 3 seeds, on different GPUs (still one configuration); B: 2 seeds; C: 1 seed
    fake_run(root, "A/1", "DeepFM", 0.001, 1, 0.70, 0.50, [100, 300, 200], gpu="0", best_epoch=1, curve=True)
    fake_run(root, "A/2", "DeepFM", 0.001, 2, 0.72, 0.52, [400], gpu="1", best_epoch=2, curve=True)
    fake_run(root, "A/3", "DeepFM", 0.001, 3, 0.74, 0.48, [600, 500], gpu="2", best_epoch=2)
    fake_run(root, "B/1", "DeepFM", 0.01, 1, 0.705, 0.45, [1000])
    fake_run(root, "B/2", "DeepFM", 0.01, 2, 0.715, 0.47, [3000])
    fake_run(root, "nested/deeper/C", "LR", 0.001, 1, 0.60, 0.60)
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.json").write_text("{}")  # no metrics.json: not a run
    return root


def test_aggregate_equals_a_hand_computation_with_the_sample_std(hand_runs, tmp_path):
    table = results.aggregate([hand_runs], params=False)
    assert [r.key["model"] for r in table.rows] == ["DeepFM", "DeepFM", "LR"]  # sorted by AUC, best first
    a, b, c = table.rows
    assert a.key["lr"] == 0.001 and a.seeds == [1, 2, 3] and b.seeds == [1, 2]
    mean, std = a.stats("auc")
    assert mean == pytest.approx(0.72) and std == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / (3 - 1))
    assert std == pytest.approx(statistics.stdev([0.70, 0.72, 0.74])) != pytest.approx(statistics.pstdev([0.70, 0.72, 0.74]))
    assert b.stats("auc") == pytest.approx((0.71, 0.01 / 2 ** 0.5))
    assert c.stats("auc") == (0.60, None)  # one seed: no std
    assert a.stats("logloss") == pytest.approx((0.50, 0.02))
    assert a.stats("best_epoch") == pytest.approx((5 / 3, statistics.stdev([1, 2, 2])))
    assert a.values("samples_per_s") == [200, 400, 550]  # the median of each run's points
    assert b.stats("samples_per_s") == pytest.approx((2000, statistics.stdev([1000, 3000])))
    assert c.values("samples_per_s")[0] != c.values("samples_per_s")[0]  # no event file: NaN
    # The best row is A (0.72 ± 0.02): B is 0.01 below, within one std of A; C is 0.12 below
    assert a.is_best and a.vs_best == 0
    assert b.vs_best == pytest.approx(-0.01) and b.within_noise is True
    assert c.vs_best == pytest.approx(-0.12) and c.within_noise is False
    md = results.markdown(table)
    assert "| DeepFM | 0.001 | 3 | 0.7200 ± 0.0200 | 0.5000 ± 0.0200 |" in md
    assert "-0.0100 (within noise)" in md and "| best |" in md and "6 runs, 3 configurations" in md
    assert "gpu_ids" not in md and "seed" not in md.split("\n\n")[1].splitlines()[0]
    rows = list(__import__("csv").DictReader(results.csv_text(table).splitlines()))
    assert float(rows[0]["auc_mean"]) == pytest.approx(0.72) and float(rows[0]["auc_std"]) == pytest.approx(0.02)
    assert rows[1]["within_noise_of_best"] == "true" and rows[2]["auc_std"] == ""
    by_logloss = results.aggregate([hand_runs], sort="logloss", params=False)
    assert [r.stats("logloss")[0] for r in by_logloss.rows] == pytest.approx([0.46, 0.50, 0.60])  # best first
    assert by_logloss.best_metric == "logloss" and by_logloss.rows[0].is_best
    reverse = results.aggregate([hand_runs], sort="-lr", params=False)
    assert [r.key["lr"] for r in reverse.rows][0] == 0.01
    with pytest.raises(ValueError, match="no such column"):
        results.aggregate([hand_runs], sort="nope", params=False)
    assert results.main([str(hand_runs), "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text() == md and (tmp_path / "t.csv").read_text() == results.csv_text(table)


# -- plot.py ---------------------------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_commands_write_valid_png_and_svg(hand_runs, tmp_path):
    assert plot.main(["curves", str(hand_runs / "A" / "1"), str(hand_runs / "A" / "2"),
                      "--out", str(tmp_path / "curves.png")]) == 0
    assert_png(tmp_path / "curves.png")
    assert plot.main(["auc", str(hand_runs), "--out", str(tmp_path / "auc")]) == 0  # no suffix: both formats
    assert_png(tmp_path / "auc.png")
    assert (tmp_path / "auc.svg").read_text().lstrip().startswith("<?xml") and "<svg" in (tmp_path / "auc.svg").read_text()
    assert plot.main(["throughput", str(hand_runs), "--out", str(tmp_path / "speed.png")]) == 0
    assert_png(tmp_path / "speed.png")
    with pytest.raises(SystemExit):
        plot.main(["auc", str(hand_runs), "--out", str(tmp_path / "auc.jpg")])
    assert not os.path.exists(tmp_path / "auc.jpg")
