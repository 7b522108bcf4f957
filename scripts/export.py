"""Export a trained run to TorchScript and ONNX, with a manifest and the store's vocabularies.

    python scripts/export.py checkpoints/DeepFM/<run> --out exports/deepfm
    python scripts/export.py checkpoints/DIN/<run> --out exports/din --format onnx --overwrite

The run dir's best.pt is loaded exactly as scripts/predict.py loads it (:func:`predict.load_run`: best.pt
intact, the store there with the schema and vocabulary checksum the run recorded; ``--data`` if it moved), and
written into ``--out`` as

* ``model.pt``: TorchScript (``torch.jit.trace``), ``model.onnx``: ONNX (the TorchScript-based exporter, opset
  :data:`OPSET`). Both take the STORE's row layout as positional tensors named like the batch blocks
  (``sparse`` int64 [batch, F], ``dense`` float32 [batch, D], and on stores with sequences ``seq`` int32,
  ``seq_len`` int64, ``seq_weight`` float32), apply the run's --drop_fields / --labels column selection inside,
  and return ``prob`` float32 [batch, T]: the probability of each binary task, the value of each regression
  task. The batch dimension is dynamic.
* ``manifest.json``: model, hyperparameters, tasks, the store's schema, the inputs and outputs, the store path
  and vocabulary checksum, sha256 of every file, library versions, the export date.
* ``vocab.json``: every vocabulary the store keeps (values in id order, or a hash spec) and the store's
  preprocessing options, so that a consumer outside Python has what encoding raw rows takes.

Every exported file is checked before it is written: reloaded (torch.jit.load / onnxruntime) and run on real
rows of the store's test split at two batch sizes (1 and :data:`CHECK_ROWS`), its probabilities within
:data:`TOLERANCE` of the eager model's. A model that fails in one format (tracing raises, or the export gives
other numbers) is reported with the reason on one line, and the other format is still written.

The directory appears atomically: it is built in a temporary directory beside ``--out`` and renamed; an
existing ``--out`` is refused unless ``--overwrite``, and even then only a directory an earlier export wrote
(it has a manifest.json) is replaced.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import train  # noqa: E402
from dataset.raw import sha256_file  # noqa: E402
from dataset.predict_encode import vocabulary_records  # noqa: E402
from dataset.store import StoreReader  # noqa: E402
from predict import PredictError, load_run  # noqa: E402

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
OPSET = 17
TOLERANCE = 1e-5  # largest |probability difference| an export may have from the eager model
CHECK_ROWS = 37  # the second batch size an export is checked at (the first is 1); traced at TRACE_ROWS
TRACE_ROWS = 8
MANIFEST_VERSION = 1


class ExportError(Exception):
    """A problem with the run, the store, the output or every format; the message names the fix."""


# ------------------------------------------------------------------------------------------- the graph


class ExportedModel(nn.Module):
    """A trained model behind the store's row layout: positional tensors named like the store's batch blocks
    (:func:`input_blocks`) -> ``prob`` [B, T] (sigmoid of binary tasks' logits, regression tasks' raw values).

    The run's column selection (``train.Inputs``: --drop_fields, --labels) happens inside, so a consumer feeds
    every column the store has, in the store's order."""

    def __init__(self, model: nn.Module, inputs: train.Inputs, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.selected = [name for name in names if name in inputs.columns]
        for name in self.selected:
            self.register_buffer(f"columns_{name}", inputs.columns[name].cpu().clone(), persistent=False)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.names, tensors))
        if "dense" not in batch:  # a store without dense fields: the model still reads an empty [B, 0] block
            batch["dense"] = tensors[0].new_zeros((tensors[0].shape[0], 0), dtype=torch.float32)
        for name in self.selected:
            batch[name] = batch[name].index_select(1, getattr(self, f"columns_{name}"))
        logits = self.model(batch)  # [B, T]
        return torch.where(self.model.regression, logits, torch.sigmoid(logits))


def input_blocks(store: StoreReader) -> list[Any]:
    """The store's batch blocks an export takes, in storage order: every non-empty block but the labels (a store
    without dense fields has no ``dense`` input)."""
    return [b for b in store.schema.blocks() if b.width and b.name != "label"]


def sample_rows(store: StoreReader, rows: int) -> tuple[torch.Tensor, ...]:
    """The first ``rows`` rows of the store's test split (fewer if it has fewer), one tensor per input block of
    the batch dtype: what exports are traced with and checked on."""
    chunks, have, i = [], 0, 0
    while have < rows and i < store.num_chunks("test"):
        chunks.append(store.read_chunk("test", i))
        have += len(chunks[-1]["label"])
        i += 1
    if not chunks:
        raise ExportError(f"store {store.path} has no test rows to check the export on; pass --data PATH of a "
                          f"store with a test split")
    return tuple(torch.from_numpy(np.concatenate([c[b.name] for c in chunks])[:rows].astype(b.batch_dtype))
                 for b in input_blocks(store))


# ------------------------------------------------------------------------------------------- formats


def export_torchscript(wrapper: ExportedModel, example: tuple[torch.Tensor, ...], path: Path,
                       names: list[str]) -> Callable[[tuple[torch.Tensor, ...]], np.ndarray]:
    """Trace ``wrapper`` on ``example`` into ``path`` -> a function running the saved file (reloaded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: checked by running other batch sizes instead
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))

    def run(rows: tuple[torch.Tensor, ...]) -> np.ndarray:
        with torch.inference_mode():
            return loaded(*rows).numpy()
    return run


def export_onnx(wrapper: ExportedModel, example: tuple[torch.Tensor, ...], path: Path,
                names: list[str]) -> Callable[[tuple[torch.Tensor, ...]], np.ndarray]:
    """torch.onnx.export ``wrapper`` (the TorchScript-based exporter: no onnxscript, a second per model where
    torch.export takes ten) with a dynamic batch axis -> a function running ``path`` in onnxruntime (CPU)."""
    import onnxruntime

    axes = {name: {0: "batch"} for name in [*names, "prob"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and TracerWarnings
        torch.onnx.export(wrapper, example, str(path), input_names=names, output_names=["prob"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fed = [i.name for i in session.get_inputs()]  # a block the graph never reads is not an input of it

    def run(rows: tuple[torch.Tensor, ...]) -> np.ndarray:
        return session.run(["prob"], {n: r.numpy() for n, r in zip(names, rows) if n in fed})[0]
    return run


EXPORTERS = {"torchscript": export_torchscript, "onnx": export_onnx}


def check_parity(run: Callable[[tuple[torch.Tensor, ...]], np.ndarray], wrapper: ExportedModel,
                 rows: tuple[torch.Tensor, ...]) -> str | None:
    """Why the exported ``run`` differs from the eager model on ``rows`` at batch sizes 1 and all rows, or None."""
    for size in sorted({1, len(rows[0])}):
        part = tuple(r[:size] for r in rows)
        with torch.inference_mode():
            want = wrapper(*part).numpy()
        try:
            got = run(part)
        except Exception as e:  # noqa: BLE001 - a runtime's failure is the reason reported
            return f"running it at batch size {size} fails ({e.__class__.__name__}: {first_line(e)})"
        if got.shape != want.shape:
            return f"at batch size {size} it returns shape {list(got.shape)}, not {list(want.shape)}"
        diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        if not diff <= TOLERANCE:
            return f"at batch size {size} its probabilities differ from the eager model's by {diff:.3g} > {TOLERANCE}"
    return None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


# ------------------------------------------------------------------------------------------- the directory


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"torch": torch.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def manifest(config: dict[str, Any], model: nn.Module, store: StoreReader, run_dir: Path,
             written: dict[str, str], failed: dict[str, str]) -> dict[str, Any]:
    """What a consumer needs to feed the exported graph and to know what it scores."""
    blocks = input_blocks(store)
    schema = store.schema
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": config["model"], "model_hparams": config["model_hparams"],
        "train": {k: config["train"].get(k) for k in ("drop_fields", "labels", "seq_pooling", "dense_init")},
        "run_dir": str(run_dir),
        "tasks": list(model.tasks), "task_types": list(model.task_types),
        "schema": {**schema.to_dict(), "vocabularies": schema.vocabs},
        "inputs": [{"name": b.name, "dtype": str(np.dtype(b.batch_dtype)), "shape": ["batch", b.width]}
                   for b in blocks],
        "outputs": [{"name": "prob", "dtype": "float32", "shape": ["batch", model.num_tasks],
                     "columns": list(model.tasks),
                     "meaning": "probability for a binary task, the predicted value for a regression task"}],
        "store": {"path": config["store"]["path"], "dataset": config["store"].get("dataset"),
                  "vocab_checksum": config["store"].get("vocab_checksum")},
        "files": written, "not_exported": failed,
        "check": {"tolerance": TOLERANCE, "batch_sizes": [1, CHECK_ROWS], "rows": "the store's test split"},
        "versions": versions(), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def onnx_inputs(path: Path) -> list[str]:
    """The inputs the ONNX graph takes: the exporter leaves out a block the model never reads (a model without
    a dense part, sequences a model ignores), and onnxruntime refuses a feed it does not take."""
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def vocab_file(store: StoreReader, checksum: str | None) -> dict[str, Any]:
    """The store's vocabularies and preprocessing options, with which field uses which vocabulary."""
    schema = store.schema
    return {"vocab_checksum": checksum, "dataset": store.meta.get("dataset"),
            "options": store.meta.get("options", {}),
            "ids": "0 = OOV (rare or unseen), 1 = missing, values[i] has id i + 2; a hashed vocabulary has no "
                   "values and a hash spec instead",
            "sparse_fields": dict(zip(schema.sparse_fields, schema.sparse_vocabs)),
            "sequence_fields": {s.name: s.vocab for s in schema.sequence_fields},
            "vocabularies": vocabulary_records(store)}


def check_out(out: Path, overwrite: bool) -> None:
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: directory {out.parent} does not exist; create it first")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"--out {out} exists; pass another path, or --overwrite to replace an earlier export")
        if not out.is_dir() or out.is_symlink() or not (out / "manifest.json").is_file():
            raise ExportError(f"--out {out} is not a directory export.py wrote (no manifest.json); --overwrite only "
                              f"replaces an earlier export: pass another path")


def place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; with ``overwrite`` the earlier export is moved aside first and
    removed after, so ``out`` is always either the old export or the whole new one."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists() and overwrite:
        check_out(out, overwrite)  # still an export (it could have changed while exporting)
        os.rename(out, old)
    try:
        os.rename(tmp, out)  # refuses a non-empty directory that appeared meanwhile
    except OSError:
        if old.exists():
            os.rename(old, out)
        raise ExportError(f"--out {out} appeared while exporting; pass another path, or --overwrite") from None
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------- the command


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, formats: tuple[str, ...] = FORMATS,
               overwrite: bool = False, data: str | None = None) -> dict[str, Any]:
    """Export ``run_dir``'s best.pt into the directory ``out`` (see the module docstring) -> a summary: the
    files written, the formats that failed and why, seconds per format."""
    run_dir, out = Path(run_dir), Path(out)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"--format {','.join(formats)}: name one or more of {','.join(FORMATS)}, comma-separated")
    check_out(out, overwrite)
    model, inputs, store = load_run(run_dir, data, torch.device("cpu"))
    config = train.load_checkpoint(run_dir / "best.pt", mmap=True)["config"]
    names = [b.name for b in input_blocks(store)]
    wrapper = ExportedModel(model, inputs, names).eval()
    rows = sample_rows(store, CHECK_ROWS)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    written: dict[str, str] = {}
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    try:
        tmp.mkdir()
        for fmt in formats:
            start, path = time.perf_counter(), tmp / FILES[fmt]
            why = export_format(fmt, wrapper, rows, path, names)
            seconds[fmt] = round(time.perf_counter() - start, 3)
            if why:
                failed[fmt] = why
                path.unlink(missing_ok=True)
                print(f"export.py: cannot export {config['model']} to {fmt}: {why}", file=sys.stderr)
            else:
                written[FILES[fmt]] = sha256_file(path)
        if not written:
            raise ExportError(f"{config['model']} could not be exported in any format asked for "
                              f"({', '.join(f'{k}: {v}' for k, v in failed.items())})")
        checksum = config["store"].get("vocab_checksum")
        (tmp / "vocab.json").write_text(json.dumps(vocab_file(store, checksum), indent=1) + "\n")
        written["vocab.json"] = sha256_file(tmp / "vocab.json")
        record = manifest(config, model, store, run_dir, written, failed)
        if "model.onnx" in written:
            record["onnx_inputs"] = onnx_inputs(tmp / "model.onnx")
        (tmp / "manifest.json").write_text(json.dumps(record, indent=2) + "\n")
        place(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "model": config["model"], "files": sorted([*written, "manifest.json"]),
            "not_exported": failed, "seconds": seconds}


def export_format(fmt: str, wrapper: ExportedModel, rows: tuple[torch.Tensor, ...], path: Path,
                  names: list[str]) -> str | None:
    """Export one format into ``path`` and check it -> why it cannot be exported, or None."""
    example = tuple(r[:TRACE_ROWS] for r in rows)
    try:
        run = EXPORTERS[fmt](wrapper, example, path, names)
    except Exception as e:  # noqa: BLE001 - tracing and exporting raise many types; the reason is reported
        return f"{'tracing' if fmt == 'torchscript' else 'torch.onnx.export'} fails ({e.__class__.__name__}: " \
               f"{first_line(e)})"
    return check_parity(run, wrapper, rows)


def parse_formats(text: str) -> tuple[str, ...]:
    return tuple(f.strip().lower() for f in text.split(",") if f.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run dir of train.py (checkpoints/<Model>/<timestamp>), exported from its best.pt")
    p.add_argument("--out", required=True, help="the export directory to create (never replaced without --overwrite)")
    p.add_argument("--format", type=parse_formats, default=FORMATS,
                   help="comma-separated formats: torchscript,onnx (default both)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
    p.add_argument("--data", default=None, help="the run's store, if it moved (default: the path in its config)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = export_run(args.run_dir, args.out, formats=args.format, overwrite=args.overwrite, data=args.data)
    except (ExportError, PredictError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
