"""train.py under faults: bad flag values, stores too small for the process count, NaN with and without
a checkpoint, corrupt and half-written checkpoints, a full disk, two runs in the same second, a resumed
finished run, a rank killed with SIGKILL, and what the user sees of a run.

Process and disk faults are real: ranks are killed with SIGKILL in a subprocess, the disk is a small
tmpfs (or the test is skipped where mounting one is not allowed), corruption is random bytes written
into the file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from conftest import ROOT
from test_train import DEEPFM, corrupt_chunk, run_main, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("store") / "planted", n_rows=600)


def run_cli(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """train.main in this process -> (exit code, stdout, stderr)."""
    code = train.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stopped_run(store: Path, run_dir: Path) -> Path:
    """A run stopped by --max_steps 6 in its first epoch (8 steps), with last.pt and best.pt of step 6;
    ``--resume run_dir --max_steps 12`` continues it."""
    argv = [*DEEPFM, "--data", store, "--max_steps", "6", "--eval_every", "3", "--ckpt_every", "3",
            "--model_save_dir", run_dir]
    assert train.main([str(a) for a in argv]) == 0
    return run_dir


def corrupt(path: Path, seed: int = 0) -> None:
    """Overwrite 256 bytes in the middle of ``path`` with random bytes (size unchanged)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(np.random.default_rng(seed).bytes(256))


def one_error_line(err: str) -> str:
    """The error line of a failed command; fails if anything else (a traceback) was printed with it."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("train.py: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# -- 6: flag values and process counts refused before anything starts -----------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "-0.1"], "--lr must be a finite number > 0, got -0.1"),
    (["--weight_decay", "inf"], "--weight_decay must be a finite number >= 0, got inf"),
    (["--min_lr", "-1"], "--min_lr must be a finite number >= 0, got -1.0"),
    (["--task_weights", "nan"], "--task_weights must be finite numbers >= 0, got nan"),
    (["--dropout", "nan"], "--dropout must be a finite number, got nan"),
])
def test_non_finite_or_negative_float_flags_are_one_line(argv: list[str], message: str, store: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture):
    code, err = run_main([*DEEPFM, "--data", store, "--model_save_dir", tmp_path / "run", *argv], capsys)
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_a_store_with_fewer_train_chunks_than_processes_is_refused_before_spawning(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    tiny = write_store(tmp_path / "tiny", n_rows=200, chunk_size=256)  # 160 train rows: one chunk
    code, err = run_main([*DEEPFM, "--data", tiny, "--cpu_procs", "2", "--model_save_dir", tmp_path / "run"],
                         capsys)
    assert code == 2
    assert (f"store {tiny} has 1 train chunks, fewer than the 2 processes; use fewer processes or preprocess "
            f"with a smaller --chunk-size") in one_error_line(err)
    assert not (tmp_path / "run").exists()


# -- 7: a NaN stop says what was actually saved ---------------------------------------------------------


def test_nan_before_any_checkpoint_says_nothing_was_saved(store: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "nan"
    code, err = run_main([*DEEPFM, "--data", store, "--lr", "1e30", "--model_save_dir", run_dir], capsys)
    line = one_error_line(err)
    assert code == 1 and "at step 2" in line
    assert f"nothing was saved in {run_dir}" in line and "last.pt holds" not in line
    assert not (run_dir / "last.pt").exists() and not (run_dir / "best.pt").exists()


def test_nan_after_a_checkpoint_names_its_step(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "nan"
    code, err = run_main([*DEEPFM, "--data", store, "--lr", "1e30", "--ckpt_every", "1", "--model_save_dir",
                          run_dir], capsys)
    line = one_error_line(err)
    assert code == 1 and "at step 2" in line and line.endswith(f"{run_dir} holds last.pt from step 1")


def test_nan_predictions_in_validation_are_one_line_not_a_scikit_learn_error(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "nan"  # after one step of lr 1e30 the FM term overflows: the predictions are NaN
    code, err = run_main([*DEEPFM, "--data", store, "--lr", "1e30", "--eval_every", "1", "--model_save_dir",
                          run_dir], capsys)
    line = one_error_line(err)
    assert code == 1 and "the model predicts NaN/inf for 60 of the 60 valid rows at step 1" in line
    assert line.endswith(f"nothing was saved in {run_dir}")


# -- 4: checkpoints carry a checksum ---------------------------------------------------------------------


def test_checkpoints_still_load_with_plain_torch_load(store: Path, tmp_path: Path):
    run_dir = stopped_run(store, tmp_path / "run")
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["progress"]["global_step"] == 6
    assert torch.equal(state["model"]["embedding.table.weight"],
                       train.load_checkpoint(run_dir / "last.pt")["model"]["embedding.table.weight"])


def test_resume_of_a_corrupt_last_pt_names_it_and_says_whether_best_pt_is_intact(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = stopped_run(store, tmp_path / "run")
    files = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    corrupt(run_dir / "last.pt")
    code, err = run_main(["--resume", run_dir, "--max_steps", "12"], capsys)
    line = one_error_line(err)
    assert code == 1 and f"checkpoint {run_dir / 'last.pt'} is corrupt" in line
    assert f"{run_dir / 'best.pt'} is intact (step 6)" in line and f"--eval_only {run_dir}" in line
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(files)
    assert (run_dir / "best.pt").read_bytes() == files["best.pt"]

    corrupt(run_dir / "best.pt", seed=1)
    code, err = run_main(["--resume", run_dir, "--max_steps", "12"], capsys)
    assert code == 1 and "best.pt is corrupt too" in one_error_line(err)


def test_eval_only_of_a_corrupt_best_pt_is_a_clear_error(store: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture):
    run_dir = stopped_run(store, tmp_path / "run")
    corrupt(run_dir / "best.pt")
    code, err = run_main(["--eval_only", run_dir, "--num_workers", "0"], capsys)
    assert code == 1 and f"checkpoint {run_dir / 'best.pt'} is corrupt" in one_error_line(err)


# -- 5: temp files of killed checkpoint writes -----------------------------------------------------------

HALF_WRITER = ("import os, sys, time\n"
               "f = open(sys.argv[1].format(pid=os.getpid()), 'wb')\n"
               "f.write(os.urandom(1 << 20)); f.flush()\n"
               "print(os.getpid(), flush=True); time.sleep(60)")


def half_written(run_dir: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """A process that has written 1 MiB of ``.<name>.tmp-<its pid>`` in ``run_dir`` and is still at it."""
    proc = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(run_dir / f".{name}.tmp-{{pid}}")],
                            stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    return proc, run_dir / f".{name}.tmp-{pid}"


def test_resume_removes_temp_files_of_killed_writers_and_keeps_those_of_live_ones(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = stopped_run(store, tmp_path / "run")
    killed, killed_tmp = half_written(run_dir, "last.pt")
    killed.kill()
    killed.wait()
    live, live_tmp = half_written(run_dir, "best.pt")
    try:
        code, out, err = run_cli(["--resume", run_dir, "--max_steps", "12"], capsys)
        assert code == 0, err
        assert not killed_tmp.exists() and live_tmp.stat().st_size == 1 << 20
        assert f"removed {killed_tmp} (1.0 MiB), left by process {killed.pid}, which is gone" in out
        assert f"kept {live_tmp}: process {live.pid} is still running" in out
    finally:
        live.kill()
        live.wait()


# -- 3: a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 20 MiB tmpfs (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_with_the_space_needed_and_keeps_the_checkpoints(
        store: Path, small_disk: Path, capsys: pytest.CaptureFixture):
    run_dir = stopped_run(store, small_disk / "run")
    kept = {name: (run_dir / name).read_bytes() for name in ("last.pt", "best.pt")}
    with open(small_disk / "filler", "wb") as f:  # leave 8 KiB: the resumed run's event file fits, a checkpoint not
        f.write(bytes(shutil.disk_usage(small_disk).free - 8192))
    code, err = run_main(["--resume", run_dir, "--max_steps", "12"], capsys)
    line = one_error_line(err)
    assert code == 1
    assert re.search(rf"no space left on the disk of {run_dir}: writing (last|best)\.pt needs [\d.]+ KiB, "
                     rf"[\d.]+ KiB are free", line), line
    assert f"resume with --resume {run_dir} (it holds last.pt from step 6 and best.pt from step 6)" in line
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    assert not list(run_dir.glob(".*.tmp-*"))

    (small_disk / "filler").unlink()
    assert run_main(["--resume", run_dir, "--max_steps", "12"])[0] == 0


# -- 1: every run gets a directory of its own ------------------------------------------------------------

SAME_SECOND = ("import runpy, sys, time\n"
               "sys.path.insert(0, sys.argv[1])\n"
               "time.strftime = lambda fmt, *a: '20240101-000000'  # both runs start 'in the same second'\n"
               "script, sys.argv = sys.argv[1] + '/train.py', ['train.py', *sys.argv[2:]]\n"
               "runpy.run_path(script, run_name='__main__')\n")


def test_two_runs_started_in_the_same_second_get_a_directory_each(store: Path, tmp_path: Path):
    argv = [sys.executable, "-c", SAME_SECOND, str(ROOT), *map(str, DEEPFM), "--data", str(store), "--epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = tmp_path / "checkpoints" / "DeepFM"
    assert sorted(p.name for p in runs.iterdir()) == ["20240101-000000", "20240101-000000-2"]
    writers = set()
    for run_dir in runs.iterdir():
        config = json.loads((run_dir / "config.json").read_text())
        assert Path(config["run_dir"]) == run_dir.relative_to(tmp_path)
        assert json.loads((run_dir / "metrics.json").read_text())["stop_reason"] == "epochs"
        pids = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}  # ...<host>.<pid>.<n>
        assert len(pids) == 1  # one process wrote every event file of the run
        writers |= pids
    assert len(writers) == 2
    printed = sorted(re.findall(r"run dir (\S+) \(TensorBoard", out)[0] for out, _ in outputs)
    assert printed == [f"checkpoints/DeepFM/{name}" for name in ("20240101-000000", "20240101-000000-2")]


def test_an_existing_run_name_is_refused_and_names_resume(store: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture):
    monkeypatch.chdir(tmp_path)
    argv = [*DEEPFM, "--data", store, "--run_name", "exp", "--lr", "1e30"]  # stops at step 2, nothing saved
    assert run_main(argv, capsys)[0] == 1
    run_dir = Path("checkpoints/DeepFM/exp")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    code, err = run_main(argv, capsys)
    assert code == 2
    assert (f"{run_dir} already exists and holds no last.pt to resume; pick another --run_name"
            in one_error_line(err))
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before

    code, err = run_main([*DEEPFM, "--data", store, "--run_name", "done", "--max_steps", "2"], capsys)
    assert code == 0
    code, err = run_main([*DEEPFM, "--data", store, "--run_name", "done", "--max_steps", "2"], capsys)
    assert code == 2 and ("checkpoints/DeepFM/done already exists: continue that run with --resume "
                          "checkpoints/DeepFM/done, or pick another --run_name") in one_error_line(err)


def test_model_save_dir_must_be_new_or_empty(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not train.py's")
    code, err = run_main([*DEEPFM, "--data", store, "--model_save_dir", mine], capsys)
    assert code == 2 and (f"--model_save_dir {mine} is not empty (it holds notes.txt) and holds no run to "
                          f"resume; pass a new or empty directory") in one_error_line(err)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _ = run_main([*DEEPFM, "--data", store, "--max_steps", "2", "--model_save_dir", empty], capsys)
    assert code == 0 and (empty / "metrics.json").is_file()


# -- 8: --resume of a finished run ------------------------------------------------------------------------


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.iterdir()}


def test_resume_of_a_finished_run_says_so_and_changes_nothing(store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture):
    by_epochs = tmp_path / "epochs"
    assert run_main([*DEEPFM, "--data", store, "--epochs", "1", "--model_save_dir", by_epochs], capsys)[0] == 0
    by_steps = stopped_run(store, tmp_path / "steps")
    early = stopped_run(store, tmp_path / "early")
    state = train.load_checkpoint(early / "last.pt")
    state["progress"]["stop_reason"] = "early_stopping"
    train.save_checkpoint(early / "last.pt", state)

    for run_dir, message in ((by_epochs, "it trained all 1 epochs (step 8); pass a larger --epochs to continue it"),
                             (by_steps, "it reached --max_steps 6; pass a larger --max_steps to continue it"),
                             (early, "early stopping ended it at step 6; early stopping is final")):
        before = snapshot(run_dir)
        code, err = run_main(["--resume", run_dir], capsys)
        line = one_error_line(err)
        assert code == 2 and f"the run in {run_dir} is finished: {message}" in line
        assert line.endswith("nothing was changed")
        assert snapshot(run_dir) == before

    code, out, _ = run_cli(["--resume", by_epochs, "--epochs", "2"], capsys)
    assert code == 0 and json.loads((by_epochs / "metrics.json").read_text())["epochs"] == 2


# -- 2: a rank killed with SIGKILL ------------------------------------------------------------------------


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state, ppid


def live_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def children(pid: int) -> list[int]:
    found = []
    for child in live_pids():
        try:
            if parent_of(child) == pid:
                found.append(child)
        except (OSError, IndexError):  # gone meanwhile
            pass
    return sorted(found)


def processes_of_run(token: str) -> list[int]:
    """Live processes (not zombies: theirs is empty) whose environment carries ``TRAIN_SAFETY_TOKEN=token``:
    the command, its ranks, their loader workers, the multiprocessing helpers."""
    found = []
    for pid in live_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TRAIN_SAFETY_TOKEN={token}".encode() in environ:
            found.append(pid)
    return found


def ranks_of(launcher: int) -> list[int]:
    """The spawned ranks among ``launcher``'s children (not the multiprocessing resource tracker)."""
    ranks = []
    for pid in children(launcher):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.append(pid)
        except OSError:
            pass
    return sorted(ranks)  # started in rank order


def loader_workers(rank: int) -> list[int]:
    """Children of ``rank`` in torch's DataLoader worker loop (it names them pt_data_worker just before it
    calls worker_init_fn). Under DDP they are spawned, so they need seconds to import torch first."""
    found = []
    for pid in children(rank):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pt_data_worker":
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_stops_the_run_with_one_line_and_leaves_no_process(victim: int, store: Path,
                                                                         tmp_path: Path):
    token = uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAIN_SAFETY_TOKEN": token}
    run_dir = tmp_path / "run"
    argv = [*DEEPFM, "--data", store, "--epochs", "100", "--cpu_procs", "2", "--num_workers", "2",
            "--data_path", "chunks", "--ckpt_every", "2", "--model_save_dir", run_dir]
    out, err = tmp_path / "out", tmp_path / "err"  # files, not pipes: an orphan holding a pipe blocks no read
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "train.py", *map(str, argv)], cwd=ROOT, env=env, stdout=stdout,
                                stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while True:  # until both ranks train, each with its 2 loader workers running torch's worker loop
            ranks = ranks_of(proc.pid)
            if len(ranks) == 2 and all(len(loader_workers(r)) >= 2 for r in ranks):
                break
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        os.kill(ranks[victim], signal.SIGKILL)
        proc.wait(timeout=60)
        line = one_error_line(err.read_text())
        assert proc.returncode == 1
        assert f"rank {victim} (pid {ranks[victim]}) was killed by SIGKILL" in line
        assert "the run stopped" in line and str(run_dir) in line
        deadline = time.monotonic() + 5
        while processes_of_run(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_of_run(token) == []
    finally:
        for pid in processes_of_run(token):  # whatever the outcome, leave nothing running
            os.kill(pid, signal.SIGKILL)


# -- 9: what the user sees --------------------------------------------------------------------------------


def test_the_run_dir_and_a_tensorboard_command_that_works_are_printed_at_start_and_end(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "run"
    code, out, _ = run_cli([*DEEPFM, "--data", store, "--epochs", "1", "--model_save_dir", run_dir], capsys)
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("train.py: ")]
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the README's .venv/bin/tensorboard
    command = f"{os.path.relpath(tensorboard)} --logdir {run_dir}"
    assert tensorboard.is_file() and lines[0] == f"train.py: run dir {run_dir} (TensorBoard: {command})"
    assert lines[-1].startswith("train.py: done (epochs, 8 steps): best valid AUC ")
    assert lines[-1].endswith(f"; run dir {run_dir} (TensorBoard: {command})")
    assert "tensorboard --logdir checkpoints/" not in (ROOT / "README.md").read_text().replace(
        ".venv/bin/tensorboard --logdir checkpoints/", "")


def test_a_short_run_gets_a_train_point_per_epoch_with_the_window_rows_per_second(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """480 train rows in batches of 100: 5 steps per epoch (the last of 80 rows), --log_every 100. A fake
    clock advances 1 s per step and 100 s per evaluation, which the train window must not count."""
    clock = [0.0]
    train_step, evaluate = train.train_step, train.evaluate

    def timed_step(*args, **kwargs):
        clock[0] += 1.0
        return train_step(*args, **kwargs)

    def timed_evaluate(*args, **kwargs):
        clock[0] += 100.0
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", timed_step)
    monkeypatch.setattr(train, "evaluate", timed_evaluate)
    monkeypatch.setattr(train.Trainer, "clock", staticmethod(lambda: clock[0]))
    run_dir = tmp_path / "run"
    assert train.main([*map(str, DEEPFM), "--data", str(store), "--epochs", "2", "--batch_size", "100",
                       "--log_every", "100", "--model_save_dir", str(run_dir)]) == 0
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10]
    assert [e.value for e in events.Scalars("train/samples_per_s")] == [480 / 5, 480 / 5]


def test_epochs_are_numbered_from_1_in_the_bar_the_log_lines_and_metrics(store: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "run"  # 8 steps per epoch, evaluations at steps 3 6 8 | 9 12 15 16
    code, out, err = run_cli([*DEEPFM, "--data", store, "--epochs", "2", "--eval_every", "3",
                              "--model_save_dir", run_dir], capsys)
    assert code == 0
    evaluations = re.findall(r"^step (\d+) epoch (\d+) valid:", out, flags=re.M)
    assert evaluations == [("3", "1"), ("6", "1"), ("8", "1"), ("9", "2"), ("12", "2"), ("15", "2"), ("16", "2")]
    assert "epoch 1/2" in err and "epoch 2/2" in err and "epoch 0" not in err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["best_epoch"] == -(-metrics["best_step"] // 8)


@pytest.mark.parametrize("data_path,workers", [("chunks", 0), ("chunks", 2), ("resident", 0)])
def test_a_corrupt_store_chunk_stops_training_with_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      data_path: str, workers: int):
    """Bytes overwritten inside a stored chunk (found by its exact bytes) stop the run where the chunk is read,
    in the process, in a loader worker or while the resident splits load, with the chunk named and the fix: not
    zeros trained on silently."""
    path = corrupt_chunk(write_store(tmp_path / "s", n_rows=600), "train", 2)
    code, _, err = run_cli([*DEEPFM, "--data", path, "--num_workers", workers, "--data_path", data_path,
                            "--model_save_dir", tmp_path / "run"], capsys)
    assert code == 1
    assert re.fullmatch(r"train\.py: error: store \S+ is corrupt at chunk train/00000002 \(checksum mismatch\): "
                        r"re-run preprocess\.py", one_error_line(err))
