"""train.py under faults: bad flag values, stores too small for the process count, NaN with and without
a checkpoint, corrupt and half-written checkpoints, a full disk, two runs in the same second, a resumed
finished run, a rank killed with SIGKILL, and what the user sees of a run.

Process and disk faults are real: ranks are killed with SIGKILL in a subprocess, the disk is a small
tmpfs (or the test is skipped where mounting one is not allowed), corruption is random bytes written
into the file.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from test_train import DEEPFM, run_main, write_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("store") / "planted", n_rows=600)


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
