"""Per-step cost of the dense embedding gradient + Adam over the whole table against sparse gradients with a
row-wise optimizer (issue #14), on a DeepFM the size of scripts/bench_train.py's.

    python scripts/bench_sparse_embed.py [--vocab 87330] [--fields 39] [--dense 0] [--batch-size 4096] [--steps 20]

The model: DeepFM, embedding 16, MLP 400-400-400, ``--fields`` sparse fields sharing ``--vocab`` rows evenly,
``--dense`` dense values. The defaults are bench_train.py's store (1M generated Criteo rows, min-count 10,
dense bucketized: 39 fields, 87,330 rows); full Kaggle Criteo at min-count 10 has about 1.1M rows. Ids are drawn uniformly per field (more distinct rows per batch than skewed real ids: a sparse
update's worst case). Contenders, each on the same fixed batches:

* ``dense adam``: train.py's default, the tables as it runs them (``sparse=False``, layers/embedding.py
  ``RowTable``) and one Adam over everything (train.make_optimizer: fused on the CPU): every step writes every
  row of both tables (their gradient is a full-size tensor of mostly zeros);
* ``dense adagrad``: ``--optimizer adagrad``, the same with Adagrad (fused on the CPU);
* ``sparse adagrad``: ``--optimizer adagrad --sparse_embed``, the tables with sparse gradients
  (``FeatureEmbedding.sparse_gradients``) and one Adagrad over everything, which reads and writes only the
  rows a batch touches;
* ``sparse adam``: not offered by train.py (it takes two optimizers): ``torch.optim.SparseAdam`` on the sparse
  tables and Adam (fused) on the rest.

Reports the median ms per step (forward + backward + optimizer) over ``--steps`` after 3 warm-up steps, and
the split of the median step into forward+backward and optimizer. Prints Markdown.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset.schema import Schema  # noqa: E402
from models.deepfm import DeepFM  # noqa: E402
import train  # noqa: E402

EMBED_DIM, HIDDEN, LR, WARMUP = 16, (400, 400, 400), 1e-3, 3


def build(fields: int, vocab: int, dense: int) -> DeepFM:
    """The benchmark's DeepFM over ``fields`` fields of ``vocab // fields`` ids each."""
    schema = Schema(tuple(f"C{i}" for i in range(fields)), (vocab // fields,) * fields,
                    dense_fields=tuple(f"I{i}" for i in range(dense)))
    torch.manual_seed(0)
    return DeepFM(schema, embed_dim=EMBED_DIM, hidden_units=HIDDEN)


CONTENDERS = ("dense adam", "dense adagrad", "sparse adagrad", "sparse adam")


def optimizers(model: DeepFM, kind: str) -> list[torch.optim.Optimizer]:
    """``kind`` -> the optimizers of one contender (sets the tables' gradients sparse to match)."""
    sparse, name = kind.split()
    model.embedding.sparse_gradients(sparse == "sparse")
    if kind != "sparse adam":  # what train.py builds for --optimizer name [--sparse_embed]
        flags = argparse.Namespace(optimizer=name, lr=LR, weight_decay=0.0, sparse_embed=sparse == "sparse")
        return [train.make_optimizer(model, flags)]
    emb = model.embedding
    tables = [emb.table.weight, emb.weight.weight]
    rest = [p for p in model.parameters() if all(p is not t for t in tables)]
    return [torch.optim.SparseAdam(tables, lr=LR), torch.optim.Adam(rest, lr=LR, fused=True)]


def time_steps(model: DeepFM, opts: list[torch.optim.Optimizer], batches: Sequence[dict[str, torch.Tensor]],
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """-> per-step seconds of (forward + backward, optimizer step) on each batch."""
    fwd_bwd, step = [], []
    for batch in batches:
        t0 = clock()
        loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        t1 = clock()
        for o in opts:
            o.step()
        fwd_bwd.append(t1 - t0)
        step.append(clock() - t1)
    return fwd_bwd, step


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=87_330, help="rows of the shared table, all fields")
    p.add_argument("--fields", type=int, default=39)
    p.add_argument("--dense", type=int, default=0, help="dense values per row")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="timed steps per contender (after 3 warm-up steps)")
    args = p.parse_args(argv)
    if min(args.vocab, args.fields, args.batch_size, args.steps) < 1 or args.vocab < args.fields or args.dense < 0:
        p.error("--vocab, --fields, --batch-size and --steps must be >= 1, --dense >= 0, and --vocab >= --fields")
    g = torch.Generator().manual_seed(1)
    per_field = args.vocab // args.fields
    batches = [{"sparse": torch.randint(0, per_field, (args.batch_size, args.fields), generator=g),
                "dense": torch.rand(args.batch_size, args.dense, generator=g),
                "label": (torch.rand(args.batch_size, 1, generator=g) < 0.25).float()}
               for _ in range(WARMUP + args.steps)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); vocab {args.vocab:,} rows x {EMBED_DIM}, "
          f"{args.fields} fields, {args.dense} dense, batch {args.batch_size}\n")
    print("| contender | ms/step | forward+backward ms | optimizer ms | samples/s |\n|---|---|---|---|---|")
    for kind in CONTENDERS:
        model = build(args.fields, args.vocab, args.dense)
        opts = optimizers(model, kind)
        fb, st = time_steps(model, opts, batches)
        fb, st = fb[WARMUP:], st[WARMUP:]
        total = statistics.median(a + b for a, b in zip(fb, st))
        print(f"| {kind} | {1e3 * total:.1f} | {1e3 * statistics.median(fb):.1f} | {1e3 * statistics.median(st):.1f} "
              f"| {args.batch_size / total:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
