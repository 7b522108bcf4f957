"""Train a CTR model on an LMDB store: CPU, one GPU, or DDP over many (one process per device).

    python train.py --model DeepFM                              # CPU, one process
    python train.py --model DeepFM --gpu_ids 0                  # one GPU
    python train.py --model DeepFM --gpu_ids 0,1,2,3            # DDP: one process per GPU (NCCL)
    torchrun --nproc_per_node 4 train.py --model DeepFM         # the same, launched by torchrun
    python train.py --model DeepFM --cpu_procs 2                # DDP over 2 CPU processes (gloo)
    python train.py --resume checkpoints/DeepFM/<run>           # continue a run exactly where it stopped
    python train.py --eval_only checkpoints/DeepFM/<run>        # score its best.pt on the test split
    python train.py --model DCN --help                          # also lists DCN's hyperparameter flags

Data flows store -> loaders -> model -> loss -> optimizer. --batch_size is per process (the global batch
is batch_size x processes). Every evaluation (each epoch, and every --eval_every steps) updates best.pt
by valid AUC (the mean over tasks for multi-task models), steps ReduceLROnPlateau and counts toward
--patience. At the end best.pt is scored on the test split. The launching process creates the run dir
(checkpoints/<model>/<run name> unless --model_save_dir; a new directory for every run) and rank 0
writes into it: config.json, TensorBoard events, last.pt, best.pt (both with a sha256 trailer),
metrics.json. A flag given with --resume overrides the saved one, except the model, its
hyperparameters, --batch_size and --seed, which cannot change. Epochs are numbered from 1 wherever a
person reads them (progress bar, log lines, metrics.json's best_epoch).

A training step never makes the host wait for the device: the loss stays on the device until a boundary
(every --log_every, --eval_every and --ckpt_every steps, the end of an epoch or of the run). A NaN/inf
loss stops the run at the next boundary, on every rank, naming its step; the weights of the steps in
between are never saved (last.pt and best.pt stay those written before that step).
"""
from __future__ import annotations

import argparse
import collections.abc
import errno
import gc
import hashlib
import inspect
import io
import json
import logging
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import struct
import sys
import time
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import models
from dataset.loader import CTRLoader, make_loader
from dataset.predict_encode import recorded_vocabulary_checksum
from dataset.raw import InputError, sha256_file
from dataset.resident import DATA_PATHS, ResidentLoader, choose_data_path, make_resident_loader
from dataset.schema import POOLINGS, Schema
from dataset.store import SPLITS, StoreCorruptError, StoreReader
from layers.embedding import FeatureEmbedding
from models.presets import get_preset, to_argv

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch, torch.Tensor], torch.Tensor]

DEFAULT_MODEL = "DeepFM"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
              "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
# Fused kernels (one pass over each parameter, its gradient and its state): on CUDA Adam, AdamW, SGD (Adagrad's
# fused kernel is CPU-only: torch 2.11 on an H200 raised at construction); on the CPU those and Adagrad. RMSprop
# has none. Measured on one thread, one Adam step over DeepFM's parameters on bench_train.py's store (1.5M
# embedding values): 3.8-4.9 ms fused, 11.5-12.7 ms foreach (README, "Training throughput", for the whole step)
FUSED = {"cuda": ("adam", "adamw", "sgd"), "cpu": ("adam", "adamw", "adagrad", "sgd")}
FIXED_ON_RESUME = ("batch_size", "seed", "seq_pooling", "drop_fields", "labels", "monitor")  # besides the model and its
# hyperparameters: they change what the model computes or what best.pt means
MONITORS = {"auc": "max", "gauc": "max", "logloss": "min", "rmse": "min", "mae": "min"}  # metric -> better when
FROM_COMMAND_LINE = ("resume", "eval_only")  # never taken from a saved config
HARDWARE = ("gpu_ids", "cpu_procs", "num_workers", "amp")  # --eval_only takes these from the command line too
EVAL_BATCH_CAP = {"cpu": 4096, "cuda": 65536}  # the largest default --eval_batch_size per device type: on a CPU,
# larger batches push the activations out of the caches (DeepFM's forward on one thread: 97k rows/s at 4096 rows,
# 68k at 16384)
EMBED_L2_MODES = ("batch", "table")  # --embed_l2_mode: see compute_loss
SPARSE_OPTIMIZERS = ("adagrad", "sgd")  # the --optimizer choices that take --sparse_embed's sparse gradients


class UsageError(Exception):
    """Bad flags or inputs: reported as one line naming the fix, exit code 2."""


class RunFailed(Exception):
    """The run cannot go on (a full disk, a corrupt checkpoint, a lost rank): one line, exit code 1."""


class NonFiniteLossError(RunFailed):
    """The loss or the weights became NaN/inf: reported as one line, exit code 1."""


class CorruptCheckpointError(RunFailed):
    """A checkpoint whose bytes differ from those train.py wrote (its checksum does not match)."""


# ----------------------------------------------------------------------------------------------------
# Command line: two stages. Stage 1 finds the model (--model, or the one saved in --resume/--eval_only);
# stage 2 adds one flag per argument of that model's constructor.


def base_parser(add_help: bool) -> argparse.ArgumentParser:
    """The training flags (everything except the model's own hyperparameters)."""
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, add_help=add_help, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name ({', '.join(models.model_names())})")
    run = p.add_argument_group("data and run")
    run.add_argument("--data", default="data/criteo", help="store directory written by preprocess.py")
    run.add_argument("--model_save_dir", default=None, help="run dir (default: checkpoints/<model>/<run name>)")
    run.add_argument("--run_name", default=None, help="run name (default: a timestamp)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt")
    run.add_argument("--eval_only", default=None, metavar="CKPT_OR_RUN_DIR",
                     help="score a checkpoint (a run dir means its best.pt) on the test split and exit")
    run.add_argument("--seed", type=int, default=2018)
    run.add_argument("--preset", default=None, metavar="NAME",
                     help="start from a BARS preset's flags (models/presets.py), e.g. DeepFM_criteo_x4_001; "
                          "flags given on the command line win")
    run.add_argument("--seq_pooling", choices=POOLINGS, default="mean",
                     help="how the shared embedding pools each sequence field (histories, multi-value fields) into "
                          "one field for models that take fields (attention models read the raw sequences)")
    run.add_argument("--drop_fields", nargs="+", default=(), metavar="FIELD",
                     help="leave these sparse or sequence fields of the store out of the model (an ablation)")
    run.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                     help="the store's labels the model learns, in this order (default: all of them; a "
                          "single-task model predicts the first)")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=10)
    opt.add_argument("--batch_size", type=int, default=4096, help="rows per step and process")
    opt.add_argument("--eval_batch_size", type=int, default=None,
                     help=f"rows per evaluation batch and process (default: 4 x --batch_size, at most "
                          f"{EVAL_BATCH_CAP['cuda']} on a GPU and {EVAL_BATCH_CAP['cpu']} on a CPU unless "
                          f"--batch_size is larger): evaluation keeps no activations for a backward pass")
    opt.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    opt.add_argument("--lr", type=float, default=1e-3)
    opt.add_argument("--weight_decay", type=float, default=0.0,
                     help="on weight matrices only (not biases, norm parameters or embedding tables)")
    opt.add_argument("--dense_init", choices=sorted(models.registry.DENSE_INITS), default="xavier_normal",
                     help="init of Linear/Conv1d/expert weights (embeddings: the model's --embed_init_std)")
    opt.add_argument("--embed_l2", type=float, default=0.0,
                     help="L2 weight of the embedding tables (see --embed_l2_mode)")
    opt.add_argument("--embed_l2_mode", choices=EMBED_L2_MODES, default="batch",
                     help="batch: adds embed_l2 * ||rows the batch touches||^2 / B to the loss; table: adds "
                          "embed_l2 / 2 * ||every embedding table||^2, FuxiCTR's embedding_regularizer (what BARS "
                          "ran; costs a pass over the whole table per step)")
    opt.add_argument("--pretrained_embed", nargs="+", default=[], metavar="FIELD=PATH",
                     help="a new run starts these fields' rows from word2vec text files ('raw_value v_1 .. v_D' "
                          "per line, optional 'N D' first line); values not in the file keep the normal init "
                          "(--resume never re-applies them: the checkpoint has the weights)")
    opt.add_argument("--freeze_embed", nargs="+", default=[], metavar="FIELD",
                     help="these fields' embedding rows never change; a field sharing its vocabulary with "
                          "another field freezes both (the rows are the same); their first-order weights still train")
    opt.add_argument("--sparse_embed", action="store_true",
                     help="sparse gradients for the shared embedding tables: each step updates only the rows its "
                          "batch touches instead of every row (faster on large tables, README 'Sparse embedding "
                          "gradients'); needs --optimizer adagrad (row-wise state, as DLRM) or sgd")
    opt.add_argument("--clip_grad_norm", type=float, default=0.0, metavar="MAX",
                     help="before every optimizer step, scale the gradients of all parameters so that their "
                          "total L2 norm is at most MAX (0: off; FuxiCTR and BARS runs clip at 10)")
    opt.add_argument("--loss", choices=["bce"], default="bce",
                     help="the loss of binary tasks (BCE); regression tasks (a store's task types) use squared error")
    opt.add_argument("--monitor", choices=["auto", *MONITORS], default="auto",
                     help="the valid metric that picks best.pt and drives early stopping and the LR schedule "
                          "(auto: auc if the model predicts a binary task, else rmse); gauc needs a store "
                          "with a user field")
    opt.add_argument("--task_weights", type=float, nargs="+", default=None,
                     help="one loss weight per task of the model (default: all 1)")
    opt.add_argument("--patience", type=int, default=2, help="stop after this many evaluations without a better "
                                                              "--monitor value")
    opt.add_argument("--lr_decay_factor", type=float, default=0.1, help="ReduceLROnPlateau factor on --monitor")
    opt.add_argument("--lr_patience", type=int, default=0, help="evaluations without improvement before the LR drops")
    opt.add_argument("--min_lr", type=float, default=1e-6)
    opt.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA and CPU)")
    opt.add_argument("--max_steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    hw = p.add_argument_group("hardware")
    hw.add_argument("--gpu_ids", default="", help="comma-separated CUDA ids, e.g. 0,1,2,3 (empty: CPU)")
    hw.add_argument("--cpu_procs", type=int, default=1, help="DDP over this many CPU processes (gloo)")
    hw.add_argument("--num_workers", type=int, default=2, help="loader worker processes per training process")
    hw.add_argument("--data_path", choices=DATA_PATHS, default="auto",
                    help="resident: every split loaded once onto the device, batches gathered there; chunks: "
                         "streamed from the store by --num_workers workers; auto: resident when the splits fit "
                         "in half the device's free memory (fixed for a run: --resume keeps it)")
    hw.add_argument("--compile", action="store_true",
                    help="torch.compile the model (default mode; dynamic batch size on CPU): seconds to minutes "
                         "of compiling first, then faster steps; needs a C++ compiler on CPU, Triton on CUDA")
    log = p.add_argument_group("logging and checkpoints")
    log.add_argument("--log_every", type=int, default=100, help="steps between train/* TensorBoard points")
    log.add_argument("--eval_every", type=int, default=0, help="also evaluate every N steps (0: per epoch only)")
    log.add_argument("--ckpt_every", type=int, default=0, help="write last.pt every N steps (0: off)")
    log.add_argument("--ckpt_minutes", type=float, default=10.0,
                     help="write last.pt once this many minutes have passed since the last one (checked every "
                          "--log_every, --eval_every and --ckpt_every steps)")
    return p


def _optional(base: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that also accepts ``none``."""
    def convert(text: str) -> Any:
        return None if text.lower() == "none" else base(text)
    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def flag_kwargs(hint: Any, default: Any) -> dict[str, Any]:
    """argparse keywords for one constructor argument: bool -> --x / --no-x, int/float/str -> that type,
    tuple[int, ...] / Sequence[int] / list[int] -> nargs="*" (no value: empty), X | None -> X or 'none', Literal -> choices."""
    if hint is None and isinstance(default, (tuple, list)):
        hint = tuple[type(default[0]) if default else str, ...]
    elif hint is None:
        hint = type(default)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = flag_kwargs(next(a for a in args if a is not type(None)), default)
        return {**inner, "type": _optional(inner.get("type", str))}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin in (tuple, list, collections.abc.Sequence):
        return {"nargs": "*", "type": args[0] if args else str}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"train.py cannot make a flag for a constructor argument of type {hint!r}")


def add_model_flags(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """One flag per hyperparameter of ``cls`` (``--embed_size`` is ``embed_dim``); returns their names."""
    group = parser.add_argument_group(f"{cls.__name__} hyperparameters (from its constructor)")
    try:
        hints = typing.get_type_hints(cls.__init__)
    except NameError:  # an annotation that cannot be resolved: fall back on the defaults' types
        hints = {}
    names = []
    for name, param in models.model_hparams(cls).items():
        flags = ["--embed_size", "--embed_dim"] if name == "embed_dim" else [f"--{name}"]
        required = param.default is inspect.Parameter.empty
        group.add_argument(*flags, dest=name, required=required, default=None if required else param.default,
                           help=None if required else f"default: {param.default}",
                           **flag_kwargs(hints.get(name), param.default))
        names.append(name)
    return names


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags that ``argv`` sets explicitly (argparse leaves preset attributes alone)."""
    unset = object()
    preset = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parsed = parser.parse_args(argv, namespace=preset)
    return {k for k, v in vars(parsed).items() if v is not unset}


def checkpoint_path(first: argparse.Namespace) -> Path | None:
    """The checkpoint whose saved config this command continues or scores, if any."""
    if first.resume and first.eval_only:
        raise UsageError("--resume and --eval_only exclude each other; pass one of them")
    if first.resume:
        return Path(first.resume) / "last.pt"
    if first.eval_only:
        path = Path(first.eval_only)
        return path / "best.pt" if path.is_dir() else path
    return None


def with_preset(argv: list[str]) -> list[str]:
    """``--preset NAME``: the preset's flags are put before ``argv``, so that a flag given in ``argv`` wins
    (argparse keeps the last value of a flag)."""
    given, _ = base_parser(add_help=False).parse_known_args(argv)
    if given.preset is None:
        return argv
    if given.resume or given.eval_only:
        raise UsageError("--preset starts a new run; drop it when passing --resume or --eval_only")
    try:
        preset = get_preset(given.preset)
    except ValueError as e:
        raise UsageError(f"--preset: {e}") from None
    model_given = any(a == "--model" or a.startswith("--model=") for a in argv)
    if model_given and given.model.lower() != preset.model.lower():
        raise UsageError(f"--preset {preset.name} is a {preset.model} configuration but --model is {given.model}; "
                         f"drop --model or pick a {given.model} preset")
    return [*to_argv(preset.flags), *argv]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """-> (training flags, model hyperparameters). With --resume or --eval_only the checkpoint's saved
    config fills every flag the command line does not give."""
    argv = with_preset(sys.argv[1:] if argv is None else list(argv))
    first, _ = base_parser(add_help=False).parse_known_args(argv)
    ckpt = checkpoint_path(first)
    try:
        saved = load_checkpoint(ckpt, mmap=True)["config"] if ckpt else None
    except CorruptCheckpointError as e:
        if first.resume:
            raise CorruptCheckpointError(f"{e}; it cannot be resumed: {best_status(Path(first.resume))}") from None
        raise
    try:
        cls = models.get_model_class(saved["model"] if saved else first.model)
    except ValueError as e:
        raise UsageError(f"--model: {e}") from None
    parser = base_parser(add_help=True)
    names = add_model_flags(parser, cls)
    args = parser.parse_args(argv)
    hparams = {k: _plain(getattr(args, k)) for k in names}
    for k in names:
        delattr(args, k)
    if saved:
        args, hparams = apply_saved(args, hparams, saved, given_flags(parser, argv))
    args.model = cls.__name__
    return args, hparams


def best_status(run_dir: Path) -> str:
    """Whether ``run_dir``'s best.pt can still be scored (said when its last.pt cannot be resumed)."""
    step = saved_steps(run_dir).get("best.pt", -1)
    if step is None:
        return "best.pt is corrupt too; start a new run"
    if step < 0:
        return "there is no best.pt; start a new run"
    return f"{run_dir / 'best.pt'} is intact (step {step}): score it with --eval_only {run_dir}, or start a new run"


def _plain(value: Any) -> Any:
    """Lists (from nargs or JSON) -> tuples, so configs compare equal however they were read."""
    return tuple(value) if isinstance(value, list) else value


def apply_saved(args: argparse.Namespace, hparams: dict[str, Any], saved: dict[str, Any],
                given: set[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Merge a checkpoint's config under the flags given on the command line; changing the model (or,
    on --resume, its hyperparameters, the batch size or the seed) is an error."""
    saved_hp = {k: _plain(v) for k, v in saved["model_hparams"].items()}
    fixed = {**saved_hp, **({k: saved["train"][k] for k in FIXED_ON_RESUME if k in saved["train"]}
                            if args.resume else {})}
    current = {**vars(args), **hparams}
    changed = [k for k in sorted(given & set(fixed)) if current[k] != fixed[k]]
    if "model" in given and args.model.lower() != saved["model"].lower():
        changed.insert(0, "model")
        fixed["model"] = saved["model"]
    if changed:
        what = ", ".join(f"--{k} {fixed[k]}" for k in changed)
        raise UsageError(f"the checkpoint was trained with {what}; drop those flags (start a new run to change them)")
    cli = {*given, *FROM_COMMAND_LINE, *(HARDWARE if args.eval_only else ())}
    merged = {k: (v if k in cli or k not in saved["train"] else saved["train"][k]) for k, v in vars(args).items()}
    merged["task_weights"] = _plain(merged["task_weights"])
    return argparse.Namespace(**merged), saved_hp


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile's default backend (Inductor) cannot compile for ``device`` on this machine, or None.
    Inductor generates C++ for CPU, built by the first working compiler of ``torch._inductor.config.cpp.cxx``
    ($CXX, else g++), and Triton kernels for CUDA."""
    try:
        if device.type == "cuda":
            from torch.utils._triton import has_triton
            return None if has_triton() else "Triton, which compiles its CUDA kernels, is not installed"
        from torch._inductor import config as inductor_config
        from torch._inductor.cpp_builder import get_cpp_compiler
        tried = [c for c in inductor_config.cpp.cxx if c]
    except ImportError as e:
        return f"this torch lacks part of it ({e})"
    try:
        get_cpp_compiler()
    except Exception:  # torch._inductor.exc.InvalidCxxCompiler
        return (f"it builds C++ for CPU, and no C++ compiler runs here (tried {', '.join(tried)}): install g++ "
                f"or point $CXX at one")
    return None


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """--compile: ``torch.compile(model)`` (it shares the model's parameters). On a CPU, with dynamic shapes from
    the start: the epoch's last, smaller batch then reuses the graph instead of compiling C++ again (a 1M-row
    DeepFM run: 50.4 -> 44-46 s, the same steady samples/s). On CUDA, torch's default, as measured on the H200."""
    return torch.compile(model, dynamic=True if device.type == "cpu" else None)


def check_compile(args: argparse.Namespace, devices: Sequence[torch.device]) -> None:
    """--compile where torch.compile cannot work: one line saying why, before anything starts."""
    problem = compile_problem(devices[0]) if args.compile else None
    if problem:
        raise UsageError(f"--compile: torch.compile cannot compile for {devices[0].type.upper()} here: {problem}; "
                         f"drop --compile to train eagerly")


def check_sparse_embed(flags: dict[str, Any], world: int, devices: Sequence[torch.device]) -> None:
    """--sparse_embed (``flags``: the run's resolved flags) on several GPUs: DDP would all-reduce the sparse
    table gradients over NCCL, which has no sparse all-reduce that DDP uses (pytorch/pytorch#22400); gloo
    (CPU processes) has one."""
    if flags.get("sparse_embed") and world > 1 and devices[0].type == "cuda":
        raise UsageError(f"--sparse_embed on {world} GPUs: NCCL has no sparse all-reduce for DDP; train on one GPU "
                         f"(--gpu_ids 0) or with CPU processes (--cpu_procs), or drop --sparse_embed")


def check_args(args: argparse.Namespace, hparams: dict[str, Any]) -> None:
    """Ranges of the numeric flags; a NaN or infinite float is refused everywhere, the model's too."""
    positive = ("epochs", "batch_size", "patience", "log_every", "cpu_procs")
    non_negative = ("num_workers", "eval_every", "ckpt_every", "max_steps", "lr_patience")
    for k in positive:
        if getattr(args, k) < 1:
            raise UsageError(f"--{k} must be >= 1, got {getattr(args, k)}")
    for k in non_negative:
        if getattr(args, k) < 0:
            raise UsageError(f"--{k} must be >= 0, got {getattr(args, k)}")
    eval_batch_size(args)  # checks --eval_batch_size
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    for k in ("weight_decay", "embed_l2", "clip_grad_norm", "min_lr", "ckpt_minutes"):
        if not (math.isfinite(getattr(args, k)) and getattr(args, k) >= 0):
            raise UsageError(f"--{k} must be a finite number >= 0, got {getattr(args, k)}")
    if args.sparse_embed and args.optimizer not in SPARSE_OPTIMIZERS:
        raise UsageError(f"--sparse_embed needs --optimizer {' or '.join(SPARSE_OPTIMIZERS)} (torch's "
                         f"{args.optimizer} takes no sparse gradients); drop --sparse_embed to train with it")
    if args.sparse_embed and args.embed_l2 and args.embed_l2_mode == "table":
        raise UsageError("--sparse_embed with --embed_l2_mode table: the whole-table penalty touches every row; "
                         "use --embed_l2_mode batch (the rows of the batch) or drop --sparse_embed")
    if not 0 < args.lr_decay_factor < 1:  # also refuses NaN
        raise UsageError(f"--lr_decay_factor must be in (0, 1), got {args.lr_decay_factor}")
    weights = args.task_weights or ()
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise UsageError(f"--task_weights must be finite numbers >= 0, got {' '.join(map(str, weights))}")
    for k, v in hparams.items():  # the model checks its own ranges; NaN passes most comparisons
        values = v if isinstance(v, tuple) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise UsageError(f"--{k} must be a finite number, got {v if isinstance(v, float) else values}")


# ----------------------------------------------------------------------------------------------------
# Processes and devices (the nanoGPT pattern): torchrun's env, else one spawned process per --gpu_ids
# entry, else CPU (one process, or --cpu_procs processes). NCCL on CUDA, gloo on CPU.


def parse_gpu_ids(text: str) -> list[int]:
    """``"0,1"`` -> [0, 1]; every id must name a CUDA device of this machine."""
    if not text.strip():
        return []
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--gpu_ids {text!r}: expected comma-separated GPU indices like 0,1,2,3 "
                         f"(or --gpu_ids '' for CPU)") from None
    count = torch.cuda.device_count()
    missing = [i for i in ids if not 0 <= i < count]
    if missing:
        have = f"ids 0..{count - 1}" if count else "no CUDA device"
        raise UsageError(f"--gpu_ids {text}: GPU {missing[0]} does not exist (this machine has {have}); "
                         f"pass existing ids, or --gpu_ids '' to train on CPU")
    if len(set(ids)) != len(ids):
        raise UsageError(f"--gpu_ids {text}: each GPU may appear once")
    return ids


def torchrun_env() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def plan_devices(args: argparse.Namespace) -> list[torch.device]:
    """The device of each process this machine starts (torchrun: of each local rank)."""
    gpus = parse_gpu_ids(args.gpu_ids)
    if gpus and args.cpu_procs > 1:
        raise UsageError("--gpu_ids and --cpu_procs exclude each other; pass one of them")
    if torchrun_env():
        local = int(os.environ["LOCAL_RANK"])
        if not torch.cuda.is_available():
            return [torch.device("cpu")] * (local + 1)
        return [torch.device("cuda", gpus[i] if gpus else i) for i in range(local + 1)]
    if gpus:
        return [torch.device("cuda", i) for i in gpus]
    return [torch.device("cpu")] * args.cpu_procs


@dataclass(frozen=True)
class Ctx:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def master(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process(rank: int, world_size: int, device: torch.device) -> Ctx:
    """Join the process group (MASTER_ADDR/PORT from the env, set by torchrun or by :func:`launch`)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if world_size > 1:  # DDP
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Ctx(rank, world_size, device)


def gather_rows(x: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    """Every rank's rows ``[n_r, ...]`` concatenated in rank order -> ``[sum_r n_r, ...]`` on every rank.
    Ranks may hold different ``n_r``: rows are padded to the largest, all-gathered, then trimmed."""
    if ctx.world_size == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    padded = x.new_zeros((int(max(sizes)), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)])


# ----------------------------------------------------------------------------------------------------
# Model, optimizer, loss, one step.


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: biases and norm parameters (1-D) and every embedding table
    (the shared :class:`FeatureEmbedding`, any ``nn.Embedding``) get none."""
    tables = {id(p) for m in model.modules() if isinstance(m, (FeatureEmbedding, nn.Embedding))
              for p in m.parameters()}
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in tables else plain).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def optimizer_impl(name: str, device: torch.device, sparse: bool = False) -> dict[str, bool]:
    """How --optimizer ``name`` updates the parameters on ``device``: ``fused=True`` (one kernel for the whole
    update) for the optimizers torch has a fused kernel for on that device type (:data:`FUSED`), else
    ``foreach=True`` (each operation over all parameters at once instead of a Python loop over them; torch
    updates sparse gradients, ``sparse``: --sparse_embed, one by one, and no fused kernel takes them). Both are
    the arithmetic of the loop, up to float rounding."""
    return {"fused": True} if name in FUSED.get(device.type, ()) and not sparse else {"foreach": True}


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """--optimizer over ``model``'s parameters (:func:`param_groups`), implemented for their device
    (:func:`optimizer_impl`)."""
    device, sparse = next(model.parameters()).device, getattr(args, "sparse_embed", False)
    if sparse:  # torch warns once that it skips its sparse invariant checks, which only hand-built tensors need
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    return OPTIMIZERS[args.optimizer](param_groups(model, args.weight_decay), lr=args.lr,
                                      **optimizer_impl(args.optimizer, device, sparse))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping ``optimizer``'s own implementation (foreach / fused):
    ``state`` may come from a run on another device (a CPU checkpoint resumes fused on CUDA, and back)."""
    impl = {k: optimizer.param_groups[0][k] for k in ("foreach", "fused") if k in optimizer.param_groups[0]}
    optimizer.load_state_dict({**state, "param_groups": [{**g, **impl} for g in state["param_groups"]]})


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Multiply the LR by --lr_decay_factor after --lr_patience + 1 evaluations without a better valid
    --monitor value (FuxiCTR's trainer decays by 0.1 on every non-improving evaluation: --lr_patience 0)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=MONITORS[args.monitor],
                                                      factor=args.lr_decay_factor,
                                                      patience=args.lr_patience, min_lr=args.min_lr)


def compute_loss(model: nn.Module, batch: Batch, logits: torch.Tensor, embed_l2: float,
                 embed_l2_mode: str = "batch") -> torch.Tensor:
    """The training loss of ``logits = model(batch)`` [B, T]: the model's :meth:`~models.base.CTRModel.loss`
    (per-task BCE or squared error weighted by --task_weights, unless the model's paper says otherwise),
    plus the embedding L2 term ``lambda = embed_l2``:

    * ``batch``: ``lambda * ||rows of the batch||^2 / B`` (:meth:`~layers.embedding.FeatureEmbedding.l2_penalty`);
    * ``table``: ``lambda / 2 * ||E||^2`` over every table (:meth:`~layers.embedding.FeatureEmbedding.l2_table_penalty`),
      FuxiCTR's embedding_regularizer, as in every BARS run.
    """
    loss = model.loss(batch, logits)
    if embed_l2 and embed_l2_mode == "table":
        loss = loss + embed_l2 * model.embedding.l2_table_penalty()
    elif embed_l2:
        loss = loss + embed_l2 * model.embedding.l2_penalty(batch)
    return loss


def make_loss_fn(model: nn.Module, args: argparse.Namespace) -> LossFn:
    """:func:`compute_loss` bound to the (unwrapped) model, with --task_weights set on it, and --embed_l2 /
    --embed_l2_mode (a config saved before --embed_l2_mode existed: batch)."""
    weights = args.task_weights or (1.0,) * model.num_tasks
    if len(weights) != model.num_tasks:
        raise UsageError(f"--task_weights has {len(weights)} values but {type(model).__name__} predicts "
                         f"{model.num_tasks} task(s) {list(model.tasks)}; pass one weight per task")
    model.set_task_weights(weights)
    return partial(compute_loss, model, embed_l2=args.embed_l2,
                   embed_l2_mode=getattr(args, "embed_l2_mode", "batch"))


@dataclass
class Inputs:
    """What the model reads of a store's batch: the columns kept by --drop_fields and --labels (block -> column
    indices on the device; empty: every column), and the user id column that gAUC groups rows by (None: no
    user field)."""

    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    user_column: int | None = None

    @classmethod
    def of(cls, schema: Schema, drop: Sequence[str], labels: Sequence[str] | None,
           device: torch.device) -> tuple["Inputs", Schema]:
        """-> (the inputs, the schema the model is built from)."""
        try:
            kept, columns = schema.select(drop, labels)
        except ValueError as e:
            raise UsageError(f"--{'labels' if str(e).startswith('labels') else 'drop_fields'}: {e}") from None
        user = schema.sparse_fields.index(schema.user_field) if schema.user_field else None
        return cls({k: torch.as_tensor(v, device=device) for k, v in columns.items()}, user), kept

    def groups(self, batch: Batch) -> torch.Tensor | None:
        """The user id of every row [B] (of the store's batch), or None."""
        return None if self.user_column is None else batch["sparse"][:, self.user_column]

    def select(self, batch: Batch) -> Batch:
        """The store's batch -> the model's (the columns of the fields it was built with)."""
        return {k: v.index_select(1, self.columns[k]) if k in self.columns else v for k, v in batch.items()}


def eval_batch_size(args: argparse.Namespace, device: torch.device = torch.device("cpu")) -> int:
    """Rows per evaluation batch on ``device``: --eval_batch_size, else 4 x --batch_size capped at
    :data:`EVAL_BATCH_CAP` of the device type (never below --batch_size). A config saved before the flag existed
    gets the default."""
    given = getattr(args, "eval_batch_size", None)
    if given is None:
        cap = EVAL_BATCH_CAP["cpu" if device.type == "cpu" else "cuda"]
        return max(args.batch_size, min(4 * args.batch_size, cap))
    if given < 1:
        raise UsageError(f"--eval_batch_size must be >= 1, got {given}")
    return given


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, loss_fn: LossFn, ctx: Ctx,
               *, amp: bool = False, clip: float = 0.0) -> torch.Tensor:
    """One optimizer step of ``model`` (DDP-wrapped when ``ctx.world_size > 1``) on this rank's batch.

    ``clip`` > 0 (--clip_grad_norm): the gradients of all parameters are scaled by ``min(1, clip / (||g|| +
    1e-6))``, ``||g||`` their total L2 norm, after the backward pass (under DDP: after the all-reduce, so every
    rank scales the same averaged gradients alike) and before the step, as FuxiCTR's trainer does. The norm
    stays on the device (no host sync). --amp is bfloat16 autocast with float32 gradients and no GradScaler,
    so there is nothing to unscale first.

    Returns this rank's loss, detached, as a 0-dim float32 tensor on the device: the host never waits for
    the device here. The step is taken whatever the loss is, so a NaN/inf loss leaves NaN/inf weights in
    memory; the caller records the loss in a :class:`LossWindow` and checks it (:meth:`LossWindow.read`,
    :func:`check_finite`) before it writes anything from those weights.
    """
    loss = forward_loss(model, batch, loss_fn, ctx, amp)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP: gradients are averaged over ranks here
    if clip > 0:
        clip_gradients(model.parameters(), clip)
    optimizer.step()
    return loss.detach()


def forward_loss(model: nn.Module, batch: Batch, loss_fn: LossFn, ctx: Ctx, amp: bool = False) -> torch.Tensor:
    """The forward half of :func:`train_step`: ``model`` in training mode on ``batch`` (bfloat16 autocast with
    --amp), its training loss (0-dim, float32, attached to the graph)."""
    model.train()
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(batch)  # [B, T]
    return loss_fn(batch, logits.float())


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale every gradient by ``min(1, max_norm / (||g|| + 1e-6))``, ``||g||`` the L2 norm of all of them
    together, on the device: ``torch.nn.utils.clip_grad_norm_`` (foreach kernels), or, with sparse gradients
    (--sparse_embed), the same formula with a sparse gradient's norm taken over its coalesced values (a row
    that several ids of the batch touched appears once, its gradients summed)."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not any(g.is_sparse for g in grads):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    norms = torch.stack([(g.coalesce().values() if g.is_sparse else g).norm() for g in grads])  # [n]
    scale = (max_norm / (norms.norm() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)


@dataclass(frozen=True)
class WindowReport:
    """A :class:`LossWindow` read at a boundary, over every rank: ``loss`` is the mean of the window's step
    losses (each rank's loss of each step counts once: the mean over ranks of the per-step means); ``rows``
    their rows summed over ranks; ``bad_step`` the first step since the start of the run (this process)
    whose loss was NaN/inf on any rank (0: none) and ``bad_loss`` that loss (summed over the ranks where it
    was NaN/inf at that step: NaN or +-inf, as the mean over ranks would be); ``since_save`` rank 0's
    seconds since it last wrote last.pt."""

    loss: float
    steps: int
    rows: int
    bad_step: int
    bad_loss: float
    since_save: float


class LossWindow:
    """The training loss of the steps since the last train/* point, accumulated on the device.

    :meth:`add` is a few tiny device ops per step and never synchronizes the host with the device: the loss
    sum stays a float64 device tensor, the first step whose loss was NaN/inf stays a 0-dim int64 device tensor
    (0: none). Row and step counts are host integers (batch shapes are known without the device). :meth:`read`
    is the synchronization of a boundary: one collective over the ranks (DDP) and one device->host copy.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # never reset: the run stops on it
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        """Start a new window (the NaN/inf record stays)."""
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps, self.rows = 0, 0

    def add(self, loss: torch.Tensor, step: int, rows: int) -> None:
        """Count ``loss`` (0-dim, on the device) of global step ``step``, on ``rows`` rows of this rank."""
        loss = loss.detach().double()
        self.total += loss
        new = ~torch.isfinite(loss) & (self.first_bad == 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_loss = torch.where(new, loss, self.bad_loss)
        self.steps += 1
        self.rows += rows

    def read(self, ctx: Ctx, since_save: float = 0.0) -> WindowReport:
        """The window over every rank (every rank calls this at the same step); ``since_save``: this rank's
        seconds since it wrote last.pt (rank 0's is reported)."""
        host = torch.tensor([self.rows, since_save], dtype=torch.float64).to(self.device)
        mine = torch.cat([torch.stack([self.total, self.first_bad.double(), self.bad_loss]), host])  # [5]
        parts = [mine]
        if ctx.world_size > 1:
            parts = [torch.empty_like(mine) for _ in range(ctx.world_size)]
            dist.all_gather(parts, mine)
        table = torch.stack(parts).cpu().tolist()  # [ranks, 5]: the one device->host copy
        total = sum(r[0] for r in table)
        bad = [int(r[1]) for r in table if r[1] > 0]
        step = min(bad, default=0)
        return WindowReport(loss=total / (self.steps * ctx.world_size) if self.steps else math.nan,
                            steps=self.steps, rows=int(sum(r[3] for r in table)), bad_step=step,
                            bad_loss=sum((r[2] for r in table if step and int(r[1]) == step), 0.0),
                            since_save=table[0][4])


def check_finite(report: WindowReport, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first step whose training loss was NaN/inf, if any (checked
    at ``step``, a boundary: nothing has been written from the weights of the steps since)."""
    if report.bad_step:
        bad = report.bad_step
        found = f" (found at step {step}; no step from {bad} on was saved)" if step > bad else ""
        raise NonFiniteLossError(f"the training loss is {report.bad_loss} at step {bad}{found}. "
                                 f"Lower --lr, raise --embed_l2 or check the data")


# ----------------------------------------------------------------------------------------------------
# Evaluation: predictions of every rank gathered, metrics computed once on the whole split.


@torch.inference_mode()
def predict(model: nn.Module, loader: CTRLoader, ctx: Ctx, amp: bool = False,
            inputs: Inputs | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """-> labels [N, T], predictions [N, T] (probabilities for binary tasks, values for regression tasks) and
    the user id of every row [N] (None without a user field) of the whole split: every rank's rows, on every
    rank. Per-batch outputs stay on the device; at the end they are concatenated, gathered over the ranks
    and copied to the host once."""
    model.eval()
    inputs = inputs or Inputs()
    tasks = model.num_tasks
    with torch.random.fork_rng(devices=[]):  # a loader's iterator may draw seeds: keep the training stream
        batches = iter(loader)
    width = 2 * tasks + (inputs.user_column is not None)
    rows = [torch.empty(0, width, dtype=torch.float64, device=ctx.device)]  # [B, labels | predictions | user]
    for batch in batches:
        rows.append(predict_batch(model, to_device(batch, ctx.device), tasks, amp, inputs))
    table = gather_rows(torch.cat(rows), ctx).cpu().numpy()  # [N, width]: the one device->host copy
    groups = table[:, 2 * tasks].astype(np.int64) if inputs.user_column is not None else None
    return table[:, :tasks], table[:, tasks:2 * tasks], groups


def predict_batch(model: nn.Module, batch: Batch, tasks: int, amp: bool, inputs: Inputs) -> torch.Tensor:
    """One store batch (on the device) -> [B, 2T (+1)] float64: its labels, the model's predictions and, with a
    user field, the user id (float64 holds ids below 2^53 exactly)."""
    groups = inputs.groups(batch)  # [B] or None
    batch = inputs.select(batch)
    with torch.autocast(batch["label"].device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(batch).float()  # [B, T]
    columns = [batch["label"][:, :tasks], torch.where(model.regression, logits, torch.sigmoid(logits))]
    if groups is not None:
        columns.append(groups.unsqueeze(1))
    return torch.cat([c.double() for c in columns], dim=1)


def rank_auc(rank_sum: Any, positives: Any, negatives: Any) -> Any:
    """AUC from ranks (Mann-Whitney): ``(R - P (P + 1) / 2) / (P N)``, with ``R`` the sum of the ranks of the
    ``P`` positives among ``P + N`` scores (ties averaged). Elementwise on arrays (one AUC per group)."""
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores`` [N], tied values sharing the mean of their ranks -> float64 [N] (pandas'
    ``rank(method="average")`` in numpy alone: importing pandas took 1-3 s of every run's start-up)."""
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the highest rank of each distinct value
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (:func:`rank_auc`, ties averaged, as scikit-learn's roc_auc_score); NaN if either class
    is absent. Here rather than scikit-learn, whose import alone took 1-3 s of every run's start-up."""
    pos = np.asarray(labels) > 0.5
    p = float(pos.sum())
    n = len(pos) - p
    if p == 0 or n == 0:
        return math.nan
    return float(rank_auc(average_ranks(scores)[pos].sum(), p, n))


def binary_logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``scores``, clipped to [eps, 1 - eps] of their dtype (as
    scikit-learn's log_loss)."""
    eps = np.finfo(np.asarray(scores).dtype).eps
    p = np.clip(scores, eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """gAUC (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, eq. 7): every
    group's (user's) AUC on its own rows, averaged with weights = the group's rows (impressions). A group
    whose rows are all one class has no AUC and is left out; NaN if no group has both classes.

    Vectorized: ranks inside each group (ties averaged), then :func:`rank_auc` of every group at once. pandas
    is imported here, not at start-up: only runs that monitor gAUC pay for it."""
    import pandas as pd

    frame = pd.DataFrame({"g": groups, "s": scores, "pos": np.asarray(labels) > 0.5})
    frame["rank"] = frame.groupby("g")["s"].rank(method="average").where(frame["pos"], 0.0)
    per = frame.groupby("g").agg(rows=("pos", "size"), p=("pos", "sum"), r=("rank", "sum"))
    p, n = per["p"].to_numpy(np.float64), (per["rows"] - per["p"]).to_numpy(np.float64)
    ok = (p > 0) & (n > 0)
    if not ok.any():
        return math.nan
    auc = rank_auc(per["r"].to_numpy()[ok], p[ok], n[ok])
    weights = per["rows"].to_numpy(np.float64)[ok]
    return float((auc * weights).sum() / weights.sum())


def compute_metrics(labels: np.ndarray, preds: np.ndarray, tasks: tuple[str, ...],
                    task_types: tuple[str, ...] | None = None, groups: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of predictions [N, T] against labels [N, T]: binary tasks get ``auc`` and ``logloss`` (and
    ``gauc`` when ``groups``, the user of every row, is given); regression tasks ``rmse`` and ``mae``. The
    plain names are the means over the tasks of that type; multi-task models also get ``<task>/<metric>``.
    A binary task whose labels are all one class has AUC NaN."""
    task_types = task_types or ("binary",) * len(tasks)
    out: dict[str, float] = {}
    for t, (name, kind) in enumerate(zip(tasks, task_types)):
        y, p = labels[:, t], preds[:, t]
        if kind == "binary":
            out[f"{name}/auc"] = binary_auc(y, p)
            out[f"{name}/logloss"] = binary_logloss(y, p)
            if groups is not None:
                out[f"{name}/gauc"] = group_auc(y, p, groups)
        else:
            out[f"{name}/rmse"] = float(np.sqrt(np.mean((p - y) ** 2)))
            out[f"{name}/mae"] = float(np.mean(np.abs(p - y)))
    for metric in ("auc", "gauc", "logloss", "rmse", "mae"):
        values = [v for k, v in out.items() if k.endswith(f"/{metric}")]
        if values:
            out[metric] = float(np.mean(values))
    return out if len(tasks) > 1 else {k: v for k, v in out.items() if "/" not in k}


def evaluate(model: nn.Module, loader: CTRLoader, ctx: Ctx, amp: bool = False,
             inputs: Inputs | None = None) -> tuple[dict[str, float], int]:
    """-> (metrics of the whole split, number of rows scored). NaN/inf predictions (weights grown too large,
    NaN inputs) raise :class:`NonFiniteLossError` (scikit-learn would raise a bare ValueError)."""
    labels, preds, groups = predict(model, loader, ctx, amp, inputs)
    bad = int((~np.isfinite(preds)).any(axis=1).sum())
    if bad:
        raise NonFiniteLossError(f"the model predicts NaN/inf for {bad} of the {len(preds)} "
                                 f"{loader.dataset.split} rows")
    return compute_metrics(labels, preds, model.tasks, model.task_types, groups), len(labels)


# ----------------------------------------------------------------------------------------------------
# Checkpoints: atomic writes; RNG states so that a resumed run continues the same random streams.


def capture_rng() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    state["state"]["key"] = state["state"]["key"].tolist()  # plain types: loadable with weights_only=True
    return {"python": random.getstate(), "numpy": state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = {**state["numpy"], "state": {**state["numpy"]["state"]}}
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU has its RNG states there too
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# A checkpoint is torch.save's bytes followed by a trailer: their sha256, their length and a magic
# string. torch.load reads the file as it is (a zip archive ignores trailing bytes), load_checkpoint
# verifies the trailer first. A file without the trailer (written before it existed) loads unverified:
# a trailer damaged alone leaves torch.save's bytes intact, and damage that reaches them makes the
# archive unreadable.
CHECKSUM = struct.Struct("<32sQ8s")  # sha256 of the torch.save bytes, their length, CHECKSUM_MAGIC
CHECKSUM_MAGIC = b"CTRsha1\n"


def human_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def write_atomic(path: Path, parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` to a temp file next to ``path`` (``.<name>.tmp-<pid>``), fsync, rename: ``path`` is
    either its old content or the whole new one. On any failure the temp file is removed; a full disk
    is a :class:`RunFailed` naming the space the file needs and the space free."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # also KeyboardInterrupt: nothing half-written stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            need, free = sum(len(p) for p in parts), shutil.disk_usage(path.parent).free
            raise RunFailed(f"no space left on the disk of {path.parent}: writing {path.name} needs "
                            f"{human_bytes(need)}, {human_bytes(free)} are free") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` with its checksum trailer, atomically (:func:`write_atomic`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    trailer = CHECKSUM.pack(hashlib.sha256(payload).digest(), len(payload), CHECKSUM_MAGIC)
    write_atomic(path, [payload, trailer])


def checksum_problem(path: Path) -> str | None:
    """Why ``path``'s bytes are not those train.py wrote, or None (they are, or the file has no trailer)."""
    size = path.stat().st_size
    if size < CHECKSUM.size:
        return None
    with open(path, "rb") as f:
        f.seek(size - CHECKSUM.size)
        digest, length, magic = CHECKSUM.unpack(f.read(CHECKSUM.size))
        if magic != CHECKSUM_MAGIC:
            return None
        if length != size - CHECKSUM.size:
            return f"it holds {size - CHECKSUM.size} bytes before its checksum, {length} were written"
        f.seek(0)
        sha = hashlib.sha256()
        while chunk := f.read(min(2**20, length)):
            sha.update(chunk)
            length -= len(chunk)
        if sha.digest() != digest:
            return "its sha256 differs from the one written with it"
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Verify ``path``'s checksum, then torch.load it (weights_only; ``mmap``: tensors stay on disk)."""
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: pass a run dir of train.py (it holds last.pt and best.pt) "
                         f"or a .pt file it wrote")
    problem = checksum_problem(path)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {problem}")
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise UsageError(f"cannot read checkpoint {path} ({e.__class__.__name__}: {e}); it is damaged or "
                         f"not a checkpoint written by train.py") from None


def saved_steps(run_dir: Path) -> dict[str, int | None]:
    """The checkpoints in ``run_dir`` -> the step each holds (None: unreadable or corrupt)."""
    steps: dict[str, int | None] = {}
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).is_file():
            try:
                steps[name] = int(load_checkpoint(run_dir / name, mmap=True)["progress"]["global_step"])
            except (UsageError, RunFailed):
                steps[name] = None
    return steps


def _listing(steps: dict[str, int | None]) -> str:
    return " and ".join(f"{name} from step {step}" if step is not None else f"a corrupt {name}"
                        for name, step in steps.items())


def what_was_saved(run_dir: Path) -> str:
    """'<run_dir> holds last.pt from step 40 and best.pt from step 30', or 'nothing was saved in <run_dir>'."""
    steps = saved_steps(run_dir)
    return f"{run_dir} holds {_listing(steps)}" if steps else f"nothing was saved in {run_dir}"


def resume_advice(run_dir: Path) -> str:
    """How to go on after a failure, from what ``run_dir`` holds."""
    steps = saved_steps(run_dir)
    if steps.get("last.pt") is None:
        return f"{what_was_saved(run_dir)}: start the run again"
    return f"resume with --resume {run_dir} (it holds {_listing(steps)})"


TEMP_FILE = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_leftovers(run_dir: Path) -> None:
    """Temp files of :func:`write_atomic` whose process is gone (killed in mid-write) are removed, with one
    line each; one whose process still runs is another command's write in progress and stays."""
    for path in sorted(run_dir.iterdir()):
        match = TEMP_FILE.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        pid = int(match["pid"])
        if pid_alive(pid):
            print(f"train.py: kept {path}: process {pid} is still running")
            continue
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        print(f"train.py: removed {path} ({human_bytes(size)}), left by process {pid}, which is gone")


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one device->host copy)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


# ----------------------------------------------------------------------------------------------------
# The run: config, store, model, and the training loop.


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint. ``epoch`` epochs are complete and ``step_in_epoch``
    batches of the next one are done. People see epochs numbered from 1 (:attr:`epoch_number`): the
    progress bar, the log lines and ``best_epoch``."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = math.nan  # the best valid --monitor value so far
    best_epoch: int = -1
    best_step: int = -1
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    last_eval_step: int = -1
    stop_reason: str = ""  # "", "epochs", "early_stopping" or "max_steps"

    @property
    def epoch_number(self) -> int:
        """The 1-based epoch the last step belongs to: the one in progress, or the one just completed."""
        return self.epoch + (1 if self.step_in_epoch else 0)


def open_store(path: str) -> StoreReader:
    try:
        store = StoreReader(path)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--data: {e}") from None
    empty = [s for s in SPLITS if store.num_rows(s) == 0]
    if empty:
        raise UsageError(f"--data {path}: split(s) {empty} are empty; preprocess again with a --split that "
                         f"gives every split rows (preprocess.py)")
    return store


def check_store_matches(store: StoreReader, saved: dict[str, Any]) -> None:
    if store.schema.to_dict() != saved["store"]["schema"]:
        raise UsageError(f"--data {store.path} does not match the checkpoint's store {saved['store']['path']} "
                         f"(different fields, vocab sizes or labels); pass --data {saved['store']['path']}")


def finished(progress: dict[str, Any], args: argparse.Namespace) -> str | None:
    """Why a run whose last.pt holds ``progress`` would train no further step under ``args`` (and which flag
    would continue it), or None. The same rules as :meth:`Trainer.stop_on_resume` and :meth:`Trainer.fit`."""
    step = progress["global_step"]
    if progress["stop_reason"] == "early_stopping":
        return f"early stopping ended it at step {step}; early stopping is final, start a new run to train more"
    if args.max_steps and step >= args.max_steps:
        return f"it reached --max_steps {args.max_steps}; pass a larger --max_steps to continue it"
    if progress["epoch"] >= args.epochs:
        return f"it trained all {args.epochs} epochs (step {step}); pass a larger --epochs to continue it"
    return None


def create_run_dir(args: argparse.Namespace) -> Path:
    """Create a new run's directory, exclusively: two runs never share one. Called once per run, by the
    launching process (torchrun: rank 0), which passes the result to every rank.

    --model_save_dir: a new directory, or an empty one. --run_name: checkpoints/<model>/<name>, which
    must not exist. Default: checkpoints/<model>/<timestamp>, with -2, -3, ... appended when a run
    started in the same second took the name first."""
    if args.model_save_dir:
        run_dir = Path(args.model_save_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_dir.mkdir()
        except FileExistsError:
            if not run_dir.is_dir():
                raise UsageError(f"--model_save_dir {run_dir} is a file; pass a new or empty directory") from None
            entries = sorted(p.name for p in run_dir.iterdir())
            if (run_dir / "last.pt").is_file():
                raise UsageError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick "
                                 f"another --model_save_dir") from None
            if entries:
                shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
                raise UsageError(f"--model_save_dir {run_dir} is not empty (it holds {shown}) and holds no run to "
                                 f"resume; pass a new or empty directory") from None
        return run_dir
    parent = Path("checkpoints") / args.model
    parent.mkdir(parents=True, exist_ok=True)
    if args.run_name:
        run_dir = parent / args.run_name
        run_dir.parent.mkdir(parents=True, exist_ok=True)  # a --run_name may hold a /
        try:
            run_dir.mkdir()
        except FileExistsError:
            if (run_dir / "last.pt").is_file():
                raise UsageError(f"{run_dir} already exists: continue that run with --resume {run_dir}, or pick "
                                 f"another --run_name") from None
            raise UsageError(f"{run_dir} already exists and holds no last.pt to resume; pick another "
                             f"--run_name") from None
        return run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        run_dir = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise UsageError(f"{parent} already holds runs {stamp} to {stamp}-999; pass --run_name")


def prepare_run_dir(config: dict[str, Any]) -> None:
    """The launching process, before any rank starts: a new run gets its directory (config["run_dir"] is
    set) and claims it by creating config.json exclusively (an empty --model_save_dir raced by another
    run); a resumed run loses the temp files of killed writes and gets the config of this command."""
    args = argparse.Namespace(**config["train"], model=config["model"])
    if args.resume:
        run_dir = Path(config["run_dir"])
        remove_leftovers(run_dir)
        write_atomic(run_dir / "config.json", [json.dumps(config, indent=2, default=str).encode()])
        return
    try:
        run_dir = create_run_dir(args)
        config["run_dir"] = str(run_dir)
        with open(run_dir / "config.json", "x") as f:
            f.write(json.dumps(config, indent=2, default=str))
    except FileExistsError:
        raise UsageError(f"another run started in {run_dir} at the same time; pass another "
                         f"--model_save_dir") from None
    except OSError as e:  # permissions, a full disk, a read-only file system
        raise UsageError(f"cannot create the run dir ({e.strerror}: {e.filename}); pass a --model_save_dir "
                         f"where you can write") from None


def resolve_config(args: argparse.Namespace, hparams: dict[str, Any], world_size: int,
                   devices: Sequence[torch.device] = (torch.device("cpu"),)) -> dict[str, Any]:
    """The full config of a run (checked): flags, model hyperparameters, run dir, store path and metadata,
    --data_path resolved (``devices``: :func:`plan_devices`)."""
    check_args(args, hparams)
    store = open_store(args.data)
    chunks = store.num_chunks("train")
    if chunks < world_size:  # the loader gives every training rank at least one chunk of its own
        raise UsageError(f"store {args.data} has {chunks} train chunks, fewer than the {world_size} processes; "
                         f"use fewer processes or preprocess with a smaller --chunk-size")
    if args.resume:
        last = load_checkpoint(Path(args.resume) / "last.pt", mmap=True)
        saved = last["config"]
        check_store_matches(store, saved)
        if saved["world_size"] != world_size:
            raise UsageError(f"--resume: the run was trained by {saved['world_size']} process(es), this command "
                             f"starts {world_size}; pass the same --gpu_ids / --cpu_procs for an exact resume")
        run_dir: Path | None = Path(args.resume)
        args.data_path, data_path_reason = resolve_data_path(args, store, devices, saved)
        done = finished(last["progress"], args)
        if done and (run_dir / "metrics.json").is_file():  # else it stopped before its test: let it finish
            raise UsageError(f"the run in {run_dir} is finished: {done}; nothing was changed")
    else:
        run_dir = None  # created by prepare_run_dir
        args.data_path, data_path_reason = resolve_data_path(args, store, devices, None)
    _, kept = Inputs.of(store.schema, args.drop_fields, args.labels, torch.device("cpu"))  # checks both flags
    multitask = models.get_model_class(args.model).multitask
    args.monitor = resolve_monitor(args.monitor, kept.task_types if multitask else kept.task_types[:1],
                                   store.schema.user_field is not None)
    args.pretrained_sha256 = check_embed_flags(args, store, kept.sparse_fields, hparams)
    meta = store.meta
    return {"model": args.model, "model_hparams": hparams,
            "train": {k: v for k, v in vars(args).items() if k != "model"},
            "run_dir": str(run_dir) if run_dir else None, "world_size": world_size,
            "data_path_reason": data_path_reason,
            "store": {"path": str(args.data), "dataset": meta.get("dataset"), "schema": meta["schema"],
                      "splits": meta["splits"], "options": meta.get("options", {}),
                      "vocab_checksum": recorded_vocabulary_checksum(store)}}


def embed_field(fields: Sequence[str], field: str, flag: str) -> int:
    """A field named by --pretrained_embed / --freeze_embed -> its column among the model's sparse ``fields``;
    UsageError if unknown."""
    if field not in fields:
        raise UsageError(f"{flag} {field}: no such field with an embedding; the fields are {', '.join(fields)}")
    return list(fields).index(field)


def pretrained_files(args: argparse.Namespace) -> dict[str, Path]:
    """--pretrained_embed FIELD=PATH ... -> {field: path}."""
    files: dict[str, Path] = {}
    for item in args.pretrained_embed:
        field, sep, path = item.partition("=")
        if not sep or not field or not path:
            raise UsageError(f"--pretrained_embed {item!r}: expected FIELD=PATH, e.g. C3=vectors.txt")
        files[field] = Path(path)
    return files


def check_embed_flags(args: argparse.Namespace, store: StoreReader, fields: Sequence[str],
                      hparams: dict[str, Any]) -> dict[str, str]:
    """Checks --freeze_embed and --pretrained_embed (``fields``: the model's sparse fields, --drop_fields removed,
    as :func:`apply_embed_flags` gets them; files; dimensions) -> sha256 of each file (what
    config.json records); a resumed run keeps the ones it recorded. dataset.embed_values is imported here, not
    at start-up: it reaches pandas through the vocabularies, which only runs with these flags need."""
    from dataset.embed_values import pretrained_ids

    for name in args.freeze_embed:
        embed_field(fields, name, "--freeze_embed")
    if args.resume:
        return getattr(args, "pretrained_sha256", {}) or {}
    sums = {}
    for name, path in pretrained_files(args).items():
        embed_field(fields, name, "--pretrained_embed")
        if not path.is_file():
            raise UsageError(f"--pretrained_embed {name}={path}: no such file")
        try:
            pretrained_ids(store, name, path, hparams.get("embed_dim", 16))
        except InputError as e:
            raise UsageError(f"--pretrained_embed {name}: {e}") from None
        sums[name] = sha256_file(path)
    return sums


def apply_embed_flags(model: nn.Module, args: argparse.Namespace, store: StoreReader, fields: Sequence[str],
                      master: bool) -> None:
    """--pretrained_embed (a new run only), --freeze_embed and --sparse_embed on ``model``'s embedding
    (``fields``: the model's sparse fields, --drop_fields removed)."""
    from dataset.embed_values import pretrained_ids  # not at start-up: see check_embed_flags

    emb = model.embedding
    if not args.resume:
        for field, path in pretrained_files(args).items():
            ids, vectors, unknown = pretrained_ids(store, field, path, emb.embed_dim)
            emb.load_field_vectors(embed_field(fields, field, "--pretrained_embed"), torch.from_numpy(ids),
                                   torch.from_numpy(vectors))
            if master:
                print(f"--pretrained_embed {field}: {len(ids)} rows set from {path}; {unknown} of its values "
                      f"are not in the vocabulary (skipped)")
    emb.freeze_fields([embed_field(fields, f, "--freeze_embed") for f in args.freeze_embed])
    emb.sparse_gradients(getattr(args, "sparse_embed", False))


def resolve_data_path(args: argparse.Namespace, store: StoreReader, devices: Sequence[torch.device],
                      saved: dict[str, Any] | None) -> tuple[str, str]:
    """-> (``chunks`` or ``resident``, why). A resumed run (``saved``: its config) keeps the path it was trained
    with, chunks for runs older than the flag: the batch order of an epoch depends on it, and an exact resume
    continues that order. ``auto`` asks the memory of this machine's devices (torchrun: this rank's)."""
    if saved is not None:
        kept = saved["train"].get("data_path", "chunks")
        if args.data_path not in ("auto", kept):
            raise UsageError(f"--data_path {args.data_path}: the run was trained with --data_path {kept}, which "
                             f"fixes the batch order of its epochs; drop the flag (start a new run to change it)")
        return kept, "the path of the run being resumed"
    processes = len(devices)
    if torchrun_env():
        local = int(os.environ["LOCAL_RANK"])
        devices, processes = devices[local:local + 1], int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return choose_data_path(args.data_path, store, devices, processes)


def resolve_monitor(monitor: str, task_types: Sequence[str], has_users: bool) -> str:
    """--monitor, with ``auto`` resolved (auc if the model predicts a binary task, else rmse), checked against
    the tasks: auc/gauc/logloss need a binary task (gauc also a user field), rmse/mae a regression task."""
    binary, regression = "binary" in task_types, "regression" in task_types
    if monitor == "auto":
        return "auc" if binary else "rmse"
    available = {"auc": binary, "logloss": binary, "gauc": binary and has_users, "rmse": regression,
                 "mae": regression}
    if not available[monitor]:
        need = ("a store with a user field (amazon, frappe, synthetic_behaviour, a table spec's user_field)"
                if monitor == "gauc" and binary else f"a {'binary' if monitor in ('auc', 'gauc', 'logloss') else 'regression'} task")
        raise UsageError(f"--monitor {monitor} needs {need}; the model predicts {', '.join(task_types)} task(s): "
                         f"pick another --monitor or leave it at auto")
    return monitor


def build(config: dict[str, Any], schema: Schema, device: torch.device) -> nn.Module:
    """The model of ``config``, built from ``schema`` (the store's, without --drop_fields)."""
    try:
        model = models.build_model(config["model"], schema, dense_init=config["train"]["dense_init"],
                                   seq_pooling=config["train"].get("seq_pooling", "mean"), **config["model_hparams"])
    except ValueError as e:
        raise UsageError(f"--model {config['model']}: {e}") from None
    return model.to(device)


def training_parts(config: dict[str, Any], store: StoreReader, device: torch.device,
                   master: bool = True) -> tuple[Inputs, nn.Module, LossFn, torch.optim.Optimizer]:
    """What a run of ``config`` trains on ``device``: the columns it reads from ``store``'s batches, the model
    (--pretrained_embed, --freeze_embed and --sparse_embed applied; ``master`` reports), its loss and optimizer.
    The caller seeds first."""
    args = argparse.Namespace(**config["train"])
    inputs, schema = Inputs.of(store.schema, args.drop_fields, args.labels, device)
    model = build(config, schema, device)
    apply_embed_flags(model, args, store, schema.sparse_fields, master)
    return inputs, model, make_loss_fn(model, args), make_optimizer(model, args)


def hparam_value(v: Any) -> int | float | str | bool:
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def make_loaders(store: StoreReader, args: argparse.Namespace, ctx: Ctx) -> dict[str, CTRLoader | ResidentLoader]:
    """This rank's train, valid and test loaders, by the run's resolved --data_path (chunks or resident)."""
    resident = vars(args).get("data_path", "chunks") == "resident"
    if ctx.world_size > 1:  # torchrun: each rank resolved auto on its own device; rows must split the same way
        votes = torch.tensor([float(resident), -float(resident)], device=ctx.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        if votes.sum() != 0:
            raise UsageError("the ranks chose different data paths (--data_path auto: some devices have room for "
                             "the resident splits, others not); pass --data_path chunks or --data_path resident")
    common = {"seed": args.seed, "rank": ctx.rank, "world_size": ctx.world_size}
    if resident:
        loader = partial(make_resident_loader, store, device=ctx.device, **common)
    else:
        loader = partial(make_loader, store, num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda",
                         **common)
    evaluation = eval_batch_size(args, ctx.device)
    try:  # the resident path reads (and verifies) every chunk here
        return {"train": loader("train", args.batch_size, train=True),
                **{split: loader(split, evaluation, train=False) for split in ("valid", "test")}}
    except StoreCorruptError as e:
        raise RunFailed(str(e)) from None
    except torch.OutOfMemoryError:
        raise UsageError(f"the splits do not fit in the memory of {ctx.device} (--data_path resident); pass "
                         f"--data_path chunks") from None


def after_event_files(run_dir: Path) -> None:
    """Wait, if needed, until a new TensorBoard event file of ``run_dir`` sorts after every existing one.

    Readers load a run's event files in name order, ``events.out.tfevents.<second>.<host>.<pid>...``, and
    apply a resumed run's purge (the points its killed predecessor wrote after last.pt's step) only to the
    files read before its own. A run resumed within the second its predecessor started would tie on the
    second and sort by pid, perhaps first, and keep the stale points; at most a second's wait avoids that."""
    stamps = [p.name.split(".")[3] for p in run_dir.glob("events.out.tfevents.*")]
    latest = max((int(s) for s in stamps if s.isdigit()), default=None)
    if latest is not None and time.time() < latest + 1:
        time.sleep(latest + 1 - time.time())


class Trainer:
    """The training loop of one process. Rank 0 alone writes TensorBoard, checkpoints and metrics.

    Steps run without host synchronization; :meth:`sync` at each boundary is where the host waits, every
    rank at the same step. A NaN/inf loss at step k leaves NaN/inf weights in memory for the steps up to the
    next boundary; that boundary raises :class:`NonFiniteLossError` naming k before anything is logged,
    evaluated or saved, so the checkpoints on disk stay those written before step k."""

    clock = staticmethod(time.monotonic)  # times the train/samples_per_s windows (tests replace it)

    def __init__(self, config: dict[str, Any], ctx: Ctx) -> None:
        self.config, self.ctx = config, ctx
        self.args = argparse.Namespace(**config["train"])
        self.run_dir = Path(config["run_dir"])
        torch.manual_seed(self.args.seed)  # the same on every rank: identical init and random streams
        np.random.seed(self.args.seed)
        random.seed(self.args.seed)
        self.store = open_store(config["store"]["path"])
        self.inputs, self.model, self.loss_fn, self.optimizer = training_parts(config, self.store, ctx.device,
                                                                               ctx.master)
        self.scheduler = make_scheduler(self.optimizer, self.args)
        self.progress = Progress()
        if self.args.resume:
            self.restore(self.run_dir / "last.pt")
        # What runs the batches: the model, compiled with --compile (it shares the model's parameters), for
        # training wrapped by DDP
        self.net: nn.Module = compiled(self.model, ctx.device) if self.args.compile else self.model
        if ctx.world_size > 1:  # DDP; static_graph: models may leave parameters unused (e.g. the linear term)
            self.ddp: nn.Module = DDP(self.net, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                      static_graph=True)
        else:
            self.ddp = self.net
        self.loaders = make_loaders(self.store, self.args, ctx)
        # A resumed run drops the points its killed predecessor wrote after last.pt's step (the points of that
        # step were written before last.pt was, so they stay)
        if self.args.resume and ctx.master:
            after_event_files(self.run_dir)
        self.writer = SummaryWriter(str(self.run_dir), purge_step=self.progress.global_step + 1 if self.args.resume
                                    else None) if ctx.master else None
        self.window = LossWindow(ctx.device)  # the steps since the last train/* point
        self.window_start = self.clock()
        self.last_save = time.monotonic()
        self.synced: tuple[int, WindowReport] | None = None  # the last boundary's step and report
        self.bar: tqdm | None = None  # the epoch's progress bar (its postfix shows the window's loss)

    # -- checkpoints ----------------------------------------------------------------------------------

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.ctx.device)
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        saved = dict(state["progress"])
        if "best_auc" in saved:  # a checkpoint written before --monitor: its monitor was valid AUC
            saved["best_score"] = saved.pop("best_auc")
        self.progress = Progress(**saved)
        self.progress.stop_reason = self.stop_on_resume()
        restore_rng(state["rng"])

    def stop_on_resume(self) -> str:
        """A finished run continues when --epochs or --max_steps grew; early stopping is final."""
        p, args = self.progress, self.args
        if p.stop_reason == "early_stopping":
            return p.stop_reason
        return "max_steps" if args.max_steps and p.global_step >= args.max_steps else ""

    def save(self, name: str) -> None:
        """Rank 0 writes ``name`` (last.pt: the full training state; best.pt: weights, config, progress).
        Called by every rank at the same step (a boundary, :meth:`sync`). Weights that a NaN/inf loss touched,
        or that are NaN/inf, are never written: the previous file stays."""
        self.sync()
        if not self.ctx.master:
            return
        if not weights_finite(self.model):
            raise NonFiniteLossError(f"the weights became NaN/inf by step {self.progress.global_step}; {name} was "
                                     f"not written. Lower --lr or raise --embed_l2")
        state = {"model": self.model.state_dict(), "config": self.config, "progress": asdict(self.progress)}
        if name == "last.pt":
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         rng=capture_rng())
            self.last_save = time.monotonic()
        try:
            save_checkpoint(self.run_dir / name, state)
        except RunFailed as e:  # a full disk
            raise RunFailed(f"{e}; free some space, then {resume_advice(self.run_dir)}") from None

    def checkpoint_due(self, report: WindowReport) -> bool:
        """Whether last.pt is due at this boundary: every --ckpt_every steps, or --ckpt_minutes after the last
        one by rank 0's clock (``report``: every rank decides the same)."""
        every = self.args.ckpt_every and self.progress.global_step % self.args.ckpt_every == 0
        return bool(every) or report.since_save >= 60 * self.args.ckpt_minutes

    # -- boundaries: the only places where the host waits for the device ----------------------------

    def sync(self) -> WindowReport:
        """The synchronization of a boundary (a train/* point, an evaluation, a checkpoint, the end of an epoch
        or of the run), made by every rank at the same step: reads the loss window (:meth:`LossWindow.read`)
        and raises :class:`NonFiniteLossError` naming the first step whose loss was NaN/inf on any rank, so
        that all ranks stop at the same boundary and nothing is saved from weights such a step touched. Once
        per step: later calls at the same step return the first one's report."""
        step = self.progress.global_step
        if self.synced is None or self.synced[0] != step:
            self.synced = step, self.window.read(self.ctx, since_save=time.monotonic() - self.last_save)
        check_finite(self.synced[1], step)
        return self.synced[1]

    # -- logging --------------------------------------------------------------------------------------

    def log(self, prefix: str, metrics: dict[str, float]) -> None:
        if self.writer:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, self.progress.global_step)
            self.writer.flush()
        if self.ctx.master:
            shown = "  ".join(f"{k} {v:.5f}" for k, v in metrics.items())
            tqdm.write(f"step {self.progress.global_step} epoch {self.progress.epoch_number} {prefix}: {shown}")

    def log_train(self) -> None:
        """train/* points for the steps since the last ones (every --log_every steps and at the end of each
        epoch): mean loss, LR, and samples/s = every rank's rows over the window's time, evaluations
        excluded. Called by every rank at the same steps (the row count is summed over ranks)."""
        if not self.window.steps:
            return
        report = self.sync()  # first: the window's time ends when the device has done its steps
        seconds = max(self.clock() - self.window_start, 1e-9)
        if self.writer:
            step = self.progress.global_step
            self.writer.add_scalar("train/loss", report.loss, step)
            self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], step)
            self.writer.add_scalar("train/samples_per_s", report.rows / seconds, step)
            self.writer.flush()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{report.loss:.4f}", refresh=False)
        self.window.reset()
        self.window_start = self.clock()

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train until the epochs, --max_steps or the patience run out; then score best.pt on test."""
        p = self.progress
        try:
            while not p.stop_reason and p.epoch < self.args.epochs:
                self.train_epoch()
            p.stop_reason = p.stop_reason or "epochs"
            if p.last_eval_step != p.global_step:
                self.validate()
            self.save("last.pt")
        except NonFiniteLossError as e:
            if self.ctx.master:  # what the run dir holds now, so the user knows what is left
                raise NonFiniteLossError(f"{e}; {what_was_saved(self.run_dir)}") from None
            raise
        return self.test()

    def train_epoch(self) -> None:
        p, loader = self.progress, self.loaders["train"]
        loader.set_epoch(p.epoch, skip_batches=p.step_in_epoch)
        with torch.random.fork_rng(devices=[]):  # an iterator may draw seeds: keep the stream resumable
            batches = iter(loader)
        self.window_start = self.clock()
        with tqdm(batches, total=len(loader), initial=p.step_in_epoch, desc=f"epoch {p.epoch + 1}/{self.args.epochs}",
                  disable=not self.ctx.master, leave=False, dynamic_ncols=True) as self.bar:
            for batch in self.bar:
                loss = train_step(self.ddp, self.inputs.select(to_device(batch, self.ctx.device)), self.optimizer,
                                  self.loss_fn, self.ctx, amp=self.args.amp,
                                  clip=getattr(self.args, "clip_grad_norm", 0.0))
                p.step_in_epoch += 1
                p.global_step += 1
                self.after_step(loss, len(batch["label"]))
                if p.stop_reason:
                    break
        self.bar = None
        self.log_train()  # the epoch's last, partial window: a short run still gets a train curve
        if p.stop_reason:
            return
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        if p.last_eval_step != p.global_step:
            self.validate()
        self.save("last.pt")

    def after_step(self, loss: torch.Tensor, rows: int) -> None:
        """Count the step's ``loss`` (on the device) and ``rows``; at a boundary (every --log_every, --eval_every
        and --ckpt_every steps) synchronize, then log, evaluate, checkpoint. Between boundaries the host never
        waits for the device."""
        p, args = self.progress, self.args
        self.window.add(loss, p.global_step, rows)
        log = p.global_step % args.log_every == 0
        evaluate_now = bool(args.eval_every) and p.global_step % args.eval_every == 0
        ckpt = bool(args.ckpt_every) and p.global_step % args.ckpt_every == 0
        report = self.sync() if log or evaluate_now or ckpt else None
        if log:
            self.log_train()
        if evaluate_now:
            self.validate()
        if args.max_steps and p.global_step >= args.max_steps:
            p.stop_reason = "max_steps"  # the caller ends the epoch: its log, evaluation and last.pt follow
        if report and not p.stop_reason and self.checkpoint_due(report):
            self.save("last.pt")

    def validate(self) -> None:
        """Evaluate on valid; update best.pt, the LR scheduler and the patience counter by --monitor. A
        boundary: a NaN/inf training loss since the last one stops the run here (:meth:`sync`)."""
        p = self.progress
        self.sync()  # before the clock starts: the device finishes the window's steps first
        started = self.clock()
        try:
            metrics, _ = evaluate(self.net, self.loaders["valid"], self.ctx, self.args.amp, self.inputs)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e} at step {p.global_step}. Lower --lr, raise --embed_l2 or check the "
                                     f"data") from None
        p.last_eval_step = p.global_step
        self.window_start += self.clock() - started  # an evaluation inside a train window is not training time
        self.log("valid", metrics)
        score = metrics[self.args.monitor]
        self.scheduler.step(score)
        better = score > p.best_score if MONITORS[self.args.monitor] == "max" else score < p.best_score
        if better or p.best_step < 0:
            p.best_score, p.best_epoch, p.best_step, p.best_valid = score, p.epoch_number, p.global_step, metrics
            p.bad_evals = 0
            self.save("best.pt")
        else:
            p.bad_evals += 1
            if p.bad_evals >= self.args.patience:
                p.stop_reason = "early_stopping"

    def test(self) -> dict[str, Any]:
        """Score best.pt on the test split; rank 0 writes metrics.json and the TensorBoard hparams."""
        if self.ctx.world_size > 1:
            dist.barrier()  # rank 0 has written best.pt
        self.model.load_state_dict(load_checkpoint(self.run_dir / "best.pt", self.ctx.device)["model"])
        metrics, rows = evaluate(self.net, self.loaders["test"], self.ctx, self.args.amp, self.inputs)
        p = self.progress
        result = {"model": self.config["model"], "stop_reason": p.stop_reason, "epochs": p.epoch,
                  "global_step": p.global_step, "best_epoch": p.best_epoch, "best_step": p.best_step,
                  "monitor": self.args.monitor, "valid": p.best_valid, "test": metrics, "test_rows": rows}
        if self.writer:
            self.log("test", metrics)
            hparams = {"model": self.config["model"], **self.config["model_hparams"],
                       **{k: vars(self.args)[k] for k in ("optimizer", "lr", "batch_size", "embed_l2",
                                                             "weight_decay", "seed")},
                       **{k: vars(self.args).get(k, d) for k, d in (("embed_l2_mode", "batch"),
                                                                    ("clip_grad_norm", 0.0),
                                                                    ("sparse_embed", False))}}
            final = {f"hparam/valid_{self.args.monitor}": p.best_score,
                     **{f"hparam/test_{k}": v for k, v in metrics.items() if "/" not in k}}
            self.writer.add_hparams({k: hparam_value(v) for k, v in hparams.items()}, final, run_name=".",
                                    global_step=p.global_step)
            self.writer.close()
            write_atomic(self.run_dir / "metrics.json", [json.dumps(result, indent=2).encode()])
        return result


# ----------------------------------------------------------------------------------------------------
# Entry points.


def run(rank: int, device: torch.device, config: dict[str, Any]) -> dict[str, Any]:
    """Body of one process: join the group, train, leave."""
    world = config["world_size"]
    ctx = init_process(rank, world, device)
    try:
        if torchrun_env() and world > 1:  # under torchrun, rank 0 created the run dir: take its name
            shared = [config["run_dir"]]
            dist.broadcast_object_list(shared, src=0)
            config = {**config, "run_dir": shared[0]}
        trainer = Trainer(config, ctx)
        try:
            result = trainer.fit()
        except StoreCorruptError as e:  # read in a loader worker: its message carries the worker's traceback
            raise RunFailed(f"{str(e).strip().splitlines()[-1].split('StoreCorruptError: ')[-1]}") from None
        del trainer  # DDP's reducer holds the group: release it, and leave together, before the group goes away
        if world > 1:
            leave_group()
        return result
    finally:
        if world > 1 and dist.is_initialized():  # a failed run leaves here, without waiting for the others
            dist.destroy_process_group()


def leave_group() -> None:
    """Leave the default process group together with the other ranks, once this rank has dropped its DDP
    wrapper. Garbage is collected first: DDP sits in a reference cycle, so ``del`` alone left its reducer to
    the interpreter's exit, after the group was gone, and a gloo rank then aborted now and then ('terminate
    called without an active exception': 4 of 30 two-rank runs; 0 of 40 with the collection)."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


LOST_PEER_EXIT = 3  # a rank whose collective failed because another rank is gone
STOP_GRACE_S = 10.0  # after a rank fails, how long the others get to notice and stop before SIGTERM


def lost_peer(e: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (NCCL: DistError; gloo: a RuntimeError
    saying the connection closed)."""
    text = str(e)
    return isinstance(e, dist.DistError) or any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused"))


def spawned(index: int, devices: list[torch.device], config: dict[str, Any], errors: Any) -> None:
    """Entry of a process started by :func:`spawn_ranks`. A known error goes to the launcher, which prints
    one line for the whole run; a rank that only saw another rank go exits quietly with LOST_PEER_EXIT."""
    if sys.platform.startswith("linux"):  # loader workers fork, as in a torchrun rank or a single process;
        multiprocessing.set_start_method("fork", force=True)  # spawn's default here re-imports torch per worker
    try:
        run(index, devices[index], config)
    except (UsageError, RunFailed) as e:
        code = 2 if isinstance(e, UsageError) else 1
        errors.put((index, code, str(e)))
        sys.exit(code)
    except Exception as e:
        if lost_peer(e):
            sys.exit(LOST_PEER_EXIT)
        raise


def spawn_ranks(config: dict[str, Any], devices: list[torch.device]) -> None:
    """DDP on this machine: one spawned process per device, rendezvous on a free local port. When a rank
    fails the others get STOP_GRACE_S to stop on their own, then SIGTERM (their loader workers die with
    them); the failure is raised as one line naming the rank that failed first, and how to go on."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    errors = mp.get_context("spawn").SimpleQueue()
    ranks = mp.start_processes(spawned, args=(devices, config, errors), nprocs=len(devices), join=False,
                               start_method="spawn")
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # our line says what happened
    try:
        while not ranks.join(grace_period=STOP_GRACE_S):
            pass
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as failure:
        reports = {}
        while not errors.empty():  # every rank has exited: what they put is all there
            rank, code, message = errors.get()
            reports[rank] = (code, message)
        if reports:  # known errors: the lowest rank's message (rank 0 adds what the run dir holds)
            code, message = reports[min(reports)]
            raise (UsageError if code == 2 else RunFailed)(message) from None
        codes = [p.exitcode for p in ranks.processes]
        first = failure.error_index
        if codes[first] == LOST_PEER_EXIT:  # joined first, but only saw another rank go: blame that one
            first = next((r for r, c in enumerate(codes) if c not in (0, LOST_PEER_EXIT, -signal.SIGTERM)), first)
        if isinstance(failure, mp.ProcessRaisedException) and first == failure.error_index:
            raise  # an unexpected exception in a rank: a bug, keep its traceback
        if codes[0] is not None and codes[0] < 0:
            print(file=sys.stderr)  # rank 0 died by a signal: end the line its progress bar left open
        code, pid = codes[first], ranks.processes[first].pid
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += " (sent by a user, or by the kernel when memory ran out: see dmesg)"
        elif code == LOST_PEER_EXIT:
            how = "lost its connection to the other ranks"
        else:
            how = f"exited with code {code}"
        advice = resume_advice(Path(config["run_dir"]))
        raise RunFailed(f"rank {first} (pid {pid}) {how}; the run stopped. {advice[0].upper()}{advice[1:]}") from None


def launch(config: dict[str, Any], devices: list[torch.device]) -> None:
    """torchrun: this process is one rank. Else one process per device, spawned here when several."""
    if torchrun_env():  # DDP launched by torchrun: it set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
        run(int(os.environ["RANK"]), devices[int(os.environ["LOCAL_RANK"])], config)
    elif len(devices) == 1:
        run(0, devices[0], config)
    else:
        spawn_ranks(config, devices)


def tensorboard_command(run_dir: str | Path) -> str:
    """A TensorBoard command for ``run_dir`` that works without an activated virtualenv: the tensorboard
    installed next to this Python (``.venv/bin/tensorboard`` after the README's setup)."""
    exe = Path(sys.executable).parent / "tensorboard"
    if not exe.is_file():
        return f"tensorboard --logdir {run_dir}"
    relative = os.path.relpath(exe)
    return f"{exe if relative.startswith('..') else relative} --logdir {run_dir}"


def summary(run_dir: Path) -> str:
    """The last line of a finished run: why it stopped, its valid and test metrics, where it is."""
    m = json.loads((run_dir / "metrics.json").read_text())
    steps = f"{m['global_step']} step{'' if m['global_step'] == 1 else 's'}"
    monitor = m.get("monitor", "auc")
    names = {"auc": "AUC", "gauc": "gAUC", "rmse": "RMSE", "mae": "MAE"}
    test = " ".join(f"{names.get(k, k)} {v:.5f}" for k, v in m["test"].items() if "/" not in k)
    return (f"done ({m['stop_reason']}, {steps}): best valid {names.get(monitor, monitor)} {m['valid'][monitor]:.5f} at step "
            f"{m['best_step']}, test {test}; run dir {run_dir} (TensorBoard: {tensorboard_command(run_dir)})")


def load_trained(state: dict[str, Any], store: StoreReader, device: torch.device) -> tuple[nn.Module, Inputs]:
    """A loaded checkpoint (:func:`load_checkpoint`) -> (its model with the saved weights, on ``device``; the
    inputs that select the columns it reads from ``store``'s batches). --eval_only and scripts/predict.py."""
    saved = state["config"]["train"]
    inputs, schema = Inputs.of(store.schema, saved.get("drop_fields", ()), saved.get("labels"), device)
    model = build(state["config"], schema, device)
    model.load_state_dict(state["model"])
    return model, inputs


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """--eval_only: score a checkpoint on the store's test split (one process: first --gpu_ids id or CPU)."""
    path = checkpoint_path(args)
    state = load_checkpoint(path)
    store = open_store(args.data)
    check_store_matches(store, state["config"])
    gpus = parse_gpu_ids(args.gpu_ids)
    device = torch.device("cuda", gpus[0]) if gpus else torch.device("cpu")
    model, inputs = load_trained(state, store, device)
    loader = make_loader(store, "test", eval_batch_size(args, device), train=False, num_workers=args.num_workers)
    metrics, rows = evaluate(model, loader, Ctx(device=device), args.amp, inputs)
    return {"checkpoint": str(path), "split": "test", "rows": rows, **metrics}


def main(argv: list[str] | None = None) -> int:
    try:
        args, hparams = parse_args(argv)
        if args.eval_only:
            print(json.dumps(evaluate_checkpoint(args), indent=2))
            return 0
        devices = plan_devices(args)
        check_compile(args, devices)
        world = int(os.environ["WORLD_SIZE"]) if torchrun_env() else len(devices)
        config = resolve_config(args, hparams, world, devices)
        check_sparse_embed(config["train"], world, devices)
        launcher = not torchrun_env() or os.environ["RANK"] == "0"
        if launcher:
            prepare_run_dir(config)
            print(f"train.py: run dir {config['run_dir']} (TensorBoard: {tensorboard_command(config['run_dir'])})",
                  flush=True)
            print(f"train.py: data path {config['train']['data_path']} ({config['data_path_reason']})", flush=True)
        launch(config, devices)
        if launcher:
            print(f"train.py: {summary(Path(config['run_dir']))}", flush=True)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
