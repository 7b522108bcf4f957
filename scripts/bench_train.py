"""Training throughput, whole runs side by side on this machine: our train.py (both data paths), DeepCTR-Torch
0.3.0's DeepFM on the same encoded rows, and the MLP-only ceiling.

    python scripts/bench_train.py [--rows 1000000] [--repeat 1] [--json PATH] [--quick] [--skip-baseline]
                                  [--baseline-venv /tmp/deepctr-venv] [--compile]

The rows: ``--rows`` rows of synthetic raw Criteo (dataset/synthetic.py, seed 0), preprocessed once by
dataset/criteo.py (min-count 10, bucketized dense: 39 sparse fields, split 8:1:1). Every contender trains
DeepFM, embedding 16, MLP 400-400-400, batch ``--batch-size`` 4096, Adam lr 1e-3, seed 2018, one epoch, then
scores the valid split (during the epoch's end) and the test split. Per repeat, in this order (interleaved, so
that load on the machine falls on every contender alike):

1. ours, chunks: ``python train.py --data_path chunks ...`` (2 loader workers) as a fresh subprocess;
2. DeepCTR-Torch: ``<baseline venv>/bin/python scripts/bench_train_deepctr.py`` as a fresh subprocess (its
   docstring says what it runs). It reads an .npz of the store's encoded splits that this script writes
   beforehand; that conversion is timed and reported apart, counted in no wall time; loading the .npz is
   counted in DeepCTR-Torch's (it is its input, as the store is ours). The baseline venv is a plain venv
   created on demand with torch, numpy and scikit-learn at requirements.txt's pins, deepctr-torch==0.3.0 and
   requests (imported by deepctr_torch.utils but not declared by the package);
3. ours, resident: as 1 with ``--data_path resident``;
4. the MLP ceiling: in a fresh process, forward + BCE + backward + Adam (train.make_optimizer, as train.py) of
   DeepFM's MLP alone (input width = DeepFM's DNN input, fields x 16 + dense width) on one fixed random batch:
   no embedding, no loader. 3 warm-up steps, then 5 windows of ``--log-every`` steps;
5. the same MLP ceiling with the gradient of its input: DeepFM must compute it (the embeddings under the MLP
   train), one more [B, 400] x [400, width] product per step that ceiling 4 (issue #14's definition) leaves
   out. Both ratios are reported;
6. with ``--compile`` (opt-in: it needs a C++ compiler and compiling takes seconds to minutes), two more: ours,
   resident with ``--compile``, and ceiling 5 through ``torch.compile``; each compiles into a fresh, empty
   Inductor cache (TORCHINDUCTOR_CACHE_DIR), so a compiled run's wall time includes its compiling.

Wall seconds: the subprocess from start to exit (interpreter start-up and imports included). Training
samples/s: median over the windows of ``--log-every`` steps after the first (ours: the train/samples_per_s
points of the run's TensorBoard events, evaluation excluded; DeepCTR-Torch: stamps of its training forward
calls, see bench_train_deepctr.py). Test AUC: ours from metrics.json, DeepCTR-Torch from sklearn on its
predictions. With ``--repeat N`` every number is the median over the N repeats. No contender sets a thread
count: each child records ``torch.get_num_threads()`` (ours: a probe process in the same environment, since
train.py leaves the count alone with one process). Prints Markdown; ``--json PATH`` writes every number.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train  # noqa: E402
from benchmark import in_fresh_process, machine_info, machine_line, markdown_table, portable  # noqa: E402
from dataset.criteo import preprocess_criteo  # noqa: E402
from dataset.store import StoreReader  # noqa: E402
from dataset.synthetic import write_synthetic_criteo  # noqa: E402
from layers.mlp import MLP  # noqa: E402
from models.deepfm import DeepFM  # noqa: E402

EMBED_DIM, HIDDEN, LR, SEED = 16, (400, 400, 400), 1e-3, 2018
DEEPCTR = "deepctr-torch==0.3.0"
CEILING_WARMUP, CEILING_WINDOWS = 3, 5
CEILINGS = ("MLP ceiling", "MLP ceiling, input gradient")
CONTENDERS = ("ours, chunks", "DeepCTR-Torch", "ours, resident", *CEILINGS)  # the order of each repeat
COMPILED = ("ours, resident, compiled", "MLP ceiling, input gradient, compiled")  # after them with --compile


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None, help="synthetic raw rows (default 1000000; --quick 100000)")
    p.add_argument("--quick", action="store_true", help="a smoke check: 100,000 rows")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--log-every", type=int, default=None,
                   help="steps per samples/s window (default 20, fewer when the epoch has under 100 steps)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the four contenders; medians are reported")
    p.add_argument("--baseline-venv", type=Path, default=Path("/tmp/deepctr-venv"),
                   help="venv for DeepCTR-Torch, created when it lacks it (default: %(default)s)")
    p.add_argument("--skip-baseline", action="store_true", help="leave DeepCTR-Torch out")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    p.add_argument("--compile", action="store_true",
                   help="also time train.py --compile (resident) and the input-gradient ceiling compiled")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = 100_000 if args.quick else 1_000_000
    for flag in ("rows", "batch_size", "repeat", "log_every"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------ contenders


def ours(store: Path, data_path: str, run_dir: Path, args: argparse.Namespace,
         compile_cache: Path | None = None) -> dict[str, Any]:
    """``python train.py`` on ``store`` as a fresh subprocess -> wall s, windowed samples/s, test AUC. With
    ``compile_cache``: ``--compile``, Inductor caching into that (new) directory."""
    argv = ["train.py", "--model", "DeepFM", "--data", str(store), "--model_save_dir", str(run_dir),
            "--data_path", data_path, "--epochs", "1", "--batch_size", str(args.batch_size), "--optimizer", "adam",
            "--lr", str(LR), "--embed_size", str(EMBED_DIM), "--hidden_units", *map(str, HIDDEN),
            "--log_every", str(args.log_every), "--seed", str(SEED), *(["--compile"] if compile_cache else [])]
    log = run_dir.with_name(run_dir.name + ".log")
    env = {"TORCHINDUCTOR_CACHE_DIR": str(compile_cache)} if compile_cache else {}
    wall = run_child([sys.executable, *argv], log, env)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": wall, "window_samples_per_s": [e.value for e in events.Scalars("train/samples_per_s")],
            "test_auc": metrics["test"]["auc"], "command": ["python", *argv]}


def deepctr(npz: Path, result: Path, args: argparse.Namespace) -> dict[str, Any]:
    """scripts/bench_train_deepctr.py in the baseline venv as a fresh subprocess."""
    argv = ["scripts/bench_train_deepctr.py", str(npz), str(result), "--batch-size",
            str(args.batch_size), "--embed-dim", str(EMBED_DIM), "--hidden-units", *map(str, HIDDEN),
            "--log-every", str(args.log_every), "--seed", str(SEED)]
    wall = run_child([str(args.baseline_venv / "bin" / "python"), *argv], result.with_suffix(".log"))
    return {"wall_s": wall, **json.loads(result.read_text()), "command": [f"{args.baseline_venv}/bin/python", *argv]}


def mlp_ceiling(width: int, batch_size: int, log_every: int, input_grad: bool = False,
                compile_cache: str | None = None) -> dict[str, Any]:
    """[runs in a fresh process] samples/s of DeepFM's MLP alone: forward, BCE, backward (``input_grad``: down to
    its input too, as in DeepFM), Adam step; with ``compile_cache``, the MLP through torch.compile (Inductor
    caching into that new directory; compiling happens in the warm-up steps)."""
    if compile_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache
    torch.manual_seed(SEED)
    mlp = MLP(width, HIDDEN, output_dim=1)
    net = torch.compile(mlp) if compile_cache else mlp
    opts = argparse.Namespace(optimizer="adam", lr=LR, weight_decay=0.0)
    optimizer = train.make_optimizer(mlp, opts)
    x, y = torch.randn(batch_size, width, requires_grad=input_grad), (torch.rand(batch_size, 1) < 0.25).float()

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(CEILING_WARMUP):
        step()
    rates = []
    for _ in range(CEILING_WINDOWS):
        start = time.perf_counter()
        for _ in range(log_every):
            step()
        rates.append(log_every * batch_size / (time.perf_counter() - start))
    return {"torch_threads": torch.get_num_threads(), "width": width, "window_samples_per_s": rates}


def torch_threads() -> int:
    """The thread count torch starts with in a fresh interpreter of this environment: train.py's with one
    process (it sets the count only for --cpu_procs > 1)."""
    probe = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)


def run_child(argv: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run ``argv`` from the repo root (``env`` added to ours), its output into ``log`` -> wall seconds; a failure
    raises with its tail."""
    with open(log, "w") as out:
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode
        wall = time.perf_counter() - start
    if code:
        tail = " / ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise RuntimeError(f"{Path(argv[1]).name} exited with {code}: {tail}")
    return wall


def steady(rates: Sequence[float]) -> float | None:
    """Median of the windows after the first (the first pays for warm-up); the only one if there is one."""
    return statistics.median(rates[1:] or rates) if rates else None


# ------------------------------------------------------------------------------------------------ setup


def make_store(rows: int, work: Path) -> tuple[Path, dict[str, float]]:
    start = time.perf_counter()
    raw = write_synthetic_criteo(work / "criteo_synthetic.txt", rows, 0)
    generated = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        preprocess_criteo(raw, work / "store", overwrite=True, progress=False)
    raw.unlink()
    return work / "store", {"generate_s": generated - start, "preprocess_s": time.perf_counter() - generated}


def store_to_npz(store: Path, npz: Path) -> float:
    """DeepCTR-Torch's input: the store's splits as arrays in an uncompressed .npz -> seconds taken."""
    start = time.perf_counter()
    reader = StoreReader(store)
    arrays: dict[str, np.ndarray] = {"fields": np.array(reader.schema.sparse_fields),
                                     "vocab_sizes": np.array(reader.schema.vocab_sizes)}
    for split in ("train", "valid", "test"):
        chunk = reader.read_chunks(split, range(reader.num_chunks(split)))
        arrays[f"{split}_sparse"], arrays[f"{split}_label"] = chunk["sparse"], chunk["label"][:, 0]
    np.savez(npz, **arrays)
    return time.perf_counter() - start


def baseline_venv(venv: Path) -> None:
    """Create ``venv`` with DeepCTR-Torch unless it has it already (a plain venv: no site packages). An existing
    path without it is refused, never cleared: it may be the user's own environment."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import importlib.metadata as m; assert m.version('deepctr-torch') == "
                                f"'{DEEPCTR.split('==')[1]}'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return
    if venv.exists():
        raise RuntimeError(f"{venv} exists and is not a venv with {DEEPCTR}; pass a new path with --baseline-venv "
                           f"(this script creates it) or remove that one yourself")
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    packages = [f"{name}=={pins[name]}" for name in ("torch", "numpy", "scikit-learn")] + [DEEPCTR, "requests"]
    print(f"creating {venv} with {' '.join(packages)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"pip install {' '.join(packages)} into {venv} failed: "
                           f"{([l for l in lines if l.startswith('ERROR')] or lines)[-1]}")


# ------------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    store, setup = make_store(args.rows, work)
    reader = StoreReader(store)
    train_rows = reader.num_rows("train")
    steps = -(-train_rows // args.batch_size)
    if args.log_every is None:
        args.log_every = max(1, min(20, steps // 5))
    width = DeepFM(reader.schema, embed_dim=EMBED_DIM, hidden_units=HIDDEN).embedding.output_dim
    baseline_error = "skipped (--skip-baseline)" if args.skip_baseline else None
    if not baseline_error:
        try:
            baseline_venv(args.baseline_venv)
            setup["npz_s"] = store_to_npz(store, work / "deepctr.npz")
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            baseline_error = f"{type(e).__name__}: {e}"
    contenders = CONTENDERS + (COMPILED if args.compile else ())
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    (work / "runs").mkdir()
    for r in range(args.repeat):
        for i, name in enumerate(contenders):
            print(f"repeat {r + 1}/{args.repeat}: {name}", file=sys.stderr)
            cache = work / f"inductor{r}-{i}" if name.endswith("compiled") else None  # fresh: compiling counts
            try:
                if name.startswith("ours"):
                    path = name.split(", ")[1]
                    out = ours(store, path, work / "runs" / f"{path}{r}-{i}", args, cache)
                elif name == "DeepCTR-Torch":
                    if baseline_error:
                        out = {"error": baseline_error}
                    else:
                        out = deepctr(work / "deepctr.npz", work / f"deepctr{r}.json", args)
                else:
                    out = in_fresh_process(mlp_ceiling, width, args.batch_size, args.log_every,
                                           "input gradient" in name, cache and str(cache))
            except Exception as e:  # reported in the table; the other contenders still run
                out = {"error": f"{type(e).__name__}: {e}"}
            runs[name].append(out)
    return {"rows": args.rows, "train_rows": train_rows, "steps_per_epoch": steps, "batch_size": args.batch_size,
            "log_every": args.log_every, "repeat": args.repeat, "dnn_input_width": width,
            "train_py_torch_threads": torch_threads(), "setup": setup,
            "summary": {name: summarize(rs) for name, rs in runs.items()}, "runs": runs}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats that worked; the first error if none did."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"]}

    def median(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None
    return {"wall_s": median([r.get("wall_s") for r in ok]),
            "samples_per_s": median([steady(r["window_samples_per_s"]) for r in ok]),
            "test_auc": median([r.get("test_auc") for r in ok]), "repeats_ok": len(ok),
            "torch_threads": ok[0].get("torch_threads")}


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """DeepCTR-Torch's wall time over each of ours, and each of ours' samples/s over each ceiling (a compiled
    ceiling only under a compiled run of ours)."""
    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = summary[a].get(key), summary[b].get(key)
        return x / y if x and y else None
    ours_runs = [n for n in summary if n.startswith("ours")]
    ceilings = [n for n in summary if n.startswith("MLP ceiling")]
    return {**{f"wall: DeepCTR-Torch / {o}": ratio("DeepCTR-Torch", o, "wall_s") for o in ours_runs},
            **{f"samples/s: {o} / {c}": ratio(o, c, "samples_per_s") for o in ours_runs for c in ceilings
               if o.endswith("compiled") or not c.endswith("compiled")}}


def render(results: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)
    rows = []
    for name, s in results["summary"].items():
        if "error" in s:
            rows.append([name, "", s["error"] if s["error"].startswith("skipped") else f"failed: {s['error']}", "", ""])
            continue
        threads = results["train_py_torch_threads"] if name.startswith("ours") else s["torch_threads"]
        wall = "n/a (fixed steps)" if name.startswith("MLP ceiling") else num(s["wall_s"], ".1f")
        rows.append([name, threads, wall, num(s["samples_per_s"], ",.0f"), num(s["test_auc"], ".4f")])
    setup = results["setup"]
    conversion = (f"; store -> .npz for DeepCTR-Torch {setup['npz_s']:.2f} s (in no wall time)"
                  if "npz_s" in setup else "")
    return "\n\n".join([
        f"## Training throughput, whole runs ({results['rows']:,} rows: {results['train_rows']:,} train, "
        f"{results['steps_per_epoch']} steps of {results['batch_size']})",
        machine_line(results["machine"]),
        f"Command: `{results['command']}`. DeepFM, embedding 16, MLP 400-400-400, Adam lr 1e-3, one epoch + "
        f"valid + test; samples/s is the median of the {results['log_every']}-step windows after the first; "
        f"medians over {results['repeat']} repeat(s). Setup: generating {setup['generate_s']:.1f} s, "
        f"preprocessing {setup['preprocess_s']:.1f} s{conversion}. MLP ceiling: input width "
        f"{results['dnn_input_width']}, no embedding, no loader; with or without the gradient of its input.",
        markdown_table(["contender", "torch threads", "wall s (whole run)", "training samples/s", "test AUC"], rows),
        markdown_table(["ratio", "value"], [[k, num(v, ".2f")] for k, v in results["ratios"].items()]),
    ]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        results = run(args, Path(tmp))
        results["commands"] = {name: portable(r["command"], Path(tmp)) for name, rs in results["runs"].items()
                               for r in rs[:1] if "command" in r}
    results["command"] = "python scripts/bench_train.py " + shlex.join(argv)
    results["ratios"] = ratios(results["summary"])
    results["machine"] = machine_info()
    markdown = render(results)
    print(markdown)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
