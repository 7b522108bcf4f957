"""One table from any set of finished runs: mean ± std over seeds per configuration, Markdown and CSV.

    python scripts/results.py DIR [DIR ...] [--sort COLUMN] [--csv F] [--md F]

Every directory below the DIRs (a sweep's --out, or any checkpoints/ subtree) that holds a config.json and a
metrics.json with test results is a run. Runs whose config.json agree on everything except the seed and the
paths are one configuration, one row. Left out of that comparison: ``seed``; the paths (``data``,
``model_save_dir``, ``run_name``, ``resume``, ``eval_only``, ``run_dir``, the store's path); ``gpu_ids`` (which
devices; ``world_size`` and the device kind stay); ``preset`` (its flags are in the config already);
``data_path_reason``. A store is identified by its content record (dataset, schema, splits, preprocessing
options), so copies of one store at two paths are the same data; the ``data`` column shows the store
directory names.

Columns: the configuration keys that differ between rows (the ones all rows share are listed above the
table), ``n`` (seeds), test AUC / logloss / gAUC / RMSE where the runs have them (the mean over tasks for
multi-task models), the best epoch (metrics.json), training samples/s (the median of the run's
``train/samples_per_s`` TensorBoard points, read with tensorboard's EventAccumulator), the parameter count
(the model rebuilt from config.json), and the gap to the best row. Numbers are mean ± std
over seeds, the std the sample standard deviation (n - 1, as in scripts/benchmark.py's mean_std); one seed
shows the mean alone.

The best row is the best mean of the ``--sort`` metric (auc, gauc: highest; logloss, rmse: lowest; default:
auc, else rmse). The ``vs best`` column gives each row's gap to it and says ``within noise`` when the gap is
at most one std of the best row (so: not a difference these seeds can show); a best row of one seed has no
std, and no row is then called within noise.

``--sort COLUMN``: any column (a configuration key, n, a metric, best_epoch, samples_per_s, params); metrics
sort best first, other columns ascending; ``-COLUMN`` reverses.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from benchmark import markdown_table, mean_and_std, mean_std  # noqa: E402

NOT_CONFIG = {"seed", "data", "model_save_dir", "run_name", "resume", "eval_only", "gpu_ids", "preset"}
METRICS = {"auc": "max", "logloss": "min", "gauc": "max", "rmse": "min"}  # metric -> better when
OTHER_NUMBERS = ("best_epoch", "samples_per_s", "params")
NOISE = "within noise"


@dataclass
class RunRecord:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    key: dict[str, Any]
    samples_per_s: float | None = None


@dataclass
class Row:
    """One configuration: its key and its runs (one per seed)."""

    key: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    params: int | None = None
    vs_best: float | None = None
    within_noise: bool | None = None
    is_best: bool = False

    def values(self, column: str) -> list[float]:
        """The per-run values of a metric or of best_epoch / samples_per_s (NaN where a run lacks it)."""
        if column in METRICS:
            return [float(r.metrics["test"].get(column, float("nan"))) for r in self.runs]
        if column == "best_epoch":
            return [float(r.metrics.get("best_epoch", float("nan"))) for r in self.runs]
        if column == "samples_per_s":
            return [float("nan") if r.samples_per_s is None else r.samples_per_s for r in self.runs]
        raise KeyError(column)

    def stats(self, column: str) -> tuple[float, float | None] | None:
        return mean_and_std(self.values(column))

    @property
    def seeds(self) -> list[int]:
        return sorted(r.config["train"]["seed"] for r in self.runs)

    @property
    def data(self) -> str:
        return ",".join(sorted({Path(r.config["store"]["path"]).name for r in self.runs}))


# ------------------------------------------------------------------------------------------------ reading runs


def find_runs(dirs: Sequence[Path]) -> list[Path]:
    """Every directory below ``dirs`` (or one of them) with config.json and a metrics.json with test results."""
    found: set[Path] = set()
    for d in dirs:
        for config in [d / "config.json", *d.rglob("config.json")]:
            run_dir = config.parent
            if config.is_file() and has_test(run_dir):
                found.add(run_dir.resolve())
    return sorted(found)


def has_test(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "metrics.json").read_text()).get("test"))
    except (OSError, ValueError, AttributeError):
        return False


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def config_key(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same configuration (see the module docstring), flat: model, hyperparameters,
    training flags, device kind, world size, store identity."""
    train = config.get("train", {})
    store = config.get("store", {})
    identity = {k: store.get(k) for k in ("dataset", "schema", "splits", "options")}
    store_id = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    key = {"model": config["model"], **{k: _hashable(v) for k, v in config.get("model_hparams", {}).items()}}
    key.update({k: _hashable(v) for k, v in train.items() if k not in NOT_CONFIG and k not in key})
    key.update(device="cuda" if train.get("gpu_ids") else "cpu", world_size=config.get("world_size", 1),
               store=store_id)
    return key


def read_samples_per_s(run_dir: Path) -> float | None:
    """The median of the run's train/samples_per_s points (every event file of the run dir), or None."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/samples_per_s" not in acc.Tags().get("scalars", []):
        return None
    values = [e.value for e in acc.Scalars("train/samples_per_s")]
    return statistics.median(values) if values else None


def load_run(run_dir: Path) -> RunRecord:
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return RunRecord(run_dir, config, metrics, config_key(config), read_samples_per_s(run_dir))


def count_params(config: dict[str, Any]) -> int | None:
    """Parameters of the run's model, rebuilt on CPU from config.json (the meta device cannot run the embedding's
    offset computation); None when it cannot be built here (a model this checkout does not have)."""
    import torch

    import models
    from dataset.schema import Schema
    from train import Inputs
    try:
        train = config["train"]
        schema = Schema.from_dict(config["store"]["schema"])
        _, schema = Inputs.of(schema, train.get("drop_fields", ()), train.get("labels"), torch.device("cpu"))
        hparams = {k: _hashable(v) for k, v in config["model_hparams"].items()}
        model = models.build_model(config["model"], schema, dense_init=train.get("dense_init", "xavier_normal"),
                                   seq_pooling=train.get("seq_pooling", "mean"), **hparams)
    except Exception:  # an old config or a removed model: the column stays empty for that row
        return None
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ the table


@dataclass
class Table:
    rows: list[Row]
    varying: list[str]  # configuration keys that differ between rows (shown as columns)
    shared: dict[str, Any]  # the keys every row has with the same value
    metrics: list[str]  # the metrics some run has
    best_metric: str | None

    def columns(self) -> list[str]:
        return [*self.varying, "n", *self.metrics, *OTHER_NUMBERS, "vs best"]


def group(runs: Sequence[RunRecord]) -> list[Row]:
    rows: dict[str, Row] = {}
    for r in runs:
        k = json.dumps(r.key, sort_keys=True, default=str)
        rows.setdefault(k, Row(r.key)).runs.append(r)
    return list(rows.values())


def aggregate(dirs: Sequence[Path], sort: str | None = None, params: bool = True) -> Table:
    """The rows of every run below ``dirs``, sorted by ``sort`` (see the module docstring)."""
    runs = [load_run(d) for d in find_runs(dirs)]
    rows = group(runs)
    keys = list(dict.fromkeys(k for row in rows for k in row.key))
    # A key varies when the rows that have it disagree (a hyperparameter of one model alone is in "shared")
    varying = [k for k in keys if len({json.dumps(row.key[k], default=str) for row in rows if k in row.key}) > 1]
    if "store" in varying:
        varying[varying.index("store")] = "data"
    if "model" in keys and "model" not in varying:
        varying.insert(0, "model")  # always shown
    shared = {k: next(row.key[k] for row in rows if k in row.key) for k in keys
              if k not in varying and k not in ("store", "model")}
    metrics = [m for m in METRICS if any(m in r.metrics["test"] for r in runs)]
    for row in rows:
        row.params = count_params(row.runs[0].config) if params else None
    want = sort.lstrip("-") if sort else None
    best_metric = want if want in METRICS else next((m for m in ("auc", "rmse", "logloss", "gauc") if m in metrics),
                                                    None)
    table = Table(rows, varying, shared, metrics, best_metric)
    mark_best(table)
    sort_rows(table, sort or best_metric)
    return table


def mark_best(table: Table) -> None:
    """Each row's gap to the best row's mean of ``best_metric``, and whether it is within one std of the best."""
    m = table.best_metric
    scored = [(row, row.stats(m)) for row in table.rows] if m else []
    scored = [(row, s) for row, s in scored if s is not None]
    if not scored:
        return
    pick = max if METRICS[m] == "max" else min
    best, (best_mean, best_std) = pick(scored, key=lambda rs: rs[1][0])
    best.is_best = True
    for row, (mean, _) in scored:
        row.vs_best = mean - best_mean
        row.within_noise = row is not best and best_std is not None and abs(row.vs_best) <= best_std


def sort_value(row: Row, column: str) -> Any:
    if column in METRICS or column in ("best_epoch", "samples_per_s"):
        s = row.stats(column)
        return None if s is None else s[0]
    if column == "n":
        return len(row.runs)
    if column == "params":
        return row.params
    if column == "data":
        return row.data
    if column == "vs best":
        return row.vs_best
    value = row.key.get(column)
    return None if value is None else json.dumps(value, default=str) if not isinstance(value, (int, float)) else value


def sort_rows(table: Table, sort: str | None) -> None:
    if not sort:
        return
    column, reverse = sort.lstrip("-"), sort.startswith("-")
    if column not in table.columns() and column not in table.shared:
        raise ValueError(f"--sort {sort}: no such column; valid: {', '.join(table.columns())}")
    best_first = METRICS.get(column) == "max"
    present = [r for r in table.rows if sort_value(r, column) is not None]
    absent = [r for r in table.rows if sort_value(r, column) is None]
    present.sort(key=lambda r: sort_value(r, column), reverse=best_first != reverse)
    table.rows = present + absent  # rows without the value last, either way


# ------------------------------------------------------------------------------------------------ writing


def show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "()"
    return str(value)


def vs_best_cell(row: Row) -> str:
    if row.vs_best is None:
        return ""
    if row.is_best:
        return "best"
    return f"{row.vs_best:+.4f}" + (f" ({NOISE})" if row.within_noise else "")


def markdown(table: Table) -> str:
    cells = []
    for row in table.rows:
        cells.append([*(row.data if k == "data" else show(row.key.get(k, "")) for k in table.varying),
                      str(len(row.runs)), *(mean_std(row.values(m)) for m in table.metrics),
                      mean_std(row.values("best_epoch"), 1), mean_std(row.values("samples_per_s"), 0),
                      "" if row.params is None else f"{row.params:,}", vs_best_cell(row)])
    headers = [*table.varying, "n", *(f"test {m}" for m in table.metrics), "best epoch", "samples/s", "params",
               f"vs best ({table.best_metric})" if table.best_metric else "vs best"]
    align = "l" * len(table.varying) + "r" * (len(headers) - len(table.varying) - 1) + "l"
    shared = ", ".join(f"{k}={show(v)}" for k, v in table.shared.items())
    runs = sum(len(r.runs) for r in table.rows)
    return (f"{runs} runs, {len(table.rows)} configurations; mean ± sample std over seeds. "
            f"Shared by every row: {shared or '(nothing)'}\n\n" + markdown_table(headers, cells, align) + "\n")


def csv_text(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    numbers = [*table.metrics, "best_epoch", "samples_per_s"]
    writer.writerow([*table.varying, "n", "seeds", *(f"{m}_{s}" for m in numbers for s in ("mean", "std")),
                     "params", "vs_best", "within_noise_of_best", "run_dirs"])
    for row in table.rows:
        stats = []
        for m in numbers:
            s = row.stats(m)
            stats += ["", ""] if s is None else [repr(s[0]), "" if s[1] is None else repr(s[1])]
        writer.writerow([*(row.data if k == "data" else show(row.key.get(k, "")) for k in table.varying),
                         len(row.runs), " ".join(map(str, row.seeds)), *stats,
                         "" if row.params is None else row.params, "" if row.vs_best is None else repr(row.vs_best),
                         "" if row.within_noise is None else str(row.within_noise).lower(),
                         ";".join(str(r.run_dir) for r in row.runs)])
    return buf.getvalue()


def require_dirs(parser: argparse.ArgumentParser, dirs: Sequence[Path]) -> None:
    """Exit with a usage error naming every path of ``dirs`` that is not a directory."""
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(missing)}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="results.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="sweep dirs, checkpoints/ subtrees or run dirs")
    p.add_argument("--sort", default=None, help="a column; metrics best first; -COLUMN reverses")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    p.add_argument("--md", type=Path, default=None, help="also write the Markdown here")
    args = p.parse_args(argv)
    require_dirs(p, args.dirs)
    try:
        table = aggregate(args.dirs, args.sort)
    except ValueError as e:
        p.error(str(e))
    if not table.rows:
        print(f"results.py: no finished run (config.json + metrics.json with test results) below "
              f"{', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 1
    text = markdown(table)
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.csv:
        args.csv.write_text(csv_text(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
