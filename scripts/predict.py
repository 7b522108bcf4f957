"""Score a raw file with a trained run: one prediction per input line, in input order, per task.

    python scripts/predict.py checkpoints/DeepFM/<run> --input test.txt --out preds.tsv
    python scripts/predict.py checkpoints/DeepFM/<run> --input day_23.gz --out preds.tsv --strict

The run dir's best.pt is scored on a file in its dataset's own raw format (Criteo: train.txt's 40 columns or
test.txt's 39, without the click; detected from the first line, or ``--labels yes|no``), plain or gzip,
streamed a block at a time (memory stays bounded whatever the file size; labelled input also keeps one
label and one prediction per row, 16 bytes, for its AUC). Rows are encoded with the vocabularies the run's
store keeps, by the same functions that preprocessed the store (dataset/predict_encode.py); the store is
the one config.json names (``--data`` to point elsewhere), and must still be that store: same schema, same
vocabulary checksum (train.py records it).

Output (TSV, ``--out``): a header ``line  <task>...  reason``, then one line per input line: its line number,
the predicted probability of every binary task (value for a regression task), and an empty reason; a bad
row (the kinds of preprocessing, e.g. a wrong number of columns) keeps its line with empty predictions
and the reason, so no row ever shifts. ``--strict`` stops at the first bad row instead (exit 1, nothing
written). The file appears atomically (written to a temporary file, then renamed) and never replaces an
existing file unless ``--overwrite``. Labelled input also prints AUC and logloss, by train.py's own metric
functions.

Why a script here rather than ``train.py --predict``: train.py's command line is built around a training run
(hyperparameters, the store, DDP, resume), none of which prediction takes, and its inputs (a raw file, an
output file, bad-row handling) are not train.py's; scripts/ is where the layout puts such tools. It reuses
train.py's checkpoint loading (:func:`train.load_trained`) and metrics (:func:`train.compute_metrics`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from dataset.predict_encode import EncodedBlock, raw_rows, vocabulary_checksum  # noqa: E402
from dataset.raw import InputError  # noqa: E402
from dataset.store import StoreReader  # noqa: E402

WORKERS = min(4, os.cpu_count() or 1)  # threads that tokenize and encode blocks ahead of the model
LINES_KEPT = 5  # bad-row line numbers printed per kind


class PredictError(Exception):
    """A problem with the run, the store, the input or the output; the message names the fix."""


class BadRowError(PredictError):
    """``--strict``: the first bad row."""


# ------------------------------------------------------------------------------------------- the run


def load_run(run_dir: Path, data: str | None, device: torch.device) -> tuple[nn.Module, train.Inputs, StoreReader]:
    """A run dir -> (its best.pt's model, the columns it reads, the store it was trained on), checked: best.pt
    intact, the store there with the same schema and vocabulary checksum."""
    if not run_dir.is_dir():
        raise PredictError(f"run dir {run_dir} does not exist; pass a run dir of train.py "
                           f"(checkpoints/<Model>/<timestamp>)")
    best = run_dir / "best.pt"
    if not best.is_file():
        raise PredictError(f"{run_dir} has no best.pt (train.py writes it at the run's first evaluation); "
                           f"pass a run dir that evaluated at least once, or train longer")
    try:
        state = train.load_checkpoint(best)
    except train.UsageError as e:
        raise PredictError(str(e)) from None
    stored = state["config"]["store"]
    path = Path(data or stored["path"])
    if not (path / "data.mdb").is_file():
        raise PredictError(f"the store {path} {'given by --data' if data else 'the run was trained on'} is not "
                           f"there; pass --data PATH of that store (the same preprocess.py command rebuilds it)")
    store = StoreReader(path)
    try:
        train.check_store_matches(store, state["config"])
    except train.UsageError as e:
        raise PredictError(str(e)) from None
    check_vocabulary(store, stored.get("vocab_checksum"), stored["path"])
    model, inputs = train.load_trained(state, store, device)
    return model.eval(), inputs, store


def check_vocabulary(store: StoreReader, recorded: str | None, trained_on: str) -> None:
    """The store must keep its vocabularies, and they must be those the run was trained with."""
    current = vocabulary_checksum(store)
    if current is None:
        raise PredictError(f"store {store.path} keeps no vocabularies (it was preprocessed before stores kept "
                           f"them): preprocess it again with this version and train a new run on it")
    if recorded is None:
        print(f"predict.py: warning: the run records no vocabulary checksum (trained before train.py recorded "
              f"it); only the schema of {store.path} was checked", file=sys.stderr)
    elif recorded != current:
        raise PredictError(f"store {store.path} has other vocabularies than the one the run was trained on "
                           f"({trained_on}, vocabulary checksum {recorded[:12]}, this store {current[:12]}): it "
                           f"was preprocessed again since; pass --data PATH of the store the run was trained on")


# ------------------------------------------------------------------------------------------- scoring


@dataclass
class Tally:
    """What a prediction run saw: rows scored, bad rows per kind (count, first lines), seconds per stage,
    and for labelled input the labels and predictions [N, T] of the scored rows (their metrics)."""

    rows: int = 0
    lines: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    bad_lines: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"read+encode": 0.0, "model": 0.0, "write": 0.0})
    labels: list[np.ndarray] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)

    def add_bad(self, kind: str, lines: np.ndarray) -> None:
        self.bad[kind] = self.bad.get(kind, 0) + len(lines)
        kept = self.bad_lines.setdefault(kind, [])
        kept.extend(int(x) for x in lines[:LINES_KEPT - len(kept)])


@torch.inference_mode()
def score(model: nn.Module, inputs: train.Inputs, block: EncodedBlock, batch_size: int,
          device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """A block's valid rows -> (labels [n, T], predictions [n, T]: probabilities of binary tasks), float64."""
    out = [np.zeros((0, 2 * model.num_tasks))]  # a store with a user field adds the user id column: dropped
    for lo in range(0, len(block.lines), batch_size):
        batch = {"sparse": torch.from_numpy(block.sparse[lo:lo + batch_size]).long(),
                 "dense": torch.from_numpy(block.dense[lo:lo + batch_size]),
                 "label": torch.from_numpy(block.label[lo:lo + batch_size])}
        batch = train.to_device(batch, device)
        out.append(train.predict_batch(model, batch, model.num_tasks, False, inputs)[:, :2 * model.num_tasks]
                   .cpu().numpy())
    table = np.concatenate(out)
    return table[:, :model.num_tasks], table[:, model.num_tasks:]


class Reasons(dict):
    """Bad-row kind -> its one-line reason, asked of the encoder the first time a kind is seen (each dataset
    has its own kinds)."""

    def __init__(self, encoder: Any, labelled: bool) -> None:
        super().__init__()
        self.encoder, self.labelled = encoder, labelled

    def __missing__(self, kind: str) -> str:
        self[kind] = self.encoder.reason(kind, self.labelled)
        return self[kind]


def block_text(block: EncodedBlock, preds: np.ndarray, reasons: dict[str, str]) -> str:
    """The output lines of one block, in input order: ``line  preds...  reason``."""
    text: list[str] = [""] * block.n_lines
    first = min([int(v[0]) for v in block.bad.values()] + [int(x) for x in block.lines[:1]])  # the block's line 1
    for kind, lines in block.bad.items():
        empty = "\t" * preds.shape[1] + reasons[kind]
        for line in lines.tolist():
            text[line - first] = f"{line}\t{empty}\n"
    for line, row in zip(block.lines.tolist(), preds.tolist()):
        text[line - first] = f"{line}\t" + "\t".join(f"{p:.7g}" for p in row) + "\t\n"
    return "".join(text)


def run_blocks(path: Path, out: TextIO, model: nn.Module, inputs: train.Inputs, store: StoreReader,
               labelled: bool, strict: bool, batch_size: int, device: torch.device, progress: bool) -> Tally:
    """Encode, score and write every line of ``path`` in order."""
    encoder = raw_rows(store)
    reasons = Reasons(encoder, labelled)
    tally = Tally()
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="predict") if WORKERS > 1 else None
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="predict", disable=not progress)
    try:
        blocks = encoder.blocks(path, labelled, pool)
        while True:
            t0 = time.perf_counter()
            block = next(blocks, None)
            t1 = time.perf_counter()
            tally.seconds["read+encode"] += t1 - t0
            if block is None:
                break
            if strict and block.bad:
                kind, lines = min(block.bad.items(), key=lambda kv: kv[1][0])
                raise BadRowError(f"{path}:{int(lines[0])}: {reasons[kind]}; fix or delete that line, or drop "
                                  f"--strict (a bad row then gets an output line with no prediction)")
            labels, preds = score(model, inputs, block, batch_size, device)
            t2 = time.perf_counter()
            out.write(block_text(block, preds, reasons))
            tally.seconds["model"] += t2 - t1
            tally.seconds["write"] += time.perf_counter() - t2
            tally.rows += len(block.lines)
            tally.lines += block.n_lines
            for kind, lines in block.bad.items():
                tally.add_bad(kind, lines)
            if labelled:
                tally.labels.append(labels.astype(np.float32))
                tally.preds.append(preds.astype(np.float32))
            bar.set_postfix(rows=f"{tally.rows:,}", bad=sum(tally.bad.values()), refresh=False)
            bar.update(block.raw_pos - bar.n)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return tally


def metrics(tally: Tally, model: nn.Module) -> dict[str, float]:
    """AUC / logloss (binary tasks), RMSE / MAE (regression) of the scored rows, by train.py's functions."""
    labels = np.concatenate(tally.labels) if tally.labels else np.zeros((0, model.num_tasks))
    preds = np.concatenate(tally.preds) if tally.preds else np.zeros((0, model.num_tasks))
    return train.compute_metrics(labels.astype(np.float64), preds.astype(np.float64), model.tasks,
                                 model.task_types)


# ------------------------------------------------------------------------------------------- output


def check_out(out: Path, input_path: Path | None, overwrite: bool) -> None:
    """``--out`` may be written: not the input file, not a directory, not an existing file without
    ``overwrite``, in an existing directory. :class:`PredictError` naming the fix otherwise."""
    if input_path is not None and out.resolve() == input_path.resolve():
        raise PredictError(f"--out {out} is the input file; pass another path")
    if out.is_dir():
        raise PredictError(f"--out {out} is a directory; pass a file path such as {out / 'predictions.tsv'}")
    if out.exists() and not overwrite:
        raise PredictError(f"--out {out} exists; pass another path, or --overwrite to replace it")
    if not out.parent.is_dir():
        raise PredictError(f"--out {out}: directory {out.parent} does not exist; create it first")


def place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished temporary file to ``out``: replacing it only with ``overwrite``, else exclusively
    (a file that appeared meanwhile is never replaced)."""
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise PredictError(f"--out {out} appeared while predicting; pass another path, or --overwrite") from None
    tmp.unlink()


def predict_file(run_dir: str | os.PathLike, input_path: str | os.PathLike, out: str | os.PathLike, *,
                 data: str | None = None, labels: str = "auto", strict: bool = False, overwrite: bool = False,
                 batch_size: int = 8192, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Score ``input_path`` with ``run_dir``'s best.pt into ``out`` (see the module docstring) -> a summary:
    rows, lines, bad rows, seconds per stage, rows/s and, for labelled input, the metrics."""
    start = time.perf_counter()
    input_path, out = Path(input_path), Path(out)
    if batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {batch_size}")
    if labels not in ("auto", "yes", "no"):
        raise PredictError(f"--labels must be one of auto, yes, no; got {labels!r}")
    if not input_path.is_file():
        raise PredictError(f"--input {input_path} does not exist; pass a raw file in the dataset's format")
    check_out(out, input_path, overwrite)
    dev = torch.device(device)
    model, inputs, store = load_run(Path(run_dir), data, dev)
    encoder = raw_rows(store)
    labelled = encoder.is_labelled(input_path) if labels == "auto" else labels == "yes"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "x", encoding="ascii", newline="\n") as f:
            f.write("\t".join(["line", *model.tasks, "reason"]) + "\n")
            tally = run_blocks(input_path, f, model, inputs, store, labelled, strict, batch_size, dev, progress)
        place(tmp, out, overwrite)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "out": str(out), "input": str(input_path), "labelled": labelled, "lines": tally.lines, "rows": tally.rows,
        "bad_rows": sum(tally.bad.values()), "bad": {k: {"rows": n, "first_lines": tally.bad_lines[k]}
                                                    for k, n in tally.bad.items()},
        "seconds": round(seconds, 3), "rows_per_s": round(tally.lines / max(seconds, 1e-9)),
        "stage_seconds": {k: round(v, 3) for k, v in tally.seconds.items()}}
    if labelled:
        result["metrics"] = metrics(tally, model)
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [f"{result['input']} -> {result['out']}: {result['rows']:,} of {result['lines']:,} lines scored in "
             f"{result['seconds']:.1f} s ({result['rows_per_s']:,} lines/s; "
             + ", ".join(f"{k} {v:.1f} s" for k, v in result["stage_seconds"].items()) + ")"]
    if result["bad_rows"]:
        lines.append(f"  {result['bad_rows']:,} bad rows have no prediction (their output line has a reason): "
                     + "; ".join(f"{n['rows']} {k} (first at lines {', '.join(map(str, n['first_lines']))})"
                                 for k, n in result["bad"].items()))
    if "metrics" in result:
        lines.append("  " + ", ".join(f"{k} {v:.6f}" for k, v in result["metrics"].items()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run dir of train.py (checkpoints/<Model>/<timestamp>), scored by its best.pt")
    p.add_argument("--input", required=True, help="raw file in the dataset's own format, plain or gzip")
    p.add_argument("--out", required=True, help="output TSV: one line per input line (never replaced without "
                                                "--overwrite)")
    p.add_argument("--data", default=None, help="the run's store, if it moved (default: the path in its config)")
    p.add_argument("--labels", choices=("auto", "yes", "no"), default="auto",
                   help="whether rows carry the label column (auto: from the first line's column count)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row (exit 1, nothing written)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--batch_size", type=int, default=8192, help="rows per model call")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = predict_file(args.run_dir, args.input, args.out, data=args.data, labels=args.labels,
                              strict=args.strict, overwrite=args.overwrite, batch_size=args.batch_size,
                              device=args.device, progress=not args.no_progress)
    except (PredictError, InputError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
