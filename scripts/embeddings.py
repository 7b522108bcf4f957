"""Embeddings in and out of a trained run (DeepCTR FAQ): the vectors of raw values, and AFM's attention
weights over feature pairs.

    python scripts/embeddings.py extract RUN_DIR --field C3 --values 05db9164 68fd1e64 [--out vecs.tsv]
    python scripts/embeddings.py extract RUN_DIR --field C3 --all --out vocab_vecs.tsv
    python scripts/embeddings.py afm-attention RUN_DIR --input rows.txt --rows 10 --top 5 --out att.tsv

``extract`` writes ``value  id  oov  e_1 .. e_D`` per value (tab-separated; ``oov`` 1: the vocabulary does not
keep the value, and its vector is the OOV row). ``afm-attention`` writes ``line  field_i  field_j  weight`` per
row and pair (the pairs with the ``--top`` largest weights, all of them by default). The run is loaded by
scripts/predict.py's :func:`load_run` (every check predict makes) and raw rows are encoded by predict's encoder.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from dataset.embed_values import encode_values, vocabulary_values  # noqa: E402
from dataset.predict_encode import raw_rows  # noqa: E402
from dataset.raw import InputError  # noqa: E402
from dataset.vocab import OOV_ID  # noqa: E402
import predict  # noqa: E402


def extract(run_dir: Path, field: str, values: list[str] | None, data: str | None = None
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """-> (values, ids int64 [n], vectors float32 [n, D]) of ``field``'s raw ``values`` (None: its whole
    vocabulary, ids 2..) in the run's best.pt."""
    model, _, store = predict.load_run(run_dir, data, torch.device("cpu"))
    if values is None and field in store.schema.sparse_fields and "hash_buckets" not in store.vocabulary(field):
        values = vocabulary_values(store, field)
    ids = encode_values(store, field, values if values is not None else [])
    fields = list(store.schema.sparse_fields)
    if model.embedding.num_sparse != len(fields):
        raise InputError(f"{run_dir} was trained with --drop_fields; extract supports runs on every field only")
    vectors = model.embedding.field_vectors(fields.index(field), torch.from_numpy(ids)).numpy()
    return list(values), ids, vectors


def write_atomic(out: Path | None, lines: list[str], overwrite: bool) -> None:
    """Lines -> ``out`` through a temporary file placed as predict.py places its output (stdout when None);
    :func:`main` has checked ``out`` with :func:`predict.check_out` before any work."""
    text = "".join(line + "\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
        return
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        predict.place(tmp, out, overwrite)
    finally:
        tmp.unlink(missing_ok=True)


def extract_lines(values: list[str], ids: np.ndarray, vectors: np.ndarray) -> list[str]:
    return ["\t".join([v, str(i), str(int(i == OOV_ID)), *(repr(float(x)) for x in vec)])
            for v, i, vec in zip(values, ids, vectors)]


def afm_attention(run_dir: Path, input_path: Path, rows: int | None, data: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """-> (line numbers [n], weights [n, P], pairs) of the first ``rows`` valid rows of a raw file, from the
    run's AFM model itself (:meth:`models.afm.AFM.attention`)."""
    model, inputs, store = predict.load_run(run_dir, data, torch.device("cpu"))
    if not hasattr(model, "attention"):
        raise InputError(f"{run_dir} holds a {type(model).__name__}; afm-attention needs an AFM run")
    encoder = raw_rows(store)
    lines, weights = [], []
    taken = 0
    for block in encoder.blocks(input_path, encoder.is_labelled(input_path), None):
        n = len(block.lines) if rows is None else min(len(block.lines), rows - taken)
        batch = {"sparse": torch.from_numpy(block.sparse[:n]).long(), "dense": torch.from_numpy(block.dense[:n]),
                 "label": torch.from_numpy(block.label[:n])}
        batch = inputs.select(batch)
        with torch.no_grad():
            w, pairs = model.attention(batch)
        lines.append(block.lines[:n])
        weights.append(w.numpy())
        taken += n
        if rows is not None and taken >= rows:
            break
    schema = store.schema
    names = [*schema.sparse_fields, *(q.name for q in schema.sequence_fields), *schema.dense_fields]
    return np.concatenate(lines), np.concatenate(weights), [(names[i], names[j]) for i, j in pairs]


def attention_lines(lines: np.ndarray, weights: np.ndarray, pairs: list[tuple[str, str]], top: int | None
                    ) -> list[str]:
    out = []
    for line, w in zip(lines, weights):
        order = np.argsort(-w, kind="stable")[:top]
        out += [f"{line}\t{pairs[p][0]}\t{pairs[p][1]}\t{float(w[p])!r}" for p in order]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="embedding vectors of raw values of a field")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--field", required=True)
    which = ex.add_mutually_exclusive_group(required=True)
    which.add_argument("--values", nargs="+")
    which.add_argument("--values_file", type=Path, help="one raw value per line")
    which.add_argument("--all", action="store_true", help="every value of the field's vocabulary")
    att = sub.add_parser("afm-attention", help="AFM's attention weights over field pairs of raw rows")
    att.add_argument("run_dir", type=Path)
    att.add_argument("--input", type=Path, required=True, help="raw rows in the dataset's format")
    att.add_argument("--rows", type=int, default=None, help="the first N valid rows (default: all)")
    att.add_argument("--top", type=int, default=None, help="the K pairs of largest weight per row (default: all)")
    for p in (ex, att):
        p.add_argument("--out", type=Path, default=None, help="output TSV (default: stdout)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        p.add_argument("--data", default=None, help="the store's path, if it moved since training")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out is not None:
            source = args.values_file if args.command == "extract" else args.input
            predict.check_out(args.out, source, args.overwrite)
        if args.command == "extract":
            values = (args.values_file.read_text().splitlines() if args.values_file else
                      None if args.all else args.values)
            lines = extract_lines(*extract(args.run_dir, args.field, values, args.data))
        else:
            lines = attention_lines(*afm_attention(args.run_dir, args.input, args.rows, args.data), args.top)
        write_atomic(args.out, lines, args.overwrite)
    except (InputError, predict.PredictError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
