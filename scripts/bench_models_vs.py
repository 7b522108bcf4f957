"""Training samples/s per model against the same model in DeepCTR-Torch at equal sizes (issue #12).

    OMP_NUM_THREADS=1 python scripts/bench_models_vs.py [--models M1,M2|all] [--batch 4096] [--steps 2]
                                                        [--warmup 1] [--repeat 1] [--json PATH] [--quick]
                                                        [--baseline-venv /tmp/deepctr-venv] [--overwrite]
    OMP_NUM_THREADS=1 python scripts/bench_models_vs.py --profile --models M1,M2   (where ours spends a step)

What is timed: forward + BCE + backward + Adam (lr 1e-3) steps on one thread (``torch.set_num_threads(1)`` on both
sides), ``--warmup`` untimed steps then ``--steps`` timed ones, on ONE random batch that both sides read from the
same .npz: ``--batch`` rows of 39 sparse fields (no dense features: several DeepCTR-Torch models take none, so
neither side gets any) with vocabularies of 2,239 ids each, 87,321 table rows in all, the size of the benchmark
store's table (87,330 over 39 fields), ids uniform, labels Bernoulli(0.25). CCPM alone uses the batch's first 256
rows (CCPM_ROWS): at its BARS sizes it runs ~30 samples/s on one thread on either side. Every measurement is a fresh
process: ours through the registry as scripts/benchmark.py's speed section does (``models.build_model`` then
benchmark.time_train_steps, i.e. train.py's ``train_step`` and optimizer: Adam, fused on the CPU); theirs is
scripts/bench_models_vs_deepctr.py in the DeepCTR-Torch 0.3.0 venv (bench_train.py's ``baseline_venv`` creates it on
demand), which times the body of DeepCTR-Torch's own ``fit`` loop and ``compile("adam")``'s optimizer (torch's
default Adam: a for-loop over parameters on CPU). Per model and repeat: ours, then theirs, so load on the shared
machine falls on both alike; the table gives medians over ``--repeat`` and ours / theirs. A model is flagged when
ours runs at under half the baseline's samples/s (the issue's "more than 2x slower per sample").

Equal sizes (``PAIRS``, one entry per model both libraries have): embedding 16, the same hidden units, layers,
heads, cross layers, CIN sizes and so on; dropout 0 and batch norm off on both sides; no L2 term (DeepCTR-Torch's
every ``l2_reg_*`` argument is set to 0 by the child, from the constructor's signature). Our sizes are the
repo's defaults (the BARS sizes) where DeepCTR-Torch can take them. Differences that no option removes:

* DeepCTR-Torch adds a first-order (linear) term to every model but PNN and MLR; ours CCPM, DCN, DCNv2, ONN
  and AFN have none (39 lookups of width 1 per row: little work).
* CCPM: DeepCTR-Torch requires a DNN after the convolutions (``dnn_hidden_units`` cannot be empty); it gets
  one ReLU unit, ours has the output layer alone (both put tanh after each convolution).
* AutoInt: DeepCTR-Torch's attention width is the embedding width (16, split over the heads), so ours runs at
  ``attention_dim=16`` here, not its BARS 64; ours gets ``use_wide`` for DeepCTR-Torch's linear term.
* DCNv2 is DeepCTR-Torch's DCNMix: the low-rank mixture (rank 32, 4 experts), not ours default full rank.
* AFN: the logarithmic layer batch-normalizes on both sides, always (two BatchNorm1d: no option turns them off in
  either library); ``batch_norm=False`` switches off our MLP's, and DeepCTR-Torch's AFN MLP has none.
* DIFM: DeepCTR-Torch's attention always scales; ours ``use_scale=True`` (its default) matches.
* Our shared embedding always holds the first-order column (1 of each row's 17 values), also in models that
  do not read it (PNN, DCN, DCNv2, ONN, AFN, CCPM): Adam updates it, zero-gradient, every step.
* Adam: ours is train.py's (fused kernels on the CPU; foreach before 2026-12-01), DeepCTR-Torch's torch's
  default (a loop on CPU).
* FNN is not in DeepCTR-Torch 0.3.0 (the Keras DeepCTR has it).

FuxiCTR: no model of this list runs from the package registry (checked 2026-12-01 on fuxictr 2.0.0, 2.1.3,
2.2.3, 2.3.0, 2.3.7 and 2.3.10, the newest, installable next to torch 2.13.0). 2.0.0's wheel has
``fuxictr.pytorch.models.DNN`` only; 2.1.x-2.3.7 have the base classes (``BaseModel``, ``MultiTaskModel``)
and the layers, no model; 2.3.10 adds ``model_zoo/LongCTR`` whose DCNv2 and FinalMLP read a behaviour
sequence (target item + masked-average history) and cannot run on plain Criteo fields. FuxiCTR's models live
in its GitHub repo's model_zoo/, which the registry does not carry. The FuxiCTR column says so.

``--quick``: batch 256, 1 warm-up + 1 timed step, DeepFM and NFM, one repeat (a smoke test). Prints Markdown;
``--json PATH`` writes every number (refused if PATH exists, unless ``--overwrite``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from benchmark import (in_fresh_process, machine_info, machine_line, markdown_table, settle_args,  # noqa: E402
                       time_train_steps)
from bench_train import baseline_venv  # noqa: E402
from dataset.schema import Schema  # noqa: E402

EMBED_DIM, FIELDS, VOCAB, SEED = 16, 39, 2239, 0
FLAG_BELOW = 0.5  # ours / faster baseline under this: "more than 2x slower per sample"
QUICK_MODELS = ("DeepFM", "NFM")
CHILD = ROOT / "scripts" / "bench_models_vs_deepctr.py"
FUXICTR = ("no model in the registry's wheels (2.0.0: DNN only; 2.1-2.3.7: base classes; "
           "2.3.10: LongCTR variants that need behaviour sequences)")
MLP5 = (1000,) * 5
CCPM_ROWS = 256  # CCPM at its BARS sizes runs ~30 samples/s on one thread on both sides: 4096-row steps take minutes


@dataclasses.dataclass(frozen=True)
class Pair:
    """One model in both libraries at equal sizes: our registry hyperparameters, DeepCTR-Torch's class name and
    constructor arguments, and which of ours equals which of theirs (``same``: (our key, their key))."""

    ours: dict[str, Any]
    deepctr: str
    theirs: dict[str, Any]
    same: tuple[tuple[str, str], ...]
    rows: int | None = None  # this model's batch: the first ``rows`` rows of the shared one (None: all of it)


def _pair(deepctr: str, ours: dict[str, Any], theirs: dict[str, Any], rows: int | None = None,
          **renamed: str) -> Pair:
    """A Pair whose shared sizes are every key of ``ours`` that ``theirs`` has under the same name or under
    ``renamed[our key]``."""
    same = tuple((k, renamed.get(k, k)) for k in ours if renamed.get(k, k) in theirs)
    return Pair(ours, deepctr, theirs, same, rows)


# Dropout 0 / batch norm off on our side (the keys our model takes); the DeepCTR-Torch child switches its own off.
PAIRS: dict[str, Pair] = {
    "CCPM": _pair("CCPM", {"channels": (64, 128, 256), "kernel_heights": (7, 5, 3)},
                  {"conv_filters": (64, 128, 256), "conv_kernel_width": (7, 5, 3), "dnn_hidden_units": (1,)},
                  rows=CCPM_ROWS, channels="conv_filters", kernel_heights="conv_kernel_width"),
    "PNN": _pair("PNN", {"product_type": "inner", "hidden_units": (1000, 1000), "dropout": 0.0, "batch_norm": False},
                 {"use_inner": True, "use_outter": False, "dnn_hidden_units": (1000, 1000)},
                 hidden_units="dnn_hidden_units"),
    "WDL": _pair("WDL", {"hidden_units": MLP5, "dropout": 0.0, "batch_norm": False}, {"dnn_hidden_units": MLP5},
                 hidden_units="dnn_hidden_units"),
    "DeepFM": _pair("DeepFM", {"hidden_units": (400, 400, 400), "dropout": 0.0, "batch_norm": False},
                    {"dnn_hidden_units": (400, 400, 400)}, hidden_units="dnn_hidden_units"),
    "MLR": _pair("MLR", {"region_num": 4}, {"region_num": 4}),
    "NFM": _pair("NFM", {"hidden_units": (1000, 1000, 1000), "dropout": 0.0, "batch_norm": False,
                         "bi_batch_norm": False}, {"dnn_hidden_units": (1000, 1000, 1000)},
                 hidden_units="dnn_hidden_units"),
    "AFM": _pair("AFM", {"attention_dim": 16, "dropout": 0.0}, {"attention_factor": 16},
                 attention_dim="attention_factor"),
    "DCN": _pair("DCN", {"num_cross_layers": 4, "hidden_units": MLP5, "dropout": 0.0, "batch_norm": False},
                 {"cross_num": 4, "cross_parameterization": "vector", "dnn_hidden_units": MLP5},
                 num_cross_layers="cross_num", hidden_units="dnn_hidden_units"),
    "DCNv2": _pair("DCNMix", {"num_cross_layers": 3, "structure": "parallel", "low_rank": 32, "num_experts": 4,
                              "hidden_units": MLP5, "dropout": 0.0, "batch_norm": False},
                   {"cross_num": 3, "low_rank": 32, "num_experts": 4, "dnn_hidden_units": MLP5},
                   num_cross_layers="cross_num", hidden_units="dnn_hidden_units"),
    "xDeepFM": _pair("xDeepFM", {"cin_layer_sizes": (64, 64, 64), "cin_split_half": False, "hidden_units": MLP5,
                                 "dropout": 0.0, "batch_norm": False},
                     {"cin_layer_size": (64, 64, 64), "cin_split_half": False, "cin_activation": "linear",
                      "dnn_hidden_units": MLP5},
                     cin_layer_sizes="cin_layer_size", hidden_units="dnn_hidden_units"),
    "AutoInt": _pair("AutoInt", {"attention_layers": 5, "num_heads": 1, "attention_dim": EMBED_DIM,
                                 "use_residual": True, "use_scale": False, "layer_norm": False, "use_wide": True},
                     {"att_layer_num": 5, "att_head_num": 1, "att_res": True, "dnn_hidden_units": ()},
                     attention_layers="att_layer_num", num_heads="att_head_num", use_residual="att_res"),
    "ONN": _pair("ONN", {"hidden_units": (1000, 1000, 1000), "dropout": 0.0, "batch_norm": False},
                 {"dnn_hidden_units": (1000, 1000, 1000)}, hidden_units="dnn_hidden_units"),
    "FiBiNET": _pair("FiBiNET", {"bilinear_type": "field_interaction", "reduction_ratio": 3,
                                 "hidden_units": (2000, 2000, 2000), "dropout": 0.0, "batch_norm": False},
                     {"bilinear_type": "interaction", "reduction_ratio": 3, "dnn_hidden_units": (2000, 2000, 2000)},
                     hidden_units="dnn_hidden_units"),
    "IFM": _pair("IFM", {"hidden_units": (256, 128), "dropout": 0.0, "batch_norm": False},
                 {"dnn_hidden_units": (256, 128)}, hidden_units="dnn_hidden_units"),
    "DIFM": _pair("DIFM", {"num_heads": 4, "use_residual": True, "use_scale": True, "hidden_units": (256, 128),
                           "dropout": 0.0, "batch_norm": False},
                  {"att_head_num": 4, "att_res": True, "dnn_hidden_units": (256, 128)},
                  num_heads="att_head_num", use_residual="att_res", hidden_units="dnn_hidden_units"),
    "AFN": _pair("AFN", {"logarithmic_neurons": 1200, "hidden_units": (1000, 1000, 1000, 1000), "dropout": 0.0,
                         "batch_norm": False},
                 {"ltl_hidden_size": 1200, "afn_dnn_hidden_units": (1000, 1000, 1000, 1000)},
                 logarithmic_neurons="ltl_hidden_size", hidden_units="afn_dnn_hidden_units"),
}
# Names whose meaning differs between the libraries although the sizes match (bilinear_type's spelling).
SPELLED_APART = {("FiBiNET", "bilinear_type"): {"field_interaction": "interaction"}}


def size_mismatches(pair: Pair) -> list[str]:
    """``"our_key=... vs their_key=..."`` for every shared size of ``pair`` that differs (empty: equal sizes).
    Tuples and lists compare alike (JSON carries tuples as lists); SPELLED_APART maps our spellings."""
    out = []
    for mine, theirs in pair.same:
        a, b = pair.ours[mine], pair.theirs[theirs]
        a = SPELLED_APART.get((pair.deepctr, mine), {}).get(a, a)
        if (list(a) if isinstance(a, (tuple, list)) else a) != (list(b) if isinstance(b, (tuple, list)) else b):
            out.append(f"{mine}={a!r} vs {theirs}={b!r}")
    return out


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="all, or comma-separated names from PAIRS (default all)")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default 4096; --quick 256)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 2; --quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per measurement")
    p.add_argument("--repeat", type=int, default=1, help="rounds of (ours, theirs) per model; medians reported")
    p.add_argument("--quick", action="store_true", help="batch 256, 1 + 1 steps, DeepFM and NFM")
    p.add_argument("--baseline-venv", type=Path, default=Path("/tmp/deepctr-venv"),
                   help="venv with deepctr-torch 0.3.0, created when absent (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: profile one step of ours per model (top ops by self CPU time)")
    args = p.parse_args(argv)
    defaults = {"batch": 256, "steps": 1, "models": ",".join(QUICK_MODELS)} if args.quick else \
        {"batch": 4096, "steps": 2, "models": "all"}
    if args.json is not None and args.json.exists() and not args.overwrite:
        p.error(f"--json {args.json} exists; pass --overwrite to replace it or name another file")
    return settle_args(p, args, defaults, ("batch", "steps", "repeat"), select)


def select(spec: str) -> list[str]:
    """``"all"`` -> every model of PAIRS; ``"deepfm,DCN"`` -> ["DeepFM", "DCN"] (checked against PAIRS)."""
    if spec.strip().lower() == "all":
        return list(PAIRS)
    by_lower = {n.lower(): n for n in PAIRS}
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown or not names:
        raise ValueError(f"{', '.join(unknown) or 'no model named'}: pass all or names both libraries have: "
                         f"{', '.join(PAIRS)}")
    return [by_lower[n.lower()] for n in names]


# ------------------------------------------------------------------------------------------------ contenders


def write_batch(path: Path, batch: int) -> None:
    """The one batch every contender reads: ``sparse`` int64 [B, FIELDS] uniform in [0, VOCAB), ``label``
    float32 [B] (25% ones), ``vocab_sizes`` int64 [FIELDS]."""
    rng = np.random.default_rng(SEED)
    np.savez(path, sparse=rng.integers(0, VOCAB, (batch, FIELDS)), label=(rng.random(batch) < 0.25).astype(np.float32),
             vocab_sizes=np.full(FIELDS, VOCAB))


def build_ours(npz: str, name: str, hparams: dict[str, Any],
               rows: int | None) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Our model ``name`` through the registry at ``hparams`` and the first ``rows`` rows (None: all) of the
    batch in ``npz`` as a train.py batch (``sparse`` [B, F], ``dense`` [B, 0], ``label`` [B, 1]); one thread."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    with np.load(npz) as data:
        sparse, label, vocab = data["sparse"][:rows], data["label"][:rows], [int(v) for v in data["vocab_sizes"]]
    schema = Schema(tuple(f"C{i + 1}" for i in range(len(vocab))), tuple(vocab))
    batch = {"sparse": torch.from_numpy(sparse), "dense": torch.zeros(len(label), 0),
             "label": torch.from_numpy(label)[:, None]}
    return models.build_model(name, schema, embed_dim=EMBED_DIM, **hparams), batch


def ours(npz: str, name: str, hparams: dict[str, Any], rows: int | None, warmup: int,
         steps: int) -> dict[str, Any]:
    """[runs in a fresh process] :func:`build_ours`, timed with benchmark.time_train_steps -> samples/s, ms per
    step, parameter count."""
    model, batch = build_ours(npz, name, hparams, rows)
    seconds = time_train_steps(model, [batch], torch.device("cpu"), warmup, steps)
    label = batch["label"]
    return {"rows": len(label), "samples_per_s": steps * len(label) / seconds,
            "ms_per_step": 1000 * seconds / steps,
            "params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads()}


def deepctr(venv: Path, npz: Path, pair: Pair, warmup: int, steps: int) -> dict[str, Any]:
    """scripts/bench_models_vs_deepctr.py in the DeepCTR-Torch venv as a fresh subprocess -> its JSON line."""
    argv = [str(venv / "bin" / "python"), str(CHILD), str(npz), pair.deepctr, json.dumps(pair.theirs),
            "--embed-dim", str(EMBED_DIM), "--warmup", str(warmup), "--steps", str(steps)]
    if pair.rows is not None:
        argv += ["--rows", str(pair.rows)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{CHILD.name} {pair.deepctr} exited with {done.returncode}: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_ours(npz: str, name: str, hparams: dict[str, Any], rows: int | None, top: int) -> list[list[str]]:
    """[runs in a fresh process] torch.profiler over the third training step of ours (benchmark.time_train_steps;
    a global optimizer hook marks the profiler's steps) -> the ``top`` ops by self CPU time as rows (op, self
    ms, % of the step's self time, calls)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule
    model, batch = build_ours(npz, name, hparams, rows)
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=1)) as prof:
        hook = register_optimizer_step_post_hook(lambda *_: prof.step())
        try:
            time_train_steps(model, [batch], torch.device("cpu"), 2, 1)
        finally:
            hook.remove()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    outside = "time outside the ops (ProfilerStep's self time: Python, dispatch)"
    return [[outside if e.key.startswith("ProfilerStep") else e.key, f"{e.self_cpu_time_total / 1000:,.0f}",
             f"{100 * e.self_cpu_time_total / total:.1f}%",
             str(e.count)] for e in events[:top]]


def attempt(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)``, or ``{"error": one line}`` if it fails (the other models still run)."""
    try:
        return fn(*args)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    npz = work / "batch.npz"
    write_batch(npz, args.batch)
    venv_error = attempt(baseline_venv, args.baseline_venv) or {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in args.models:
        pair = PAIRS[name]
        runs[name] = {"ours": [], "deepctr": []}
        for r in range(args.repeat):
            runs[name]["ours"].append(attempt(in_fresh_process, ours, str(npz), name, pair.ours, pair.rows,
                                              args.warmup, args.steps))
            theirs = venv_error or attempt(deepctr, args.baseline_venv, npz, pair, args.warmup, args.steps)
            runs[name]["deepctr"].append(theirs)
            print(f"bench_models_vs: {name}, repeat {r + 1}/{args.repeat}: ours "
                  f"{runs[name]['ours'][-1].get('samples_per_s', 'failed')}, DeepCTR-Torch "
                  f"{theirs.get('samples_per_s', theirs.get('error'))}", file=sys.stderr)
    return {"batch": args.batch, "warmup": args.warmup, "steps": args.steps, "repeat": args.repeat,
            "fields": FIELDS, "vocab_per_field": VOCAB, "embed_dim": EMBED_DIM, "fuxictr": FUXICTR,
            "pairs": {n: dataclasses.asdict(PAIRS[n]) for n in args.models}, "runs": runs,
            "summary": {n: summarize(r) for n, r in runs.items()}}


# ------------------------------------------------------------------------------------------------ summary


def median_rate(runs: list[dict[str, Any]]) -> float | None:
    rates = [r["samples_per_s"] for r in runs if "error" not in r]
    return statistics.median(rates) if rates else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of each side, ours / the faster baseline, and the flag (ours under FLAG_BELOW of it)."""
    mine, theirs = median_rate(runs["ours"]), median_rate(runs["deepctr"])
    ratio = mine / theirs if mine and theirs else None
    errors = [r["error"] for side in runs.values() for r in side if "error" in r]
    params = {side: next((r["params"] for r in rs if "params" in r), None) for side, rs in runs.items()}
    rows = {r["rows"] for side in runs.values() for r in side if "rows" in r}
    return {"rows": min(rows) if rows else None, "ours": mine, "deepctr": theirs, "ratio": ratio,
            "flagged": ratio is not None and ratio < FLAG_BELOW, "params": params, "errors": errors}


def render(results: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str = ",.0f") -> str:
        return "failed" if v is None else format(v, fmt)
    rows = []
    for name, s in results["summary"].items():
        ratio = "" if s["ratio"] is None else f"{s['ratio']:.2f}x" + (" (flagged)" if s["flagged"] else "")
        params = " / ".join(num(s["params"][side], ",") if s["params"][side] else "?" for side in ("ours", "deepctr"))
        batch = num(s["rows"], ",") if s["rows"] else ""
        rows.append([name, batch, num(s["ours"]), num(s["deepctr"]), "n/a", ratio, params,
                     "; ".join(s["errors"][:1])])
    flagged = [n for n, s in results["summary"].items() if s["flagged"]]
    return "\n\n".join([
        f"## Per model against DeepCTR-Torch 0.3.0 (batch {results['batch']}, {results['warmup']} warm-up + "
        f"{results['steps']} timed steps, median of {results['repeat']})",
        machine_line(results["machine"]),
        f"Command: `{results['command']}`. One thread per side, {results['fields']} sparse fields of "
        f"{results['vocab_per_field']:,} ids, embedding {results['embed_dim']}, dropout 0, no batch norm, no L2. "
        f"FuxiCTR: {results['fuxictr']}.",
        markdown_table(["model", "batch", "ours samples/s", "DeepCTR-Torch samples/s", "FuxiCTR", "ours / faster",
                        "params ours / DeepCTR-Torch", "error"], rows, "lrrrrrrl"),
        f"Flagged (ours under {FLAG_BELOW}x of the faster baseline): {', '.join(flagged) or 'none'}.",
    ]) + "\n"


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` through a temp file in the same directory, then rename (atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(results, indent=2, default=list) + "\n")
    os.replace(tmp, path)


def profile_models(args: argparse.Namespace, top: int = 12) -> int:
    """``--profile``: print, per model, the ``top`` ops of one training step of ours at the table's sizes."""
    with tempfile.TemporaryDirectory(prefix="bench_models_vs_") as tmp:
        npz = Path(tmp) / "batch.npz"
        write_batch(npz, args.batch)
        for name in args.models:
            pair = PAIRS[name]
            rows = in_fresh_process(profile_ours, str(npz), name, pair.ours, pair.rows, top)
            print(f"### {name}: one training step of ours, batch {min(pair.rows or args.batch, args.batch)}\n\n"
                  + markdown_table(["op", "self CPU ms", "share of the step", "calls"], rows) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.profile:
        return profile_models(args)
    with tempfile.TemporaryDirectory(prefix="bench_models_vs_") as tmp:
        results = run(args, Path(tmp))
    results["command"] = "OMP_NUM_THREADS=1 python scripts/bench_models_vs.py " + shlex.join(argv)
    results["machine"] = machine_info()
    print(render(results))
    if args.json is not None:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
