"""preprocess.py never loses what the user owns, and fails in one line: faults injected for real.

Process faults are real preprocess runs killed with SIGKILL, held at the moment that matters by a wrapper
around preprocess.main (an audit hook, or a patched method, that waits there); two runs racing for one --out
are real processes too. Disk faults are a small tmpfs in a private mount namespace (root only) or a file-size
limit (``setrlimit(RLIMIT_FSIZE)``); damaged inputs are real damaged files.
"""
from __future__ import annotations

import gzip
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import preprocess
from conftest import ROOT, SHARED_DATA
from dataset.criteo import preprocess_criteo
from dataset.store import StoreReader

CRITEO = SHARED_DATA / "criteo" / "head8k.txt"
CENSUS_GZ = SHARED_DATA / "census" / "census-income.test.gz"
CCP_TRAIN = SHARED_DATA / "aliccp" / "ali_ccp_train_sample.csv"
AE_TRAIN = SHARED_DATA / "aliexpress" / "aliexpress_train_sample.csv"
BOM = b"\xef\xbb\xbf"


# -------------------------------------------------------------------------------------------------- helpers


def criteo_rows(path: Path, n: int = 2000) -> Path:
    """The first ``n`` rows of head8k.txt at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(CRITEO, "rb") as f:
        path.write_bytes(b"".join(f.readline() for _ in range(n)))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python preprocess.py argv`` in this process -> (exit code, stderr)."""
    code = preprocess.main(argv)
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one ``error:`` line of ``err`` (notes and progress bars may come before it); fails on a traceback
    or more lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line and not line.startswith("note: ")
             and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def make_store(out: Path, seed: int = 1, rows: int = 2000) -> dict:
    """A real criteo store at ``out`` -> its metadata."""
    raw = criteo_rows(out.parent / f"rows{rows}.txt", rows)
    return preprocess_criteo(raw, out, seed=seed, min_count=1, progress=False)


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """A fresh interpreter running ``code`` in the repo root, stderr captured."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# Runs preprocess.py's main with StoreWriter.close made to wait until every racer has reached it, so that all
# of them pass the up-front --out check and finish their store before any moves it into place.
RACE = """
import os, sys, time
from pathlib import Path
import preprocess
from dataset import store
barrier, racers = Path(sys.argv[1]), int(sys.argv[2])
close = store.StoreWriter.close
def close_together(self):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(barrier.iterdir())) < racers and time.monotonic() < deadline:
        time.sleep(0.002)
    return close(self)
store.StoreWriter.close = close_together
sys.exit(preprocess.main(sys.argv[3:]))
"""

# Runs preprocess.py's main and stops for good (touching sys.argv[1]) at the first of Python's audit events
# (any open, rename, listdir, ctypes call ...) at which path sys.argv[2] exists and path sys.argv[3] does not
# ("PID" in them: this process's id): a run paused exactly between two file operations, for the test to kill.
PAUSE_WHEN = """
import os, sys, time
import preprocess
signal_file, present, absent = (a.replace("PID", str(os.getpid())) for a in sys.argv[1:4])
paused = False
def hook(event, args):
    global paused
    if not paused and os.path.exists(present) and not os.path.exists(absent):
        paused = True
        open(signal_file, "w").close()
        time.sleep(600)
sys.addaudithook(hook)
sys.exit(preprocess.main(sys.argv[4:]))
"""

# Runs preprocess.py's main with shuffle buckets spilled to disk (SPILL_BYTES = 0), pausing for good after the
# first rows reach the store (touching sys.argv[1]): both the .tmp- store and the -buckets dir then exist.
PAUSE_IN_PASS_2 = """
import sys, time
import preprocess
from dataset import criteo, store
criteo.SPILL_BYTES = 0
add = store.StoreWriter.add
def add_then_stop(self, *a):
    add(self, *a)
    open(sys.argv[1], "w").close()
    time.sleep(600)
store.StoreWriter.add = add_then_stop
sys.exit(preprocess.main(sys.argv[2:]))
"""

# Runs preprocess.py's main with every shuffle bucket spilled to disk (SPILL_BYTES = 0).
SPILLING = """
import sys
import preprocess
from dataset import criteo
criteo.SPILL_BYTES = 0
sys.exit(preprocess.main(sys.argv[1:]))
"""


def can_mount() -> str | None:
    """None if this process can mount a tmpfs in a private mount namespace, else why not."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to mount a small tmpfs in a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs here: {probe.stderr.strip()}"


def in_tmpfs(mount: Path, options: str, argv: list[str], code: str | None = None) -> tuple[int, str, list[str]]:
    """Run ``preprocess.py argv`` (or ``python -c code argv``) with a fresh tmpfs (mount ``options``) at
    ``mount``, in a private mount namespace that ends with it -> (exit code, stderr, what is left in it)."""
    mount.mkdir()
    command = [sys.executable, "preprocess.py"] if code is None else [sys.executable, "-c", code]
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 2; "$@"; echo "rc=$?"; ls -A "$MNT"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", options, str(mount), *command, *argv],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "MNT": str(mount)},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    rc_line = next(i for i, line in enumerate(out) if line.startswith("rc="))
    return int(out[rc_line][3:]), proc.stderr, out[rc_line + 1:]


# ------------------------------------------------------ 1. --overwrite replaces a store, and nothing else


def test_overwrite_of_the_data_dir_refuses_and_keeps_the_raw_input_and_other_stores(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = criteo_rows(tmp_path / "data" / "raw" / "criteo" / "train.txt")
    before = raw.read_bytes()
    census = make_store(tmp_path / "data" / "census")
    for out in ("data", "data/raw", "data/raw/criteo", "data/raw/criteo/train.txt"):
        code, err = run_cli(["criteo", "--input", "data/raw/criteo/train.txt", "--out", out, "--overwrite"], capsys)
        assert code == 2
        assert error_line(err) == (f"error: --out {out} holds the input data/raw/criteo/train.txt; pass an --out "
                                   f"outside it, such as --out data/<dataset>")
    assert raw.read_bytes() == before and StoreReader(tmp_path / "data" / "census").meta == census
    assert listing(tmp_path / "data") == ["census", "raw", "rows2000.txt"]


@pytest.mark.parametrize("kind, reason", [
    ("user dir", "it holds notes.txt, results.csv"),
    ("empty dir", "it is an empty directory"),
    ("file", "it is a file"),
    ("store with a user file", "it holds notes.txt"),
    ("link to a store", "it is a symbolic link"),
    ("lmdb without metadata", "its data.mdb has no store metadata record"),
    ("not lmdb", "its data.mdb is not a store's"),
])
def test_overwrite_refuses_whatever_is_not_a_store(tmp_path, monkeypatch, capsys, kind, reason):
    import lmdb
    monkeypatch.chdir(tmp_path)
    raw = criteo_rows(tmp_path / "in" / "rows.txt")
    target = tmp_path / "mydir"
    if kind == "user dir":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        (target / "results.csv").write_text("1,2")
    elif kind == "empty dir":
        target.mkdir()
    elif kind == "file":
        target.write_text("mine")
    elif kind == "store with a user file":
        make_store(target)
        (target / "notes.txt").write_text("mine")
    elif kind == "link to a store":
        make_store(tmp_path / "real")
        target.symlink_to(tmp_path / "real")
    elif kind == "lmdb without metadata":
        env = lmdb.open(str(target))
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        env.close()
    else:
        target.mkdir()
        (target / "data.mdb").write_bytes(b"mine, not LMDB" * 100)
    before = {p.relative_to(tmp_path): (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    for flags in ([], ["--overwrite"]):
        code, err = run_cli(["criteo", "--input", str(raw), "--out", "mydir", *flags], capsys)
        assert code == 2
        assert error_line(err) == (f"error: --out mydir exists and is not a store written by preprocess.py "
                                   f"({reason}); --overwrite replaces only such stores: pass a new directory as --out")
    after = {p.relative_to(tmp_path): (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    assert after == before  # nothing changed, nothing left (no mydir.old-PID, no mydir.tmp-PID)


def test_out_dot_and_the_root_are_refused(tmp_path, monkeypatch, capsys):
    raw = criteo_rows(tmp_path / "in" / "rows.txt")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", "./", "../work"):
        code, err = run_cli(["criteo", "--input", str(raw), "--out", out, "--overwrite"], capsys)
        shown = out if out == "../work" else f"{out} ({work})"  # the full path where the name says nothing
        assert code == 2
        assert error_line(err) == (f"error: --out {shown} exists and is not a store written by "
                                   f"preprocess.py (it holds notes.txt); --overwrite replaces only such stores: "
                                   f"pass a new directory as --out")
    code, err = run_cli(["criteo", "--input", str(raw), "--out", "/", "--overwrite"], capsys)
    assert code == 2 and error_line(err) == ("error: --out / is the root directory; pass a new directory such as "
                                             "--out data/<dataset>")
    assert listing(tmp_path) == ["in", "work"] and listing(work) == ["notes.txt"]


def test_overwrite_replaces_a_store_and_reading_its_metadata_leaves_no_handle(tmp_path, capsys):
    from dataset.store import check_out
    out = tmp_path / "s"
    make_store(out, seed=1)
    check_out(out, overwrite=True)  # reads the metadata record
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    mapped = Path("/proc/self/maps").read_text()
    assert not [p for p in held if str(out) in p] and str(out) not in mapped
    raw = criteo_rows(tmp_path / "rows2000.txt")
    code, err = run_cli(["criteo", "--input", str(raw), "--out", str(out), "--seed", "2", "--overwrite"], capsys)
    assert code == 0 and StoreReader(out).meta["options"]["seed"] == 2
    assert listing(tmp_path) == ["rows2000.txt", "s"]


# ---------------------------------------------------- 2. a store appears exclusively, and replaces atomically


def race(tmp_path: Path, out: Path, raw: Path, flags: list[str]) -> list[tuple[int, str, int]]:
    """Two real preprocess runs on ``out``, each finishing its store before either moves it into place
    -> (exit code, stderr, seed) of each."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    seeds = (11, 12)
    procs = [python(RACE, str(barrier), "2", "criteo", "--input", str(raw), "--out", str(out), "--seed", str(s),
                    *flags) for s in seeds]
    results = [(p.wait(timeout=60), p.stderr.read(), s) for p, s in zip(procs, seeds)]
    shutil.rmtree(barrier)
    return results


def test_two_runs_creating_the_same_store_one_wins_the_other_fails_cleanly(tmp_path):
    raw, out = criteo_rows(tmp_path / "rows.txt"), tmp_path / "s"
    results = race(tmp_path, out, raw, [])
    assert sorted(code for code, _, _ in results) == [0, 2], results
    (_, _, winner), (_, loser_err, _) = sorted(results)
    assert error_line(loser_err) == f"error: store {out} already exists; pass --overwrite to replace it"
    assert StoreReader(out).meta["options"]["seed"] == winner
    assert listing(tmp_path) == ["rows.txt", "s"]  # the loser removed its temporary store


def test_two_overwrite_runs_leave_one_whole_store(tmp_path):
    raw, out = criteo_rows(tmp_path / "rows.txt"), tmp_path / "s"
    make_store(out, seed=1)
    results = race(tmp_path, out, raw, ["--overwrite"])
    assert [code for code, _, _ in results] == [0, 0], results
    meta = StoreReader(out).meta
    assert meta["options"]["seed"] in (11, 12) and sum(s["rows"] for s in meta["splits"].values()) == 2000
    assert listing(tmp_path) == ["rows.txt", "rows2000.txt", "s"]


@pytest.mark.parametrize("renameat2", [True, False])
def test_moving_a_store_in_never_replaces_what_is_there(tmp_path, monkeypatch, renameat2):
    from dataset import store
    def no_c_library(*args, **kwargs):
        raise OSError("no C library here")

    if not renameat2:  # where renameat2 is missing, the exclusive os.mkdir claim does the job
        monkeypatch.setattr(store.ctypes, "CDLL", no_c_library)
    new, there = tmp_path / "new", tmp_path / "there"
    new.mkdir()
    (new / "data.mdb").write_bytes(b"new")
    there.mkdir()  # an empty directory, which os.rename would replace without a word
    with pytest.raises(FileExistsError):
        store._rename_noreplace(new, there)
    assert listing(there) == [] and (new / "data.mdb").read_bytes() == b"new"
    there.rmdir()
    store._rename_noreplace(new, there)
    assert not new.exists() and (there / "data.mdb").read_bytes() == b"new"


@pytest.mark.parametrize("moment", ["old moved aside", "new moved in"])
def test_overwrite_killed_mid_replacement_loses_nothing(tmp_path, capsys, moment):
    raw, out = criteo_rows(tmp_path / "rows.txt"), tmp_path / "s"
    make_store(out, seed=1)
    stopped = tmp_path / "stopped"
    # paused with the old store moved aside and the new one not yet in, or with the new one in (its
    # temporary name gone) and the old one not yet deleted
    absent = str(out) if moment == "old moved aside" else f"{out}.tmp-PID"
    proc = python(PAUSE_WHEN, str(stopped), f"{out}.old-PID", absent, "criteo", "--input", str(raw),
                  "--out", str(out), "--seed", "2", "--overwrite")
    wait_for(stopped, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stopped.unlink()
    aside = out.with_name(f"s.old-{proc.pid}")
    assert aside.is_dir() and StoreReader(aside).meta["options"]["seed"] == 1, listing(tmp_path)
    assert out.exists() == (moment == "new moved in")
    code, err = run_cli(["criteo", "--input", str(raw), "--out", str(out), "--seed", "3"], capsys)
    assert code == 2 and error_line(err) == f"error: store {out} already exists; pass --overwrite to replace it"
    if moment == "old moved aside":
        assert (f"note: restored the store {out} from {aside}, where an --overwrite run (process {proc.pid}) "
                f"that was killed had moved it") in err
        assert StoreReader(out).meta["options"]["seed"] == 1  # the old store, whole
    else:
        assert f"note: removed {aside}, left by preprocessing process {proc.pid}, which is no longer running" in err
        assert StoreReader(out).meta["options"]["seed"] == 2  # the new store, which had made it in
    assert listing(tmp_path) == ["rows.txt", "rows2000.txt", "s"]


# ----------------------------------------------------- 3. a full disk: one line, the space needed, no leftovers


@pytest.mark.parametrize("phase", ["store", "shuffle buckets"])
def test_full_disk_says_how_much_is_needed_and_frees_what_it_wrote(tmp_path, phase):
    why = can_mount()
    if why:
        pytest.skip(why)
    raw, mount = criteo_rows(tmp_path / "rows.txt"), tmp_path / "small"
    argv = ["criteo", "--input", str(raw), "--out", str(mount / "s")]
    # 2,000 rows: a 320 KB store (160 bytes a row), or 328 KB of spilled shuffle buckets, on a 192 KB disk
    code, err, left = in_tmpfs(mount, "size=192k", argv, None if phase == "store" else SPILLING)
    line = error_line(err)
    assert code == 1 and left == [], err
    if phase == "store":
        assert re.fullmatch(rf"error: the disk is full while writing {mount}/s\.tmp-\d+: the store needs about "
                            r"320\.0 KB \(2,000 rows x 160 bytes\), and 196\.6 KB are free there; removed what was "
                            r"written; free some space or pass an --out on a disk with room", line), line
    else:
        assert re.fullmatch(rf"error: the disk is full while writing {mount}/s\.tmp-\d+-buckets: the shuffle "
                            r"buckets need about [\d.]+ KB \(about [\d,]+ rows x 164 bytes\), and 196\.6 KB are "
                            r"free there; .*", line), line


def test_file_size_limit_says_so_and_frees_what_it_wrote(tmp_path):
    raw, out = criteo_rows(tmp_path / "rows.txt"), tmp_path / "s"

    def limit_file_size() -> None:  # in the child: a 100 KB file-size limit, reported as EFBIG, not SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, "preprocess.py", "criteo", "--input", str(raw), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=60)
    line = error_line(proc.stderr)
    assert proc.returncode == 1
    assert re.fullmatch(rf"error: the file-size limit \(ulimit -f\) of 100\.0 KB was reached while writing "
                        rf"{out}\.tmp-\d+: the store needs about 320\.0 KB \(2,000 rows x 160 bytes\), and [\d.]+ "
                        r"[KMGT]B are free there; removed what was written; raise it \(ulimit -f unlimited\) or "
                        r"pass an --out on a disk with room", line), line
    assert listing(tmp_path) == ["rows.txt"]


# ------------------------------------------------------------ 4. what a killed run leaves, the next one removes


def test_leftovers_of_a_killed_run_are_removed_and_a_running_ones_kept(tmp_path, capsys):
    raw, out = criteo_rows(tmp_path / "rows.txt"), tmp_path / "s"
    stopped = tmp_path / "stopped"
    proc = python(PAUSE_IN_PASS_2, str(stopped), "criteo", "--input", str(raw), "--out", str(out))
    wait_for(stopped, proc)
    proc.send_signal(signal.SIGKILL)  # kill -9 in pass 2: a .tmp- store and a -buckets dir are left
    proc.wait(timeout=10)
    stopped.unlink()
    killed = [f"s.tmp-{proc.pid}", f"s.tmp-{proc.pid}-buckets"]
    assert listing(tmp_path) == ["rows.txt", *killed]
    running = subprocess.Popen(["sleep", "60"])  # a live process's temporary store is never touched
    live = tmp_path / f"s.tmp-{running.pid}"
    live.mkdir()
    (live / "data.mdb").write_bytes(b"being written")
    foreign = tmp_path / f"s.tmp-{dead_pid()}"  # nor one holding files a preprocess run does not write
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    try:
        code, err = run_cli(["criteo", "--input", str(raw), "--out", str(out)], capsys)
    finally:
        running.kill()
        running.wait()
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: removed {tmp_path / name}, left by preprocessing process {proc.pid}, which is no "
                     f"longer running" for name in killed]
    assert listing(tmp_path) == sorted(["rows.txt", "s", live.name, foreign.name])
    assert (live / "data.mdb").read_bytes() == b"being written" and StoreReader(out).num_rows("train") > 0


# ------------------------------------------------------------ 5. bad input and --out: one line, no traceback


def damaged_gzip(source: Path, path: Path, kind: str) -> Path:
    """``source`` gzip-compressed and cut in half (``truncated``), or gzip's magic bytes then junk."""
    if kind == "truncated":
        data = gzip.compress(source.read_bytes())
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize("dataset", ["criteo", "census", "aliccp"])
@pytest.mark.parametrize("kind", ["truncated", "junk"])
def test_damaged_gzip_input_is_one_line(tmp_path, capsys, dataset, kind):
    source = {"criteo": criteo_rows(tmp_path / "rows.txt"), "aliccp": CCP_TRAIN}.get(dataset)
    if dataset == "census":
        source = tmp_path / "census.txt"
        with gzip.open(CENSUS_GZ, "rb") as f:
            source.write_bytes(b"".join(f.readline() for _ in range(300)))
    bad = damaged_gzip(source, tmp_path / "bad.gz", kind)
    code, err = run_cli([dataset, "--input", str(bad), "--out", str(tmp_path / "s")], capsys)
    assert code == 2
    if kind == "truncated":
        assert error_line(err) == (f"error: input {bad} is a truncated gzip file (it ends inside its compressed "
                                   f"data); copy or download it again, then pass it with --input")
    else:
        assert re.fullmatch(rf"error: input {bad} is a damaged gzip file \(.+\); copy or download it again, "
                            r"then pass it with --input", error_line(err)), err
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob("s.*"))


def test_read_only_out_is_one_line(tmp_path, capsys):
    raw = criteo_rows(tmp_path / "rows.txt")
    if os.geteuid() != 0:  # file permissions bind this user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        code, err = run_cli(["criteo", "--input", str(raw), "--out", str(locked / "s")], capsys)
        reason = "is not writable"
    else:  # root writes through file permissions: a read-only mount is what stops it
        why = can_mount()
        if why:
            pytest.skip(f"as root only a read-only mount blocks writes, and {why}")
        locked = tmp_path / "locked"
        code, err, _ = in_tmpfs(locked, "ro,size=64k", ["criteo", "--input", str(raw), "--out", str(locked / "s")])
        reason = "is on a read-only file system"
    assert code == 2 and error_line(err) == (f"error: cannot write --out {locked / 's'}: {locked} {reason}; pass an "
                                             f"--out in a writable directory")


def test_out_under_a_file_is_one_line(tmp_path, capsys):
    raw = criteo_rows(tmp_path / "rows.txt")
    (tmp_path / "afile.txt").write_text("mine")
    code, err = run_cli(["criteo", "--input", str(raw), "--out", str(tmp_path / "afile.txt" / "s")], capsys)
    assert code == 2 and error_line(err) == (f"error: --out {tmp_path / 'afile.txt' / 's'}: {tmp_path / 'afile.txt'} "
                                             f"is a file, not a directory; pass an --out in a directory")
    assert listing(tmp_path) == ["afile.txt", "rows.txt"] and (tmp_path / "afile.txt").read_text() == "mine"


# ------------------------------------------------------------------- 6. every split gets rows, or no store


@pytest.mark.parametrize("split", ["nan,1,1", "inf,1,1", "8,-1,1", "8,1,0", "8,0,1", "0,1,1", "8,1", "a,b,c"])
@pytest.mark.parametrize("dataset", ["criteo", "census"])
def test_split_must_give_every_split_rows(tmp_path, capsys, split, dataset):
    raw = criteo_rows(tmp_path / "rows.txt") if dataset == "criteo" else CENSUS_GZ
    code, err = run_cli([dataset, "--input", str(raw), "--out", str(tmp_path / "s"), "--split", split], capsys)
    assert code == 2 and error_line(err) == (
        f"error: --split must be three positive numbers train,valid,test (every split needs rows: train.py needs "
        f"valid rows for early stopping and test rows for the final score), got {split!r}")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("dataset", ["criteo", "census"])
def test_a_split_left_without_rows_is_refused(tmp_path, capsys, dataset):
    raw = tmp_path / "rows.txt"
    if dataset == "criteo":
        criteo_rows(raw, 20)
    else:
        with gzip.open(CENSUS_GZ, "rb") as f:
            raw.write_bytes(b"".join(f.readline() for _ in range(20)))
    code, err = run_cli([dataset, "--input", str(raw), "--out", str(tmp_path / "s"), "--split", "1000,1,1",
                         "--min-count", "1"], capsys)
    source = str(raw) if dataset == "criteo" else "census input (20 rows)"
    assert code == 2 and re.fullmatch(
        rf"error: {re.escape(source)}: split valid and test got no rows \(train 20, valid 0, test 0\); every split "
        r"needs rows \(train.py needs valid rows for early stopping and test rows for the final score\): give more "
        r"rows or raise its part of --split", error_line(err)), err
    assert listing(tmp_path) == ["rows.txt"]


# --------------------------------------------------------------- 7. a UTF-8 byte-order mark costs no row


def test_bom_costs_no_criteo_row(tmp_path):
    text = criteo_rows(tmp_path / "rows.txt").read_bytes()
    for name, data in (("plain", text), ("bom", BOM + text), ("bomgz", gzip.compress(BOM + text))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rows.txt").write_bytes(data)
        preprocess_criteo(tmp_path / name / "rows.txt", tmp_path / name / "s", min_count=1, progress=False)
    meta = StoreReader(tmp_path / "bom" / "s").meta
    assert meta["stats"]["skipped"] == {} and meta["stats"]["rows"] == 2000
    plain = (tmp_path / "plain" / "s" / "data.mdb").read_bytes()
    assert (tmp_path / "bom" / "s" / "data.mdb").read_bytes() == plain  # the very same store
    assert (tmp_path / "bomgz" / "s" / "data.mdb").read_bytes() == plain


@pytest.mark.parametrize("dataset, source", [("census", CENSUS_GZ), ("aliccp", CCP_TRAIN),
                                             ("aliexpress", AE_TRAIN)])
def test_bom_costs_no_table_row(tmp_path, capsys, dataset, source):
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as f:
        text = b"".join(f.readline() for _ in range(300))
    for name, data in (("plain", text), ("bom", BOM + text)):
        (tmp_path / f"{name}.csv").write_bytes(data)
        code, err = run_cli([dataset, "--input", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / name),
                             "--min-count", "1", "--split", "1,1,1"], capsys)
        assert code == 0, err
    plain, bom = (StoreReader(tmp_path / name) for name in ("plain", "bom"))
    assert bom.meta["stats"]["skipped_rows"] == plain.meta["stats"]["skipped_rows"]
    assert bom.schema == plain.schema
    for split in ("train", "valid", "test"):
        for got, want in zip(bom.read_split(split), plain.read_split(split)):
            np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------- 8. --out is checked before any work


@pytest.mark.parametrize("argv", [
    ["criteo", "--synthetic", "2000"],
    ["criteo_cvr", "--synthetic", "2000"],
    ["census", "--input", "junk.txt"],
    ["aliccp", "--input", "junk.txt"],
    ["aliexpress", "--input", "junk.txt"],
    ["criteo", "--input", "junk.txt"],
])
def test_existing_store_is_refused_before_any_work(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    make_store(tmp_path / "store")
    (tmp_path / "junk.txt").write_text("not, a, dataset\n")  # reading it first would fail with another error
    code, err = run_cli([*argv, "--out", "store"], capsys)
    assert code == 2 and error_line(err) == "error: store store already exists; pass --overwrite to replace it"
    assert not (tmp_path / "data").exists()  # no synthetic rows generated
