"""Run a grid of train.py runs from a small TOML spec: resumable, one run per directory, a sweep.json record.

    python scripts/sweep.py SPEC [--out DIR] [--gpu_ids 0,1,2,3] [--dry_run]

Spec (read with tomllib; scripts/sweeps/example.toml runs on the real Criteo rows in about a minute)::

    data = "data/criteo8k"        # a store written by preprocess.py, or a list of stores (a grid axis)
    models = ["LR", "DeepFM"]      # registered model names (optional when ``preset`` names the model)
    seeds = [2018, 2019, 2020]     # every configuration runs once per seed (default [2018])
    preset = "DeepFM_criteo_x4_001"  # optional: train.py --preset NAME as the base; the spec's flags win
    gpus_per_run = 1               # optional: devices per run under --gpu_ids (DDP when > 1)

    [fixed]                        # train.py flags and model hyperparameters shared by every run
    epochs = 1
    hidden_units = [64, 64]        # a list here is one flag's values: --hidden_units 64 64

    [grid]                         # one axis per key, each a list of values: the runs are the cartesian product
    lr = [0.001, 0.0001]
    embed_size = [8, 16]
    hidden_units = [[64], [64, 64]]  # a list-valued flag: a list of lists

    [model.DCN]                    # optional, per model: its own preset, fixed flags and grid axes
    fixed = { num_cross_layers = 2 }
    grid = { net_dropout = [0.0, 0.1] }

Keys are train.py's flag names without the dashes (``python train.py --model M --help``). A model
hyperparameter in [fixed] or [grid] applies to the models that take it (like benchmark.py's SMALL_HPARAMS);
a key that is neither a training flag nor a hyperparameter of any listed model is an error, and so is a key of
``[model.M]`` that is not M's. ``data``, ``model``, ``seed``, ``preset`` and the run-directory flags
(``model_save_dir``, ``run_name``, ``resume``, ``eval_only``) are the sweep's to set. Relative store paths
are read from the current directory, as train.py reads them.

Every run gets its own directory under ``--out`` (default ``checkpoints/sweeps/<spec name>``), named from its
configuration: ``<model>/<grid values>/seed=<seed>``, e.g. ``DeepFM/lr=0.001,embed_size=16/seed=2018`` (a
short hash replaces the end of a name longer than 100 characters); a run without grid axes is
``<model>/seed=<seed>``. train.py writes its run there (--model_save_dir) and its output goes to
``train.log`` in that directory.

Runs go one after another on CPU. With ``--gpu_ids 0,1,2,3`` four go at once, each given one id
(``--gpu_ids i``); with ``gpus_per_run = 2`` two go at once, on 0,1 and 2,3, each a DDP run. A spec that sets
``gpu_ids`` or ``cpu_procs`` in [fixed] gets them passed through (runs one at a time, without --gpu_ids).

Resumable and safe to run again with the same spec and --out:
  * a finished run (metrics.json with test results) is never run again;
  * a run that has last.pt but no metrics.json continues with ``train.py --resume`` (exact on CPU);
  * a run directory with neither (killed before its first checkpoint, or a failed run) is cleared and the
    run starts again, but only when the previous sweep.json lists it and it holds nothing but what the sweep
    and train.py write there (train.log, config.json naming that directory, best.pt, TensorBoard events,
    temp files of killed writes); anything else is left alone and the run is reported as blocked;
  * a spec whose runs changed (other flags under the same directory names) is refused: pass a new --out.
A run that fails (non-zero exit) is reported with its log and the others go on; the exit status is 1 if any
run failed or was blocked, 2 for a bad spec, 130 when interrupted. ``<out>/sweep.json`` lists every run: its
directory, command, status, exit code and log. Killing the sweep (even SIGKILL) takes its running train.py
processes down too (Linux), so a restart never races an orphan.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tqdm import tqdm  # noqa: E402

TRAIN = ROOT / "train.py"
SPEC_KEYS = {"data", "models", "seeds", "preset", "gpus_per_run", "fixed", "grid", "model"}
MODEL_KEYS = {"preset", "fixed", "grid"}
SWEEP_OWNED_FLAGS = {"data", "model", "seed", "preset", "model_save_dir", "run_name", "resume", "eval_only"}
DEFAULT_SEEDS = [2018]
NAME_LIMIT = 100  # characters of a run's grid component before a hash shortens it
LOG = "train.log"
RECORD = "sweep.json"
POLL_S = 0.2
TEMP_FILE = re.compile(r"\..+\.tmp-\d+")  # train.write_atomic's temp files (left by a killed write)


class SpecError(Exception):
    """A bad spec or command line: one line, exit code 2."""


# ------------------------------------------------------------------------------------------------ the spec


@dataclass
class Run:
    """One train.py run of the sweep. ``flags``: its training flags and hyperparameters (train.py names)
    besides the model, store, seed and preset, in the order they are passed."""

    name: str
    model: str
    data: str
    seed: int
    preset: str | None
    flags: dict[str, Any]
    status: str = "pending"  # pending, running, done, failed, blocked, interrupted
    command: str = ""
    returncode: int | None = None
    log: str = ""
    seconds: float | None = None
    note: str = ""

    def identity(self) -> str:
        """What must match for a directory of an earlier sweep to be this run's."""
        return json.dumps({"model": self.model, "data": self.data, "seed": self.seed, "preset": self.preset,
                           "flags": self.flags}, sort_keys=True, default=list)


def flag_names() -> tuple[set[str], set[str]]:
    """-> (train.py's training flags, those of them that are store_true switches: ``--amp``, no ``--no-amp``)."""
    import train
    actions = [a for a in train.base_parser(add_help=False)._actions if a.dest != "help"]
    return {a.dest for a in actions}, {a.dest for a in actions if isinstance(a, argparse._StoreTrueAction)}


def model_flags(name: str) -> tuple[str, set[str]]:
    """-> (the registered spelling of model ``name``, its hyperparameter flags; ``embed_dim`` is also
    ``embed_size``, as in train.py)."""
    import models
    try:
        cls = models.get_model_class(name)
    except ValueError as e:
        raise SpecError(f"models: {e}") from None
    names = set(models.model_hparams(cls))
    return cls.__name__, names | ({"embed_size"} if "embed_dim" in names else set())


def _value(key: str, value: Any) -> Any:
    """A TOML value as a flag value: lists become tuples (one flag, several values)."""
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            raise SpecError(f"{key}: a flag value is a number, string, boolean or a flat list, got {value!r}")
        return tuple(value)
    if isinstance(value, (int, float, str, bool)):
        return value
    raise SpecError(f"{key}: unsupported value {value!r} (numbers, strings, booleans and lists only)")


def _axis(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise SpecError(f"grid.{key}: a grid axis is a non-empty list of values, e.g. {key} = [1, 2]; "
                        f"put a single value in [fixed]")
    out = [_value(f"grid.{key}", v) for v in values]
    if len({json.dumps(v, default=list) for v in out}) < len(out):
        raise SpecError(f"grid.{key}: a value repeats in {values!r}")
    return out


def _check_keys(where: str, keys: Sequence[str]) -> None:
    taken = sorted(SWEEP_OWNED_FLAGS & set(keys))
    if taken:
        raise SpecError(f"{where}: {', '.join(taken)} are set by the sweep (data, models, seeds and preset are "
                        f"top-level spec keys; the run directories are the sweep's)")


def _table(spec: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}{key}: expected a table ([{key}] or {key} = {{ ... }}), got {value!r}")
    return value


def load_spec(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"spec {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec {path} is not valid TOML: {e}") from None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"spec {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SPEC_KEYS))}")
    return spec


def _preset(name: Any, where: str) -> Any:
    from models.presets import get_preset
    if not isinstance(name, str):
        raise SpecError(f"{where}preset: a preset name (models/presets.py), got {name!r}")
    try:
        return get_preset(name)
    except ValueError as e:
        raise SpecError(f"{where}preset: {e}") from None


def _slug(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(_slug(v) for v in value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value)) or "_"


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_name(model: str, axes: list[tuple[str, Any]], seed: int) -> str:
    """``DeepFM/lr=0.001,embed_size=16/seed=2018``; the grid part keeps the spec's key order and is cut to
    NAME_LIMIT characters plus a hash of the whole when longer."""
    middle = ",".join(f"{k}={_slug(v)}" for k, v in axes)
    if len(middle) > NAME_LIMIT:
        middle = f"{middle[:NAME_LIMIT - 9]}~{_short_hash(middle)}"
    return "/".join(p for p in (model, middle, f"seed={seed}") if p)


def plan(spec: dict[str, Any]) -> list[Run]:
    """Every run of ``spec`` (a parsed TOML dict): stores x models x grid points x seeds, in that order."""
    train_flags, _ = flag_names()
    data = spec.get("data")
    datas = data if isinstance(data, list) else [data]
    if data is None or not datas or not all(isinstance(d, str) and d for d in datas):
        raise SpecError("data: a store path (preprocess.py's --out), or a list of them")
    if len(set(datas)) < len(datas):
        raise SpecError(f"data: a store repeats in {datas!r}")
    seeds = spec.get("seeds", DEFAULT_SEEDS)
    if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)) or len(set(seeds)) < len(seeds):
        raise SpecError(f"seeds: a list of distinct integers, e.g. [2018, 2019], got {seeds!r}")
    top_preset = _preset(spec["preset"], "") if "preset" in spec else None
    names = spec.get("models", [top_preset.model] if top_preset else None)
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise SpecError("models: a list of model names, e.g. [\"DeepFM\", \"DCN\"] (or give a preset)")
    per_model_specs = _table(spec, "model", "")
    resolved = {n: model_flags(n) for n in names}
    canonical = [resolved[n][0] for n in names]
    if len(set(canonical)) < len(canonical):
        raise SpecError(f"models: a model repeats in {names!r}")
    for key in per_model_specs:
        if key not in names and key not in canonical:
            raise SpecError(f"model.{key}: {key} is not in models {names!r}")
    fixed, grid = _table(spec, "fixed", ""), _table(spec, "grid", "")
    _check_keys("fixed", list(fixed))
    _check_keys("grid", list(grid))
    every_hparam = set().union(*(h for _, h in resolved.values()))
    for where, keys in (("fixed", fixed), ("grid", grid)):
        unknown = sorted(k for k in keys if k not in train_flags and k not in every_hparam)
        if unknown:
            raise SpecError(f"{where}: {', '.join(unknown)} is neither a train.py flag nor a hyperparameter of "
                            f"{', '.join(canonical)} (python train.py --model M --help lists them)")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise SpecError(f"{', '.join(both)} is in both [fixed] and [grid]; keep one")
    fixed_values = {k: _value(f"fixed.{k}", v) for k, v in fixed.items()}
    grid_values = {k: _axis(k, v) for k, v in grid.items()}
    runs: list[Run] = []
    for store in datas:
        for name in names:
            model, hparams = resolved[name]
            own = per_model_specs.get(name, per_model_specs.get(model, {}))
            where = f"model.{name}."
            if not isinstance(own, dict) or set(own) - MODEL_KEYS:
                raise SpecError(f"model.{name}: a table with keys {', '.join(sorted(MODEL_KEYS))}")
            own_fixed, own_grid = _table(own, "fixed", where), _table(own, "grid", where)
            for w, keys in ((where + "fixed", own_fixed), (where + "grid", own_grid)):
                _check_keys(w, list(keys))
                unknown = sorted(k for k in keys if k not in train_flags and k not in hparams)
                if unknown:
                    raise SpecError(f"{w}: {', '.join(unknown)} is neither a train.py flag nor a {model} "
                                    f"hyperparameter")
            preset = _preset(own["preset"], where) if "preset" in own else top_preset
            if preset is not None and preset.model.lower() != model.lower():
                raise SpecError(f"{where if 'preset' in own else ''}preset {preset.name} is a {preset.model} "
                                f"configuration; {model} needs its own: [model.{name}] preset = \"...\"")
            applies = lambda k: k in train_flags or k in hparams  # noqa: E731
            flags = {k: v for k, v in fixed_values.items() if applies(k)}
            flags.update({k: _value(f"{where}fixed.{k}", v) for k, v in own_fixed.items()})
            axes = {k: v for k, v in grid_values.items() if applies(k) and k not in own_fixed}
            axes.update({k: _axis(k, v) for k, v in own_grid.items()})
            for k in axes:
                flags.pop(k, None)
            keys = ([("data", None)] if len(datas) > 1 else []) + [(k, None) for k in axes]
            for point in itertools.product(*axes.values()):
                chosen = dict(zip(axes, point))
                shown = [("data", Path(store).name)] if len(datas) > 1 else []
                shown += list(chosen.items())
                assert len(shown) == len(keys)
                for seed in seeds:
                    runs.append(Run(run_name(model, shown, seed), model, store, seed,
                                    preset.name if preset else None, {**flags, **chosen}))
    dup = _duplicates([r.name for r in runs])
    if dup:  # values that differ only in characters a directory name cannot hold
        for r in runs:
            if r.name in dup:
                head, seed = r.name.rsplit("/", 1)
                r.name = f"{head}~{_short_hash(r.identity())}/{seed}"
    return runs


def _duplicates(names: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    return {n for n in names if n in seen or seen.add(n)}  # type: ignore[func-returns-value]


# ------------------------------------------------------------------------------------------------ commands


def flag_argv(flags: dict[str, Any], store_true: set[str]) -> list[str]:
    """train.py argv of ``flags`` (models/presets.to_argv), leaving out a false store_true switch."""
    from models.presets import to_argv
    return to_argv({k: v for k, v in flags.items() if not (v is False and k in store_true)})


def new_argv(run: Run, run_dir: Path, hardware: list[str], store_true: set[str]) -> list[str]:
    preset = ["--preset", run.preset] if run.preset else []
    return [sys.executable, str(TRAIN), *preset, "--model", run.model, "--data", str(Path(run.data).absolute()),
            "--seed", str(run.seed), *flag_argv(run.flags, store_true), *hardware, "--model_save_dir", str(run_dir)]


def resume_argv(run_dir: Path, hardware: list[str]) -> list[str]:
    """Everything else (flags, store, seed) comes from last.pt's saved config."""
    return [sys.executable, str(TRAIN), "--resume", str(run_dir), *hardware]


# ------------------------------------------------------------------------------------------------ run directories


def finished(run_dir: Path) -> bool:
    """A finished run: metrics.json with test results (train.py writes it last, atomically)."""
    try:
        return bool(json.loads((run_dir / "metrics.json").read_text()).get("test"))
    except (OSError, ValueError, AttributeError):
        return False


def foreign_entries(run_dir: Path) -> list[str]:
    """The entries of an unfinished run dir that neither the sweep nor train.py writes there."""
    out = []
    for p in sorted(run_dir.iterdir()):
        name = p.name
        ours = p.is_file() and not p.is_symlink() and (
            name in (LOG, "best.pt") or name.startswith("events.out.tfevents.") or TEMP_FILE.fullmatch(name))
        if name == "config.json" and p.is_file() and not p.is_symlink():
            try:
                ours = Path(json.loads(p.read_text())["run_dir"]).resolve() == run_dir.resolve()
            except (OSError, ValueError, KeyError, TypeError):
                ours = False
        if not ours:
            out.append(name)
    return out


def action(run_dir: Path, listed: bool) -> tuple[str, str]:
    """What a run needs -> (``done`` | ``new`` | ``resume`` | ``clear`` | ``blocked``, why)."""
    if not run_dir.exists():
        return "new", ""
    if not run_dir.is_dir() or run_dir.is_symlink():
        return "blocked", f"{run_dir} is not a directory the sweep made; move it away"
    if finished(run_dir):
        return "done", ""
    if (run_dir / "last.pt").is_file():
        return "resume", ""
    if not listed:
        return "blocked", f"{run_dir} exists but the sweep's {RECORD} does not list it; move it away"
    foreign = foreign_entries(run_dir)
    if foreign:
        return "blocked", (f"{run_dir} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which "
                           f"the sweep did not write; move them away to let the run start again")
    return "clear", ""


def clear(run_dir: Path) -> None:
    """Remove an unfinished run dir that :func:`action` found to hold only the sweep's and train.py's files."""
    for p in run_dir.iterdir():
        p.unlink()
    run_dir.rmdir()


# ------------------------------------------------------------------------------------------------ the record


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=list) + "\n")
    os.replace(tmp, path)


def read_record(out: Path) -> dict[str, Any]:
    path = out / RECORD
    if not path.is_file():
        return {}
    try:
        return {r["dir"]: r for r in json.loads(path.read_text())["runs"]}
    except (ValueError, KeyError, TypeError):
        raise SpecError(f"{path} is not a sweep record; pass another --out") from None


def record(out: Path, spec_path: Path, runs: Sequence[Run]) -> None:
    write_json(out / RECORD, {"spec": str(spec_path), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "runs": [{"dir": r.name, **asdict(r)} for r in runs]})


def check_unchanged(runs: Sequence[Run], previous: dict[str, Any]) -> None:
    for r in runs:
        old = previous.get(r.name)
        if old is None:
            continue
        was = Run(**{k: old[k] for k in ("name", "model", "data", "seed", "preset", "flags")})
        was.flags = {k: tuple(v) if isinstance(v, list) else v for k, v in was.flags.items()}
        if was.identity() != r.identity():
            raise SpecError(f"{r.name} was made by an earlier sweep with other settings ({was.identity()}); the "
                            f"spec changed: pass a new --out")


# ------------------------------------------------------------------------------------------------ running


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the sweep dies (Linux prctl PR_SET_PDEATHSIG), so that a killed
    sweep leaves no train.py running into its directories."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class Active:
    run: Run
    proc: subprocess.Popen
    slot: int
    run_dir: Path
    log_file: Any
    pending_log: Path | None  # where the log is until train.py has claimed the run dir
    started: float = field(default_factory=time.monotonic)


class Sweep:
    def __init__(self, out: Path, runs: list[Run], slots: list[list[str]], previous: dict[str, Any],
                 spec_path: Path) -> None:
        self.out, self.runs, self.slots, self.previous, self.spec_path = out, runs, slots, previous, spec_path
        self.train_flags, self.store_true = flag_names()
        self.active: dict[int, Active] = {}
        self.pending_dir = out / ".pending_logs"

    def save(self) -> None:
        record(self.out, self.spec_path, self.runs)

    def start(self, run: Run, slot: int) -> None:
        run_dir = self.out / run.name
        what, why = action(run_dir, run.name in self.previous)
        if what == "done":
            run.status = "done"
            return
        if what == "blocked":
            run.status, run.note = "blocked", why
            return
        hardware = self.slots[slot]
        if what == "resume":
            argv = resume_argv(run_dir, hardware)
            log_file, pending = open(run_dir / LOG, "a"), None
        else:
            if what == "clear":
                clear(run_dir)
            argv = new_argv(run, run_dir, hardware, self.store_true)
            self.pending_dir.mkdir(exist_ok=True)
            pending = self.pending_dir / f"{_short_hash(run.name)}.log"
            log_file = open(pending, "w")
        run.command, run.status, run.log = shlex.join(argv), "running", str(run_dir / LOG)
        run.note = "resumed from last.pt" if what == "resume" else ""
        log_file.write(f"# sweep: {run.command}\n")
        log_file.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent)
        self.active[slot] = Active(run, proc, slot, run_dir, log_file, pending)
        self.save()

    def place_log(self, a: Active, done: bool) -> None:
        """Move a new run's log into its run dir once train.py has claimed the dir (config.json), or at exit."""
        if a.pending_log is None:
            return
        if (a.run_dir / "config.json").exists() or done:
            a.run_dir.mkdir(parents=True, exist_ok=True)
            os.replace(a.pending_log, a.run_dir / LOG)  # the child keeps writing to the same file
            a.pending_log = None

    def reap(self, a: Active, code: int) -> None:
        self.place_log(a, done=True)
        a.log_file.close()
        r = a.run
        r.returncode, r.seconds = code, round(time.monotonic() - a.started, 1)
        if code == 0 and finished(a.run_dir):
            r.status = "done"
        else:
            r.status = "failed"
            tail = [line for line in (a.run_dir / LOG).read_text(errors="replace").splitlines() if line.strip()]
            r.note = tail[-1][:300] if tail else "(no output)"
            tqdm.write(f"sweep: {r.name} failed (exit code {code}): {r.note}\n       log: {r.log}")

    def stop_all(self) -> None:
        for a in self.active.values():
            a.proc.terminate()
        for a in self.active.values():
            try:
                a.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            self.place_log(a, done=True)
            a.log_file.close()
            a.run.status, a.run.note = "interrupted", "the sweep was interrupted; run it again to continue"
        self.active.clear()

    def run_all(self) -> None:
        todo = [r for r in self.runs if r.status not in ("done", "blocked")]
        counts = lambda s: sum(r.status == s for r in self.runs)  # noqa: E731
        bar = tqdm(total=len(self.runs), initial=counts("done"), desc="sweep", unit="run", dynamic_ncols=True)
        shown = ""
        try:
            while todo or self.active:
                for slot in range(len(self.slots)):
                    while todo and slot not in self.active:
                        run = todo.pop(0)
                        self.start(run, slot)
                        if run.status in ("done", "blocked"):
                            bar.update(1)
                            if run.status == "blocked":
                                tqdm.write(f"sweep: {run.name} blocked: {run.note}")
                for slot, a in list(self.active.items()):
                    self.place_log(a, done=False)
                    code = a.proc.poll()
                    if code is not None:
                        del self.active[slot]
                        self.reap(a, code)
                        bar.update(1)
                        self.save()
                state = (f"done {counts('done')}, running {len(self.active)}, failed "
                         f"{counts('failed') + counts('blocked')}")
                if state != shown:  # the elapsed time refreshes on its own (tqdm's mininterval)
                    bar.set_postfix_str(state)
                    shown = state
                if self.active:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop_all()
            raise
        finally:
            bar.close()
            self.save()
            if self.pending_dir.is_dir() and not any(self.pending_dir.iterdir()):
                self.pending_dir.rmdir()


# ------------------------------------------------------------------------------------------------ main


def make_slots(gpu_ids: str | None, per_run: int, runs: Sequence[Run]) -> list[list[str]]:
    """The hardware flags of each concurrent slot: one CPU slot without --gpu_ids, else --gpu_ids groups."""
    if gpu_ids is None:
        return [[]]
    ids = [i.strip() for i in gpu_ids.split(",") if i.strip()]
    if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) < len(ids):
        raise SpecError(f"--gpu_ids: distinct comma-separated CUDA ids like 0,1,2,3, got {gpu_ids!r}")
    if any(k in r.flags for r in runs for k in ("gpu_ids", "cpu_procs")):
        raise SpecError("the spec sets gpu_ids or cpu_procs itself: drop --gpu_ids, or drop them from the spec "
                        "and use gpus_per_run")
    if len(ids) < per_run:
        raise SpecError(f"gpus_per_run = {per_run} needs at least that many --gpu_ids, got {len(ids)}")
    if len(ids) % per_run:
        print(f"sweep: gpus_per_run = {per_run}: --gpu_ids {', '.join(ids[len(ids) - len(ids) % per_run:])} "
              f"left unused", file=sys.stderr)
    return [["--gpu_ids", ",".join(ids[i:i + per_run])] for i in range(0, len(ids) - per_run + 1, per_run)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="the sweep's TOML spec")
    p.add_argument("--out", type=Path, default=None, help="sweep dir (default checkpoints/sweeps/<spec name>)")
    p.add_argument("--gpu_ids", default=None, help="run on these CUDA ids, one run per id at a time (or per "
                                                   "gpus_per_run ids); default: CPU, one run at a time")
    p.add_argument("--dry_run", action="store_true", help="print each run's action and command; start nothing")
    return p.parse_args(argv)


def dry_run(out: Path, runs: Sequence[Run], slots: list[list[str]], previous: dict[str, Any],
            store_true: set[str]) -> None:
    for i, r in enumerate(runs):
        run_dir = out / r.name
        what, why = action(run_dir, r.name in previous)
        hardware = slots[i % len(slots)]
        argv = resume_argv(run_dir, hardware) if what == "resume" else new_argv(r, run_dir, hardware, store_true)
        shown = "" if what in ("done", "blocked") else "  " + shlex.join(argv)
        print(f"{what:8} {r.name}{': ' + why if why else ''}{shown}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec)
        runs = plan(spec)
        per_run = spec.get("gpus_per_run", 1)
        if type(per_run) is not int or per_run < 1:
            raise SpecError(f"gpus_per_run: an integer >= 1, got {per_run!r}")
        slots = make_slots(args.gpu_ids, per_run, runs)
        out = args.out or Path("checkpoints") / "sweeps" / args.spec.stem
        if out.exists() and not out.is_dir():
            raise SpecError(f"--out {out} is a file; pass a directory")
        previous = read_record(out) if out.is_dir() else {}
        check_unchanged(runs, previous)
    except SpecError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        dry_run(out, runs, slots, previous, flag_names()[1])
        return 0
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".sweep.lock", "a")  # held (flock) while the sweep runs; never written
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"sweep.py: error: another sweep is running in {out}; wait for it or pass another --out",
              file=sys.stderr)
        return 2
    for r in runs:  # carry what the last sweep knew about runs that are already finished
        old = previous.get(r.name)
        if old and finished(out / r.name):
            r.command, r.returncode, r.log, r.seconds = old["command"], old["returncode"], old["log"], old["seconds"]
    sweep = Sweep(out, runs, slots, previous, args.spec)
    for r in runs:
        if finished(out / r.name):
            r.status = "done"
    sweep.save()  # before anything starts: every run dir the sweep will make is listed for a restart
    start = time.monotonic()
    try:
        sweep.run_all()
    except KeyboardInterrupt:
        print(f"sweep.py: interrupted; run the same command again to continue ({out / RECORD})", file=sys.stderr)
        return 130
    bad = [r for r in runs if r.status in ("failed", "blocked")]
    done = sum(r.status == "done" for r in runs)
    print(f"sweep.py: {done}/{len(runs)} runs done, {len(bad)} failed or blocked in "
          f"{time.monotonic() - start:.0f} s; record {out / RECORD}")
    for r in bad:
        print(f"  {r.status}: {r.name}: {r.note}" + (f" (log: {r.log})" if r.status == "failed" else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
