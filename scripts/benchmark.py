"""One benchmark command: the speed and quality tables of this repo, beside the published BARS numbers.

    python scripts/benchmark.py [--rows 1000000] [--models all|M1,M2] [--seeds 3] [--out checkpoints/benchmark]
                                [--quick]

Writes ``<out>/benchmark.md`` (the Markdown it prints) and ``<out>/benchmark.json`` (every number, the machine,
the exact commands). ``--quick``: 50,000 rows, one seed, LR, DeepFM, DCN and MMoE (unless --models), 3 steps.

1. Speed, on ``--rows`` rows of synthetic raw Criteo (dataset/synthetic.py), measured with
   scripts/bench_data.py's functions: preprocessing rows/s (ours on every row, pytorch-fm's approach on a
   bounded prefix) and loader samples/s (2 workers, batch 4096, whole epochs after a warm-up epoch). Then per
   model, training samples/s: ``--warmup`` then ``--steps`` timed steps of train.py's ``train_step`` (forward,
   BCE, backward, Adam) at ``--batch-size``, on batches read from the store beforehand (the model's cost, not
   the loader's). Each model runs in a fresh spawned process; its peak memory is that process's peak RSS
   (VmHWM, read by the process at the end; :func:`peak_rss_mib` says why not ru_maxrss) and, on CUDA,
   ``torch.cuda.max_memory_allocated``. The CUDA columns appear only when ``torch.cuda.is_available()``.
   Models keep their default hyperparameters (the BARS sizes, embedding 16); multi-task models get the
   click label twice (speed needs no label meaning).
2. Quality, as mean +- std over ``--seeds`` seeds; seed s makes each store with split seed s and trains every
   model with ``--seed s``, through preprocess.main and train.main (commands in the output). Models are small
   (SMALL_HPARAMS) since the data is small; the presets are for the full dataset.
   * single-task models: the real Criteo rows (../shared/data/criteo/head8k.txt + spread4k.txt, 12k rows,
     ``--min-count 2``), test AUC and logloss;
   * multi-task models (ESMM, MMoE, PLE, SharedBottom): the census store (income > 50K, never married), test
     AUC per task. Census labels are not a funnel: ESMM's pCTCVR = pCTR * pCVR assumes task 2 implies task 1,
     so its loss pushes pCTR (the income tower) toward marital too; both of its columns are shown for
     completeness, not as ESMM's quality.
3. The BARS Criteo_x4_001 presets (models/presets.py): published (BARS, full Criteo_x4) beside measured here.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # the repo, and bench_data's own imports

import torch  # noqa: E402

import models  # noqa: E402
import preprocess  # noqa: E402
import train  # noqa: E402
import bench_data  # noqa: E402
from bench_data import bench_our_loader, bench_preprocessing, in_fresh_process, timed  # noqa: E402
from dataset.loader import make_loader  # noqa: E402
from dataset.store import StoreReader  # noqa: E402
from dataset.synthetic import write_synthetic_criteo  # noqa: E402
from models.presets import PREPROCESS_COMMAND, PRESETS, SHARED_FLAGS, to_argv  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
CRITEO_FILES = ("criteo/head8k.txt", "criteo/spread4k.txt")
CENSUS_FILE = "census/census-income.test.gz"
CRITEO_MIN_COUNT = 2
FIRST_SEED = 2018
QUICK_MODELS = ("LR", "DeepFM", "DCN", "MMoE")
CACHED_BATCHES = 4
LOADER_WORKERS = 2
# Quality runs: small models for 12k rows; each key applies to the models that take it.
SMALL_HPARAMS: dict[str, Any] = {"hidden_units": (64, 64), "num_cross_layers": 2, "attention_layers": 2,
                                 "attention_dim": 16, "cin_layer_sizes": (32, 32), "tower_dim": 32,
                                 "bottom_units": (64,), "expert_units": (16,), "tower_units": (16,),
                                 "hidden_units2": (64,), "fusion_heads": 8, "fs_hidden_units": (64,),
                                 "block2_units": (64,), "block_dim": 64, "top_units": (64, 64),
                                 "logarithmic_neurons": 64, "dnn_hidden_units": (64, 64), "channels": (8, 16, 32)}
QUALITY_FLAGS: dict[str, dict[str, Any]] = {
    "criteo": {"embed_size": 16, "batch_size": 256, "epochs": 10, "patience": 2, "num_workers": 0},
    "census": {"embed_size": 16, "batch_size": 1024, "epochs": 10, "patience": 2, "num_workers": 0},
}
CENSUS_TASKS = ("income", "marital")
NOT_A_FUNNEL = {"ESMM"}


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None, help="synthetic rows for the speed tables (default 1000000)")
    p.add_argument("--models", default=None, help="all, or comma-separated names (default all)")
    p.add_argument("--seeds", type=int, default=None, help="quality runs per model (default 3)")
    p.add_argument("--out", type=Path, default=Path("checkpoints/benchmark"),
                   help="writes benchmark.md and benchmark.json here")
    p.add_argument("--quick", action="store_true", help="50000 rows, 1 seed, LR/DeepFM/DCN/MMoE, 3 steps")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per training step in the speed table")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps per model")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per model (default 10)")
    p.add_argument("--skip", choices=["speed", "quality"], action="append", default=[],
                   help="leave out a part (repeatable)")
    args = p.parse_args(argv)
    quick = {"rows": 50_000, "seeds": 1, "steps": 3, "models": ",".join(QUICK_MODELS)}
    full = {"rows": 1_000_000, "seeds": 3, "steps": 10, "models": "all"}
    return settle_args(p, args, quick if args.quick else full, ("rows", "seeds", "batch_size", "steps"),
                       select_models)


def settle_args(p: argparse.ArgumentParser, args: argparse.Namespace, defaults: dict[str, Any],
                positive: Sequence[str], select: Callable[[str], list[str]]) -> argparse.Namespace:
    """A benchmark's parsed flags, settled: each flag left None takes its value from ``defaults`` (the --quick or
    the full set), the ``positive`` counts must be >= 1 and --warmup >= 0, and --models goes through ``select``
    (its ValueError is the parser's error)."""
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for flag in positive:
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    try:
        args.models = select(args.models)
    except ValueError as e:
        p.error(f"--models: {e}")
    return args


def select_models(spec: str) -> list[str]:
    """``"all"`` -> every registered model this benchmark's stores can feed; ``"deepfm,DCN"`` -> ["DeepFM",
    "DCN"] (names checked). The behaviour-sequence models need histories, which the Criteo and census stores
    lack: "all" leaves them out and naming one is an error that points at scripts/bench_features.py."""
    if spec.strip().lower() == "all":
        return [n for n in models.model_names() if not models.get_model_class(n).needs_sequences]
    names = [models.get_model_class(n.strip()).__name__ for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("no model named; pass all or comma-separated names like DeepFM,DCN")
    sequence = [n for n in names if models.get_model_class(n).needs_sequences]
    if sequence:
        raise ValueError(f"{', '.join(sequence)} attend over behaviour histories, which the Criteo and census stores "
                         f"lack: measure them with scripts/bench_features.py --amazon-models {','.join(sequence)}")
    return names


# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "cuda_devices": cuda,
            "load_average_1min": os.getloadavg()[0]}


def machine_line(m: dict[str, Any]) -> str:
    cuda = ", ".join(m["cuda_devices"]) or "none"
    return (f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), torch {m['torch']}, "
            f"Python {m['python']}, CUDA device: {cuda}; 1-min load average at the end {m['load_average_1min']:.1f}.")


# ------------------------------------------------------------------------------------------------ speed


def bench_pipeline(rows: int, batch_size: int, work: Path) -> dict[str, Any]:
    """Synthetic raw Criteo -> store (``work/store``) -> loader, timed with bench_data's functions."""
    raw, gen_s = timed(write_synthetic_criteo, work / "criteo_synthetic.txt", rows, 0)
    opts = bench_data.parse_args(["--rows", str(rows), "--baseline-rows", str(min(rows, 100_000)), "--batch-size",
                                  str(batch_size), "--workers", str(LOADER_WORKERS), "--repeat", "1"])
    with contextlib.redirect_stdout(sys.stderr):
        pre = bench_preprocessing(raw, work, opts)
    load = bench_our_loader(work / "store", opts)
    return {"rows": rows, "generate_seconds": gen_s, "batch_size": batch_size, "workers": LOADER_WORKERS,
            "preprocessing": pre, "loader": load}


def _cached_batches(store: StoreReader, batch_size: int, tasks: int, device: torch.device) -> list[train.Batch]:
    """The first CACHED_BATCHES training batches, copied onto ``device``; labels tiled to ``tasks`` columns."""
    loader = make_loader(store, "train", batch_size, train=True, num_workers=0)
    out = []
    for batch in islice(iter(loader), CACHED_BATCHES):
        batch = {k: v.clone() for k, v in batch.items()}
        batch["label"] = batch["label"][:, :1].repeat(1, tasks)
        out.append(train.to_device(batch, device))
    return out


def measure_training(store_path: str, model_name: str, device_name: str, batch_size: int, warmup: int,
                     steps: int) -> dict[str, float]:
    """[runs in a fresh process] Training samples/s of one model and this process's peak memory."""
    torch.manual_seed(0)
    device = torch.device(device_name)
    store = StoreReader(store_path)
    cls = models.get_model_class(model_name)
    schema = store.schema
    if cls.multitask:
        schema = dataclasses.replace(schema, labels=(schema.labels[0], f"{schema.labels[0]}_copy"),
                                     task_types=(schema.task_types[0],) * 2)
    batches = _cached_batches(store, batch_size, schema.num_tasks, device)
    model = models.build_model(model_name, schema).to(device)
    seconds = time_train_steps(model, batches, device, warmup, steps)
    out = {"samples_per_s": steps * batch_size / seconds, "ms_per_step": 1000 * seconds / steps,
           "params": sum(p.numel() for p in model.parameters()), "peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def time_train_steps(model: torch.nn.Module, batches: Sequence[train.Batch], device: torch.device, warmup: int,
                     steps: int) -> float:
    """Seconds of ``steps`` calls of train.py's ``train_step`` (forward, BCE, backward, Adam lr 1e-3 as
    train.py makes it, no weight decay or embedding L2) after ``warmup`` untimed ones, cycling through
    ``batches``; on CUDA it waits for the device at both ends."""
    opts = argparse.Namespace(optimizer="adam", lr=1e-3, weight_decay=0.0, task_weights=None, embed_l2=0.0)
    optimizer, loss_fn = train.make_optimizer(model, opts), train.make_loss_fn(model, opts)
    ctx = train.Ctx(device=device)
    wait = partial(torch.cuda.synchronize, device) if device.type == "cuda" else lambda: None  # train_step never waits
    for i in range(warmup + steps):
        if i == warmup:
            wait()
            start = time.perf_counter()
        train.train_step(model, batches[i % len(batches)], optimizer, loss_fn, ctx)
    wait()
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: VmHWM of /proc/self/status on Linux. Not ru_maxrss there:
    Linux keeps a forked child's maximum RSS across exec, so a spawned process (and the parent's
    RUSAGE_CHILDREN) would report at least the parent's RSS at spawn time."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def idle_rss() -> float:
    """[runs in a fresh process] Peak RSS (MiB) of a process that imported torch and the repo, nothing more."""
    return peak_rss_mib()


def bench_training(store: Path, names: Sequence[str], devices: Sequence[str], batch_size: int, warmup: int,
                   steps: int) -> dict[str, dict[str, Any]]:
    """-> {model: {device: measure_training result, or {"error": message}}}."""
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        results[name] = {}
        for device in devices:
            print(f"speed: {name} on {device}", file=sys.stderr)
            try:
                results[name][device] = in_fresh_process(measure_training, str(store), name, device, batch_size,
                                                         warmup, steps)
            except Exception as e:  # a model that fails (or is killed) is reported, the others still run
                results[name][device] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    return results


def run_speed(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    pipeline = bench_pipeline(args.rows, args.batch_size, work)
    training = bench_training(work / "store", args.models, devices, args.batch_size, args.warmup, args.steps)
    return {"pipeline": pipeline, "devices": devices, "idle_rss_mib": in_fresh_process(idle_rss),
            "training": training, "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps}


# ------------------------------------------------------------------------------------------------ quality


def quality_hparams(name: str) -> dict[str, Any]:
    """The SMALL_HPARAMS entries that model ``name`` takes."""
    return {k: v for k, v in SMALL_HPARAMS.items() if k in models.model_hparams(models.get_model_class(name))}


def check_quality_inputs() -> None:
    """The sample data the quality tables read must exist (checked before the long speed part)."""
    missing = [f for f in (*CRITEO_FILES, CENSUS_FILE) if not (SHARED_DATA / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found in {SHARED_DATA}: the quality tables read that "
                                f"sample data (see its README.md); restore it, or pass --skip quality")


def criteo_input(work: Path) -> tuple[Path, str]:
    """The 12k real Criteo rows as one file -> (path, the shell command that makes it)."""
    path = work / "criteo12k.txt"
    with open(path, "wb") as out:
        for name in CRITEO_FILES:
            out.write((SHARED_DATA / name).read_bytes())
    return path, f"cat {' '.join(f'../shared/data/{f}' for f in CRITEO_FILES)} > $WORK/{path.name}"


def portable(argv: Sequence[str], work: Path) -> str:
    """A command line as recorded in the output: this run's temp dir reads ``$WORK``, the shared data
    ``../shared/data`` (the paths relative to the repo root)."""
    line = shlex.join(argv)
    return line.replace(str(work), "$WORK").replace(str(SHARED_DATA), "../shared/data")


def make_store(dataset: str, input_path: Path, seed: int, work: Path) -> tuple[Path, list[str]]:
    """preprocess.py ``dataset`` with split seed ``seed`` -> (store path, its argv)."""
    out = work / f"{dataset}_seed{seed}"
    argv = [dataset, "--input", str(input_path), "--out", str(out), "--seed", str(seed), "--overwrite"]
    if dataset == "criteo":
        argv += ["--min-count", str(CRITEO_MIN_COUNT)]
    with contextlib.redirect_stdout(sys.stderr):
        code = preprocess.main(argv)
    if code:
        raise RuntimeError(f"python preprocess.py {shlex.join(argv)} failed with exit code {code}")
    return out, argv


def train_argv(dataset: str, name: str, store: Path, seed: int, run_dir: Path) -> list[str]:
    flags = {"model": name, **QUALITY_FLAGS[dataset], **quality_hparams(name)}
    return ["--data", str(store), "--seed", str(seed), "--model_save_dir", str(run_dir), *to_argv(flags)]


def train_once(argv: list[str], run_dir: Path) -> dict[str, Any]:
    """train.main(argv) in this process (its output goes to ``<run_dir>.log``) -> its metrics.json."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_name(f"{run_dir.name}.log")  # next to the run dir: train.py starts runs in new dirs only
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        code = train.main(argv)
    if code:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"train.py exited with {code}: {tail[0]}")
    return json.loads((run_dir / "metrics.json").read_text())


def run_quality_dataset(dataset: str, input_path: Path, names: Sequence[str], seeds: Sequence[int],
                        work: Path) -> dict[str, Any]:
    """Every model of ``names`` on ``dataset`` once per seed -> per-model runs and the commands used."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    commands: list[str] = []
    for seed in seeds:
        store, pre_argv = make_store(dataset, input_path, seed, work)
        commands.append(portable(["python", "preprocess.py", *pre_argv], work))
        for name in names:
            run_dir = work / "runs" / dataset / f"{name}_seed{seed}"
            argv = train_argv(dataset, name, store, seed, run_dir)
            commands.append(portable(["python", "train.py", *argv], work))
            print(f"quality: {name} on {dataset}, seed {seed}", file=sys.stderr)
            try:
                runs[name].append({"seed": seed, **train_once(argv, run_dir)})
            except Exception as e:  # reported in the table, the other runs go on
                runs[name].append({"seed": seed, "error": str(e)})
    return {"runs": runs, "commands": commands}


def run_quality(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    single = [n for n in args.models if not models.get_model_class(n).multitask]
    multi = [n for n in args.models if models.get_model_class(n).multitask]
    out: dict[str, Any] = {"seeds": seeds, "flags": QUALITY_FLAGS, "small_hparams": SMALL_HPARAMS}
    if single:
        path, cat = criteo_input(work)
        out["criteo"] = {"make_input": cat, **run_quality_dataset("criteo", path, single, seeds, work)}
    if multi:
        out["census"] = run_quality_dataset("census", SHARED_DATA / CENSUS_FILE, multi, seeds, work)
    return out


# ------------------------------------------------------------------------------------------------ tables


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first l, others r).
    A ``|`` or line break inside a cell is escaped, so error messages cannot break the table."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError(f"every row and align need {len(headers)} entries (one per header)")
    rule = ["---" if a == "l" else "---:" for a in align]
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    lines = [headers, rule, *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None] | None:
    """``[0.7, 0.72]`` -> ``(0.71, 0.0141...)``: the mean and the sample standard deviation (n - 1) of the
    values that are not NaN; std None for one value; None for none. The numbers behind :func:`mean_std`
    (scripts/results.py sorts and compares them)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``[0.7, 0.72]`` -> ``"0.7100 ± 0.0141"`` (sample std); one value -> ``"0.7000"``; none -> ``"n/a"``."""
    stats = mean_and_std(values)
    if stats is None:
        return "n/a"
    mean, std = stats
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _speed_cells(r: dict[str, Any], device: str) -> list[str]:
    if "error" in r:
        return [f"failed: {r['error']}", ""]
    memory = r["peak_cuda_mib"] if device == "cuda" else r["peak_rss_mib"]
    return [f"{r['samples_per_s']:,.0f}", f"{memory:,.0f}"]


def speed_section(speed: dict[str, Any]) -> str:
    pipe = speed["pipeline"]
    pre, load = pipe["preprocessing"], pipe["loader"]
    data_rows = [
        ["preprocessing (ours: dataset.criteo)", f"{pre['ours_rows_per_s']:,.0f} rows/s",
         f"all {pre['ours_rows']:,} rows, min-count 10, bucketized dense"],
        ["preprocessing (pytorch-fm's approach)", f"{pre['pytorchfm_rows_per_s']:,.0f} rows/s",
         f"first {pre['pytorchfm_rows']:,} rows (scripts/baselines_pytorchfm.py)"],
        ["loader (ours: dataset.loader)", f"{load['ours_samples_per_s']:,.0f} samples/s",
         f"{pipe['workers']} workers, batch {pipe['batch_size']}, {load['ours_rows']:,} rows after a warm-up epoch"],
    ]
    headers = ["model", "params"]
    for device in speed["devices"]:
        headers += [f"{device.upper()} samples/s",
                    "CUDA peak allocated (MiB)" if device == "cuda" else "CPU peak RSS (MiB)"]
    rows = []
    for name, per_device in speed["training"].items():
        params = next((r["params"] for r in per_device.values() if "params" in r), None)
        row = [name, f"{params:,}" if params is not None else ""]
        for device in speed["devices"]:
            row += _speed_cells(per_device[device], device)
        rows.append(row)
    return "\n\n".join([
        f"### Speed: data pipeline ({pipe['rows']:,} synthetic Criteo rows)",
        markdown_table(["stage", "throughput", "measured on"], data_rows, "lrl"),
        f"### Speed: training, batch {speed['batch_size']}, {speed['warmup']} warm-up + {speed['steps']} timed steps "
        f"(default hyperparameters, embedding 16; peak RSS of a fresh process per model, which includes "
        f"{speed['idle_rss_mib']:,.0f} MiB for the interpreter, torch and the repo)",
        markdown_table(headers, rows),
    ])


def _runs_ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r]


def _failures(runs: list[dict[str, Any]]) -> str:
    failed = [r for r in runs if "error" in r]
    return f"{len(failed)} failed: {failed[0]['error']}" if failed else ""


def criteo_quality_rows(criteo: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, runs in criteo["runs"].items():
        ok = _runs_ok(runs)
        rows.append([name, mean_std([r["test"]["auc"] for r in ok]), mean_std([r["test"]["logloss"] for r in ok]),
                     mean_std([r["best_epoch"] for r in ok], 1), _failures(runs)])
    return rows


def census_quality_rows(census: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, runs in census["runs"].items():
        ok = _runs_ok(runs)
        note = ("census labels are not a funnel (never married does not imply income > 50K): ESMM's product "
                "pCTR * pCVR is mis-specified here, which also pulls its income tower") if name in NOT_A_FUNNEL else ""
        rows.append([name, *[mean_std([r["test"][f"{t}/auc"] for r in ok]) for t in CENSUS_TASKS],
                     mean_std([r["test"]["logloss"] for r in ok]), "; ".join(filter(None, [note, _failures(runs)]))])
    return rows


def _command_block(title: str, commands: Sequence[str]) -> str:
    return f"<details><summary>{title}</summary>\n\n```\n" + "\n".join(commands) + "\n```\n</details>"


def quality_section(quality: dict[str, Any]) -> str:
    seeds = ", ".join(map(str, quality["seeds"]))
    small = ", ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
                      for k, v in quality["small_hparams"].items())
    parts = ["### Quality, measured here",
             f"Test metrics, mean ± std over seeds {seeds} (each seed is the split seed and the model seed), of "
             f"the best-valid-AUC checkpoint. Small models: embedding 16, {small} (where the model has them). "
             f"`$WORK` is the benchmark's temporary directory."]
    if "criteo" in quality:
        flags = " ".join(to_argv(quality["flags"]["criteo"]))
        parts += [f"#### Criteo, 12k real rows (head8k + spread4k, min-count {CRITEO_MIN_COUNT}, split 8/1/1), "
                  f"`{flags}`",
                  markdown_table(["model", "test AUC", "test logloss", "epochs to the best valid AUC", "note"],
                                 criteo_quality_rows(quality["criteo"]), "lrrrl"),
                  _command_block("commands", [quality["criteo"]["make_input"], *quality["criteo"]["commands"]])]
    if "census" in quality:
        flags = " ".join(to_argv(quality["flags"]["census"]))
        parts += [f"#### Census multi-task: income > 50K, never married (99,762 rows of census-income.test, "
                  f"split 8/1/1), `{flags}`",
                  markdown_table(["model", "income AUC", "marital AUC", "mean test logloss", "note"],
                                 census_quality_rows(quality["census"]), "lrrrl"),
                  _command_block("commands", quality["census"]["commands"])]
    return "\n\n".join(parts)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def presets_section(quality: dict[str, Any] | None) -> str:
    measured = {}
    if quality and "criteo" in quality:
        measured = {n: mean_std([r["test"]["auc"] for r in _runs_ok(runs)]) for n, runs in
                    quality["criteo"]["runs"].items()}
    shared = " ".join(to_argv(SHARED_FLAGS))
    rows = [[p.model, f"[{p.name}]({p.source})", _fmt(p.auc), _fmt(p.logloss), measured.get(p.model, ""),
             f"`{p.command()}`"] for p in PRESETS.values()]
    return "\n\n".join([
        "### Presets: published (BARS, full Criteo_x4) vs measured here (12k rows, small models)",
        f"Data: `{PREPROCESS_COMMAND}`. Every preset sets `{shared}` plus the model's published "
        f"hyperparameters and embedding regularizer (models/presets.py). The two AUC columns are not comparable "
        f"runs: 45M rows and the BARS sizes against 12k rows and small models.",
        markdown_table(["model", "preset", "published AUC (BARS, full Criteo_x4)", "published logloss",
                        "measured here: AUC, 12k rows", "command"], rows, "llrrrl"),
    ])


def render(results: dict[str, Any]) -> str:
    parts = ["## Benchmark", machine_line(results["machine"]),
             f"Command: `{results['command']}` ({results['seconds'] / 60:.1f} min)."]
    if "speed" in results:
        parts.append(speed_section(results["speed"]))
    if "quality" in results:
        parts.append(quality_section(results["quality"]))
    parts.append(presets_section(results.get("quality")))
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace, work: Path, command: str) -> dict[str, Any]:
    start = time.perf_counter()
    results: dict[str, Any] = {"command": command, "models": args.models}
    if "speed" not in args.skip:
        results["speed"] = run_speed(args, work)
    if "quality" not in args.skip:
        results["quality"] = run_quality(args, work)
    results["machine"] = machine_info()
    results["seconds"] = time.perf_counter() - start
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if "quality" not in args.skip:
        try:
            check_quality_inputs()
        except FileNotFoundError as e:
            print(f"benchmark.py: error: {e}", file=sys.stderr)
            return 2
    command = "python scripts/benchmark.py " + shlex.join(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark_") as tmp:
        results = run(args, Path(tmp), command.strip())
    markdown = render(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.md").write_text(markdown)
    (args.out / "benchmark.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
