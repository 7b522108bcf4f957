"""Where train.py's training step goes on one device, phase by phase: data, forward (with the loss), backward,
optimizer; eager, compiled, and through CUDA graphs.

    python scripts/bench_gpu.py --data STORE [--out DIR] [--models DeepFM] [--batch-sizes 4096 16384]
                                [--modes eager compile cudagraphs] [--steps 50] [--warmup 10] [--amp]
                                [--device cuda]

``../shared/gpu/check.sh`` calls it on the lent GPU with ``--data <its store> --out $OUT``; on a CPU it runs the
same way with ``--device cpu``. Per model, batch size and mode, everything is train.py's: its flags' defaults
(model hyperparameters, Adam, seed), its config checks (:func:`train.resolve_config`), model, loss and
optimizer, its :func:`train.forward_loss` and the resident data path (the train split loaded once onto the
device, batches cut by an on-device permutation: what ``--data_path auto`` picks when the split fits).

A step is timed in four phases: *data* (the next batch, its columns selected), *forward* (the model and the
loss), *backward* (``zero_grad`` and ``loss.backward()``), *optimizer* (``optimizer.step()``). On CUDA, events
recorded between the phases give each phase's device time without a synchronization inside the step; the host
waits once, after the last step. On a CPU every phase is host time. Reported: each phase's median ms over the
timed steps, the step's wall ms (the timed steps' wall time over their count, host waits included) and
samples/s, and the warm-up's seconds (where compiling happens).

Modes: ``eager``; ``compile``, train.py ``--compile`` (:func:`train.compiled`); ``cudagraphs``,
``torch.compile(mode="reduce-overhead")``, which replays each batch shape's kernels as one CUDA graph (CUDA
only; train.py does not offer it: this measures whether it would pay). Each row prints as soon as it is
measured, so a run cut short by a timeout keeps its rows; ``--out DIR`` also writes ``bench_gpu.json`` and
``bench_gpu.md`` there (never over earlier ones without ``--overwrite``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402

import train  # noqa: E402
from benchmark import machine_info, machine_line, markdown_table  # noqa: E402
from dataset.resident import ResidentLoader, ResidentSplit, make_resident_loader  # noqa: E402
from dataset.store import StoreReader  # noqa: E402

PHASES = ("data", "forward", "backward", "optimizer")
MODES = ("eager", "compile", "cudagraphs")
OUT_FILES = ("bench_gpu.json", "bench_gpu.md")
COLUMNS = ["model", "batch", "mode", *(f"{p} ms" for p in PHASES), "step ms (wall)", "samples/s", "warm-up s"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a store written by preprocess.py")
    p.add_argument("--out", type=Path, default=None, help="also write bench_gpu.json and bench_gpu.md here")
    p.add_argument("--overwrite", action="store_true", help="replace bench_gpu.json / .md already in --out")
    p.add_argument("--models", nargs="+", default=["DeepFM"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[4096, 16384])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=50, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compiling happens here)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast, as train.py --amp")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (default: cuda when there is one)")
    args = p.parse_args(argv)
    for flag in ("steps", "warmup"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    if any(b < 1 for b in args.batch_sizes):
        p.error("--batch-sizes must be >= 1")
    taken = [f for f in OUT_FILES if args.out is not None and (args.out / f).exists()]
    if taken and not args.overwrite:
        p.error(f"--out {args.out} already holds {' and '.join(taken)}; pass --overwrite to replace them or name "
                f"another directory")
    return args


# ------------------------------------------------------------------------------------------------ timing


class PhaseClock:
    """Marks the phase boundaries of a step. On CUDA it records events (no host wait); :meth:`durations`
    synchronizes once and returns, per step, the ms between consecutive marks. On a CPU the marks are host
    times."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.steps: list[list[Any]] = []

    def start_step(self) -> None:
        self.steps.append([])
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.steps[-1].append(event)
        else:
            self.steps[-1].append(time.perf_counter())

    def durations(self) -> list[list[float]]:
        """ms of each phase of each step."""
        if self.cuda:
            torch.cuda.synchronize()
            return [[a.elapsed_time(b) for a, b in zip(marks, marks[1:])] for marks in self.steps]
        return [[(b - a) * 1000 for a, b in zip(marks, marks[1:])] for marks in self.steps]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ one row


class Parts(NamedTuple):
    model: torch.nn.Module
    inputs: train.Inputs
    loss_fn: train.LossFn
    optimizer: torch.optim.Optimizer
    loader: ResidentLoader


def setup(name: str, batch_size: int, split: ResidentSplit, args: argparse.Namespace) -> Parts:
    """train.py's model, input selection, loss and optimizer for ``--model name --batch_size batch_size`` on the
    store (:func:`train.training_parts`), and a loader of ``split`` (on its device)."""
    argv = ["--model", name, "--data", str(args.data), "--batch_size", str(batch_size), "--data_path", "resident",
            *(["--amp"] if args.amp else [])]
    run_args, hparams = train.parse_args(argv)
    config = train.resolve_config(run_args, hparams, 1, [split.device])
    seed = config["train"]["seed"]
    torch.manual_seed(seed)
    inputs, model, loss_fn, optimizer = train.training_parts(config, StoreReader(args.data), split.device)
    return Parts(model, inputs, loss_fn, optimizer,
                 make_resident_loader(split, "train", batch_size, train=True, seed=seed))


def net_for(mode: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if mode == "compile":
        return train.compiled(model, device)
    if mode == "cudagraphs":
        return torch.compile(model, mode="reduce-overhead")
    return model


def endless(loader: ResidentLoader) -> Iterator[train.Batch]:
    """The loader's batches, epoch after epoch."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def measure(name: str, batch_size: int, mode: str, split: ResidentSplit, args: argparse.Namespace) -> dict[str, Any]:
    """One row: ``args.warmup`` untimed steps, then ``args.steps`` timed ones, phase by phase."""
    device = split.device
    model, inputs, loss_fn, optimizer, loader = setup(name, batch_size, split, args)
    net, ctx = net_for(mode, model, device), train.Ctx(device=device)
    batches = endless(loader)
    begin: Callable[[], None] = torch.compiler.cudagraph_mark_step_begin if mode == "cudagraphs" else lambda: None

    def step(clock: PhaseClock | None) -> None:
        mark: Callable[[], None] = clock.mark if clock else (lambda: None)
        if clock:
            clock.start_step()
        begin()
        batch = inputs.select(next(batches))
        mark()
        loss = train.forward_loss(net, batch, loss_fn, ctx, args.amp)
        mark()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        optimizer.step()
        mark()

    start = time.perf_counter()
    for _ in range(args.warmup):
        step(None)
    synchronize(device)
    warmup_s = time.perf_counter() - start
    clock = PhaseClock(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(clock)
    synchronize(device)
    wall = time.perf_counter() - start
    per_step = clock.durations()
    return {"model": name, "batch": batch_size, "mode": mode, "warmup_s": warmup_s,
            "phase_ms": {p: statistics.median(s[i] for s in per_step) for i, p in enumerate(PHASES)},
            "step_ms": wall / args.steps * 1000, "samples_per_s": batch_size * args.steps / wall}


def row(r: dict[str, Any]) -> list[Any]:
    if "error" in r:
        return [r["model"], r["batch"], r["mode"], *[""] * len(PHASES), r["error"], "", ""]
    return [r["model"], r["batch"], r["mode"], *(f"{r['phase_ms'][p]:.2f}" for p in PHASES), f"{r['step_ms']:.2f}",
            f"{r['samples_per_s']:,.0f}", f"{r['warmup_s']:.1f}"]


# ------------------------------------------------------------------------------------------------ run


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: --device cuda, but torch sees no CUDA device; pass --device cpu", file=sys.stderr)
        return 2
    start = time.perf_counter()
    split = ResidentSplit(StoreReader(args.data), "train", device)
    load_s = time.perf_counter() - start
    print(f"train split: {split.num_rows:,} rows loaded onto {device} in {load_s:.1f} s; {args.steps} timed steps "
          f"after {args.warmup} warm-up steps{'; --amp' if args.amp else ''}\n")
    print(markdown_table(COLUMNS, []).rstrip(), flush=True)  # the header; each row follows when measured
    results = []
    for name, batch_size, mode in itertools.product(args.models, args.batch_sizes, args.modes):
        if mode == "cudagraphs" and device.type != "cuda":
            r = {"model": name, "batch": batch_size, "mode": mode, "error": "skipped: CUDA graphs need CUDA"}
        else:
            try:
                r = measure(name, batch_size, mode, split, args)
            except Exception as e:  # reported in its row; the other rows still run
                r = {"model": name, "batch": batch_size, "mode": mode,
                     "error": f"failed: {type(e).__name__}: {e}".splitlines()[0][:200]}
            finally:
                torch._dynamo.reset()  # each row compiles afresh and frees the last one's graphs
        results.append(r)
        print(markdown_table(COLUMNS, [row(r)]).splitlines()[-1], flush=True)
    info = machine_info()
    print(f"\n{machine_line(info)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python scripts/bench_gpu.py " + " ".join(argv)
        as_json, as_md = (args.out / f for f in OUT_FILES)
        as_json.write_text(json.dumps({"command": command, "machine": info, "train_rows": split.num_rows,
                                       "load_s": load_s, "steps": args.steps, "warmup": args.warmup, "amp": args.amp,
                                       "results": results}, indent=2) + "\n")
        as_md.write_text(f"Command: `{command}`\n\n{machine_line(info)}\n\n"
                         + markdown_table(COLUMNS, [row(r) for r in results]) + "\n")
    return 1 if any(r.get("error", "").startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
