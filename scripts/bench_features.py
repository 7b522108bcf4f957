"""Quality on the stores with sequence fields, shared vocabularies and regression labels: the claims of the
feature-types and behaviour-sequence work, measured here.

    python scripts/bench_features.py [--seeds 3] [--sections amazon,frappe,regression] [--amazon-models ...]
                                     [--frappe-models LR,FM,...|all] [--out checkpoints/bench_features]

Each section runs preprocess.py and train.py (through their ``main``), once per seed; seed s is the store's
seed (Amazon's negatives, Frappe's split, the generator's rows) and the model's ``--seed``. It prints Markdown
(mean ± std over seeds of the test metrics of the best-valid checkpoint) and writes ``<out>/bench_features.md``
and ``.json`` with every command.

* ``amazon``: Amazon Beauty in DIN's protocol (dataset/amazon.py), test AUC and gAUC. DeepFM without the
  history fields (``--drop_fields hist_item_id hist_cate_id``) against DeepFM with them mean-pooled, then the
  attention models (``--amazon-models``).
* ``frappe``: the 86,582 real Frappe rows (NFM's split 7:2:1 of the two files here), test AUC and logloss of
  ``--frappe-models`` (default LR, FM, DeepFM, DCN and xDeepFM; ``all``: every single-task model without
  sequences), with scripts/benchmark.py's small sizes (hidden 64-64, 2 cross layers, CIN 32-32).
* ``speed``: training samples/s of DeepFM and the attention models on the Amazon store (one thread, batch
  1024, default hyperparameters, each model in a fresh process: scripts/benchmark.py's measurement).
* ``regression``: ``synthetic_behaviour --rating`` (Gaussian noise of known variance), a single-task model on
  the rating (``--labels rating``): test MSE against the noise variance, the best any model can reach.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from benchmark import (FIRST_SEED, bench_training, machine_info, machine_line, markdown_table,  # noqa: E402
                       mean_std, portable, quality_hparams, select_models, train_once)
import models  # noqa: E402
from models.presets import to_argv  # noqa: E402
import preprocess  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
AMAZON = SHARED_DATA / "amazon" / "Beauty.txt"
FRAPPE = [SHARED_DATA / "frappe" / f"frappe.{part}.libfm" for part in ("validation", "test")]
HISTORIES = ("hist_item_id", "hist_cate_id")
SECTIONS = ("amazon", "frappe", "regression", "speed")
AMAZON_MODELS = ("DIN", "DIEN", "BST", "DSIN")
FRAPPE_MODELS = ("LR", "FM", "DeepFM", "DCN", "xDeepFM")
# The flags of each section's runs (the same for every model of a section: equal budgets).
FLAGS: dict[str, list[str]] = {
    "amazon": ["--embed_size", "16", "--batch_size", "1024", "--epochs", "4", "--patience", "1", "--num_workers", "2"],
    "frappe": ["--embed_size", "16", "--batch_size", "1024", "--epochs", "20", "--patience", "2", "--num_workers",
               "0"],
    "regression": ["--embed_size", "16", "--batch_size", "1024", "--epochs", "10", "--patience", "2",
                   "--num_workers", "2", "--labels", "rating"],
}
REGRESSION_ROWS = 200_000
SPEED = {"batch_size": 1024, "warmup": 3, "steps": 10}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--amazon-models", default=",".join(AMAZON_MODELS),
                   help="attention models compared with DeepFM on Amazon ('' for none)")
    p.add_argument("--frappe-models", default=",".join(FRAPPE_MODELS),
                   help="models trained on Frappe ('all': every single-task model that takes no sequences)")
    p.add_argument("--out", type=Path, default=Path("checkpoints/bench_features"))
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.amazon_models = [m for m in args.amazon_models.split(",") if m]
    args.frappe_models = frappe_models(args.frappe_models)
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or args.seeds < 1:
        p.error(f"--sections takes {', '.join(SECTIONS)} (got {', '.join(unknown)}); --seeds >= 1")
    return args


def frappe_models(text: str) -> list[str]:
    """--frappe-models -> model names (checked as scripts/benchmark.py checks them); ``all`` leaves out the
    multi-task models too, since Frappe has one label."""
    names = select_models(text)
    return [n for n in names if not models.get_model_class(n).multitask] if text.strip().lower() == "all" else names


def make_store(argv: list[str], work: Path, commands: list[str]) -> None:
    commands.append(portable(["python", "preprocess.py", *argv], work))
    with contextlib.redirect_stdout(sys.stderr):
        code = preprocess.main(argv)
    if code:
        raise RuntimeError(f"python preprocess.py {shlex.join(argv)} failed with exit code {code}")


def run_model(label: str, model: str, store: Path, seed: int, extra: list[str], section: str, work: Path,
              commands: list[str]) -> dict[str, Any]:
    run_dir = work / "runs" / section / f"{label}_seed{seed}"
    argv = ["--model", model, "--data", str(store), "--seed", str(seed), *FLAGS[section],
            *(to_argv(quality_hparams(model)) if section == "frappe" else []), *extra, "--model_save_dir", str(run_dir)]
    commands.append(portable(["python", "train.py", *argv], work))
    print(f"bench_features: {label} on {section}, seed {seed}", file=sys.stderr)
    started = time.perf_counter()
    try:
        result = train_once(argv, run_dir)
    except (Exception, SystemExit) as e:  # shown in the table; the other runs go on
        return {"seed": seed, "error": str(e)}
    return {"seed": seed, "seconds": time.perf_counter() - started, **result}


def amazon(seeds: Sequence[int], attention: Sequence[str], work: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    commands: list[str] = []
    variants = [("DeepFM, no history", "DeepFM", ["--drop_fields", *HISTORIES]),
                ("DeepFM, mean-pooled history", "DeepFM", []), *((m, m, []) for m in attention)]
    for seed in seeds:
        store = work / f"amazon_seed{seed}"
        make_store(["amazon", "--input", str(AMAZON), "--out", str(store), "--seed", str(seed)], work, commands)
        for label, model, extra in variants:
            runs.setdefault(label, []).append(run_model(label, model, store, seed, extra, "amazon", work, commands))
    return {"runs": runs, "commands": commands}


def frappe(seeds: Sequence[int], names: Sequence[str], work: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    commands: list[str] = []
    for seed in seeds:
        store = work / f"frappe_seed{seed}"
        make_store(["frappe", "--input", *map(str, FRAPPE), "--out", str(store), "--seed", str(seed)], work, commands)
        for model in names:
            runs.setdefault(model, []).append(run_model(model, model, store, seed, [], "frappe", work, commands))
    return {"runs": runs, "commands": commands}


def regression(seeds: Sequence[int], work: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    commands: list[str] = []
    noise = []
    for seed in seeds:
        store = work / f"rating_seed{seed}"
        make_store(["synthetic_behaviour", "--rows", str(REGRESSION_ROWS), "--rating", "--out", str(store),
                    "--seed", str(seed)], work, commands)
        noise.append(_noise(store))
        for model in ("DeepFM", "DIN"):
            runs.setdefault(model, []).append(run_model(model, model, store, seed, [], "regression", work, commands))
    return {"runs": runs, "commands": commands, "noise_variance": noise}


def speed(attention: Sequence[str], work: Path) -> dict[str, Any]:
    store = work / "amazon_speed"
    commands: list[str] = []
    make_store(["amazon", "--input", str(AMAZON), "--out", str(store)], work, commands)
    names = ["DeepFM", *attention]
    return {"training": bench_training(store, names, ["cpu"], SPEED["batch_size"], SPEED["warmup"], SPEED["steps"]),
            "commands": commands}


def _noise(store: Path) -> float:
    from dataset.store import StoreReader
    return float(StoreReader(store).meta["stats"]["rating_noise_variance"])


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r]


def _metric(runs: list[dict[str, Any]], name: str) -> str:
    return mean_std([r["test"][name] for r in _ok(runs)])


def _note(runs: list[dict[str, Any]]) -> str:
    failed = [r for r in runs if "error" in r]
    return f"{len(failed)} failed: {failed[0]['error']}" if failed else ""


def render(results: dict[str, Any]) -> str:
    seeds = ", ".join(map(str, results["seeds"]))
    parts = ["## Quality on sequence, multi-value and regression stores", machine_line(results["machine"]),
             f"Command: `{results['command']}` ({results['seconds'] / 60:.1f} min). Mean ± std over seeds {seeds} "
             f"(the store's seed and the model's); test metrics of the best-valid checkpoint."]
    if "amazon" in results:
        rows = [[label, _metric(runs, "auc"), _metric(runs, "gauc"),
                 mean_std([r["seconds"] / 60 for r in _ok(runs)], 1), _note(runs)]
                for label, runs in results["amazon"]["runs"].items()]
        parts += [f"### Amazon Beauty (DIN's protocol), `{' '.join(FLAGS['amazon'])}`",
                  markdown_table(["model", "test AUC", "test gAUC", "minutes per run", "note"], rows, "lrrrl"),
                  _commands(results["amazon"]["commands"])]
    if "frappe" in results:
        rows = [[m, _metric(runs, "auc"), _metric(runs, "logloss"), _note(runs)]
                for m, runs in results["frappe"]["runs"].items()]
        parts += [f"### Frappe (86,582 real rows, split 7:2:1), `{' '.join(FLAGS['frappe'])}`",
                  markdown_table(["model", "test AUC", "test logloss", "note"], rows, "lrrl"),
                  _commands(results["frappe"]["commands"])]
    if "regression" in results:
        reg = results["regression"]
        rows = [[m, mean_std([r["test"]["rmse"] ** 2 for r in _ok(runs)]), mean_std(reg["noise_variance"]),
                 _note(runs)] for m, runs in reg["runs"].items()]
        parts += [f"### Regression: synthetic_behaviour --rating ({REGRESSION_ROWS:,} rows), "
                  f"`{' '.join(FLAGS['regression'])}`",
                  markdown_table(["model", "test MSE", "noise variance (the best possible MSE)", "note"], rows, "lrrl"),
                  _commands(reg["commands"])]
    if "speed" in results:
        rows = [[m, _speed(r["cpu"], "params", "{:,}"), _speed(r["cpu"], "samples_per_s", "{:,.0f}"),
                 _speed(r["cpu"], "peak_rss_mib", "{:,.0f}")] for m, r in results["speed"]["training"].items()]
        parts += [f"### Training throughput on the Amazon store (one CPU thread, batch {SPEED['batch_size']}, "
                  f"default hyperparameters, {SPEED['steps']} steps after {SPEED['warmup']})",
                  markdown_table(["model", "params", "CPU samples/s", "peak RSS (MiB)"], rows, "lrrr")]
    return "\n\n".join(parts) + "\n"


def _speed(result: dict[str, Any], key: str, fmt: str) -> str:
    return result["error"] if "error" in result else fmt.format(result[key])


def _commands(commands: Sequence[str]) -> str:
    return "<details><summary>commands</summary>\n\n```\n" + "\n".join(commands) + "\n```\n</details>"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    missing = [p for p in (AMAZON, *FRAPPE) if not p.is_file()]
    if missing:
        print(f"bench_features.py: error: {missing[0]} not found: the sections read ../shared/data", file=sys.stderr)
        return 2
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    start = time.perf_counter()
    results: dict[str, Any] = {"command": "python scripts/bench_features.py " + shlex.join(argv), "seeds": seeds,
                               "flags": FLAGS}
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        work = Path(tmp)
        if "amazon" in args.sections:
            results["amazon"] = amazon(seeds, args.amazon_models, work)
        if "frappe" in args.sections:
            results["frappe"] = frappe(seeds, args.frappe_models, work)
        if "regression" in args.sections:
            results["regression"] = regression(seeds, work)
        if "speed" in args.sections:
            results["speed"] = speed(args.amazon_models, work)
    results["machine"] = machine_info()
    results["seconds"] = time.perf_counter() - start
    markdown = render(results)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_features.md").write_text(markdown)
    (args.out / "bench_features.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
