"""Training samples/s of models in two checkouts of this repo, interleaved in fresh processes: the before/after
measurement of a change to a layer or model.

    OMP_NUM_THREADS=1 python scripts/bench_ab.py --before ../wt-before --models FwFM,DeepFEFM,PNN,DLRM,FM
    (git worktree add --detach ../wt-before <commit> makes the "before" checkout)

Each measurement is a fresh ``python scripts/bench_ab.py --child MODEL`` with the checkout first on sys.path: the
model at its default (paper / BARS) sizes, embedding 16, on one random batch (``--batch`` rows of 39 sparse
fields of ``--vocab`` ids each and 13 dense features, the Criteo layout), one warm-up step, then ``--steps``
timed steps of forward + loss + backward + Adam: ``foreach`` (default, the same update code on both sides: a
layer's change alone), or with ``--optimizer train`` each checkout's own ``train.make_optimizer`` (the optimizer
train.py runs there, e.g. fused on the CPU since it was). Per repeat every model runs before, then after, so
load on the shared machine falls on both alike; the table gives each side's median and the ratio of medians.
Include a model the change does not touch (FM) as the control: its ratio is the noise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(name: str, batch_size: int, vocab: int, steps: int, optimizer_impl: str = "foreach") -> dict[str, float]:
    """One model's training samples/s in this process (the checkout is whatever ``import models`` finds)."""
    import torch

    import models
    from dataset.schema import Schema

    torch.manual_seed(0)
    fields = 39
    schema = Schema(tuple(f"C{i + 1}" for i in range(fields)), (vocab,) * fields,
                    dense_fields=tuple(f"I{i + 1}" for i in range(13)))
    model = models.build_model(name, schema, embed_dim=16)
    if optimizer_impl == "train":
        import train
        optimizer = train.make_optimizer(model, argparse.Namespace(optimizer="adam", lr=1e-3, weight_decay=0.0))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    batch = {"sparse": torch.randint(0, vocab, (batch_size, fields)), "dense": torch.rand(batch_size, 13),
             "label": torch.randint(0, 2, (batch_size, 1)).float()}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch, model(batch)).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"samples_per_s": batch_size * steps / (time.perf_counter() - start)}


def measure(tree: Path, name: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_ab.py"), "--child", name, "--batch", str(args.batch),
           "--vocab", str(args.vocab), "--steps", str(args.steps), "--optimizer", args.optimizer]
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"bench_ab.py: {name} in {tree} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="the checkout to compare against (a git worktree)")
    p.add_argument("--after", type=Path, default=ROOT, help="the changed checkout (default: this one)")
    p.add_argument("--models", default="FM", help="comma-separated model names")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=2239, help="ids per field (the benchmark store has ~2,239)")
    p.add_argument("--optimizer", choices=("foreach", "train"), default="foreach",
                   help="Adam foreach on both sides, or each checkout's train.make_optimizer")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is None and (args.before is None or not (args.before / "models").is_dir()):
        p.error("--before must name a checkout of this repo (git worktree add --detach ../wt-before <commit>)")
    if min(args.repeat, args.steps, args.batch, args.vocab) < 1:
        p.error("--repeat, --steps, --batch and --vocab must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.vocab, args.steps, args.optimizer)))
        return 0
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    runs: dict[str, dict[str, list[float]]] = {n: {"before": [], "after": []} for n in names}
    for r in range(args.repeat):
        for name in names:
            for side, tree in (("before", args.before), ("after", args.after)):
                runs[name][side].append(measure(tree, name, args))
                print(f"bench_ab: repeat {r + 1}, {name}, {side}: {runs[name][side][-1]:,.0f} samples/s",
                      file=sys.stderr)
    print("| model | before samples/s | after samples/s | after / before |\n| --- | ---: | ---: | ---: |")
    for name in names:
        b, a = statistics.median(runs[name]["before"]), statistics.median(runs[name]["after"])
        print(f"| {name} | {b:,.0f} | {a:,.0f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
