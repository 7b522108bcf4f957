"""The DeepCTR-Torch side of scripts/bench_models_vs.py: one model's training samples/s on the shared batch.

    <baseline venv>/bin/python scripts/bench_models_vs_deepctr.py BATCH.npz MODEL '{"dnn_hidden_units": [400]}'
                               [--warmup 1] [--steps 3]

Runs in the DeepCTR-Torch venv (torch, numpy, deepctr-torch 0.3.0; none of this repo's code), so it imports
nothing from the repo. BATCH.npz (written by bench_models_vs.py) holds ``sparse`` int64 [B, F], ``label``
float32 [B] and ``vocab_sizes`` int64 [F]. The model gets one ``SparseFeat`` per column (embedding 16 unless
``--embed-dim``) as both its linear and its DNN columns (MLR: its region columns; PNN: its DNN columns, it has
no linear part) and the JSON keyword arguments; every L2 term, dropout and batch-norm switch its constructor has
is then set to off here, from its signature, so that no model keeps a library default. The timed step is the
body of DeepCTR-Torch's own ``fit`` loop at verbose 0 (``basemodel.py``): forward on the float input tensor,
``zero_grad``, BCE with reduction sum, ``get_regularization_loss()`` (zero here), ``+ aux_loss``, the two
``.item()`` calls, backward, and ``compile("adam")``'s ``torch.optim.Adam(lr=1e-3)`` step: without the
DataLoader and host-to-tensor copies around it, as ours is timed without the loader. ``--warmup`` untimed
steps, then ``--steps`` timed ones. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from typing import Any

import numpy as np
import torch

import deepctr_torch.models as deepctr_models  # the package import starts its PyPI version check (harmless)
from deepctr_torch.inputs import SparseFeat

OFF_PREFIXES = ("l2_reg",)  # every L2 coefficient
OFF_VALUES = {"dnn_dropout": 0, "afm_dropout": 0, "bi_dropout": 0, "dnn_use_bn": False}


def switched_off(cls: type) -> dict[str, Any]:
    """The regularizer, dropout and batch-norm arguments of ``cls``'s constructor, each set to off."""
    params = inspect.signature(cls.__init__).parameters
    off = {k: 0.0 for k in params if k.startswith(OFF_PREFIXES)}
    off.update({k: v for k, v in OFF_VALUES.items() if k in params})
    return off


def build(name: str, vocab_sizes: list[int], embed_dim: int, kwargs: dict[str, Any]) -> torch.nn.Module:
    cls = getattr(deepctr_models, name, None)
    if cls is None:
        raise SystemExit(f"bench_models_vs_deepctr.py: deepctr_torch.models has no model {name!r}")
    columns = [SparseFeat(f"C{i + 1}", vocabulary_size=v, embedding_dim=embed_dim) for i, v in enumerate(vocab_sizes)]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    clash = set(kwargs) & set(switched_off(cls))
    if clash:
        raise SystemExit(f"bench_models_vs_deepctr.py: {sorted(clash)} are switched off here, not set by the table")
    kwargs.update(switched_off(cls), device="cpu")
    if name in ("MLR", "PNN"):  # MLR: region columns only; PNN: DNN columns only (no linear part)
        return cls(columns, **kwargs)
    return cls(columns, columns, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("batch", help=".npz written by bench_models_vs.py")
    p.add_argument("model", help="class name in deepctr_torch.models")
    p.add_argument("kwargs", help="JSON object of constructor arguments (sizes)")
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=None, help="use the first ROWS rows of the batch (default all)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with np.load(args.batch) as npz:
        sparse, label = npz["sparse"][:args.rows], npz["label"][:args.rows]
        vocab = [int(v) for v in npz["vocab_sizes"]]
    model = build(args.model, vocab, args.embed_dim, json.loads(args.kwargs))
    model.compile("adam", "binary_crossentropy")
    model.train()
    x, y = torch.from_numpy(sparse).float(), torch.from_numpy(label).float()  # fit's x_train.float()

    def step() -> None:  # deepctr_torch/models/basemodel.py, fit(), one batch at verbose 0
        y_pred = model(x).squeeze(-1)
        model.optim.zero_grad()
        loss = model.loss_func(y_pred, y, reduction="sum")
        total = loss + model.get_regularization_loss() + model.aux_loss
        loss.item(), total.item()
        total.backward()
        model.optim.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": len(y), "samples_per_s": args.steps * len(y) / seconds,
                      "ms_per_step": 1000 * seconds / args.steps,
                      "params": sum(q.numel() for q in model.parameters()), "torch_threads": torch.get_num_threads(),
                      "switched_off": switched_off(type(model))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
