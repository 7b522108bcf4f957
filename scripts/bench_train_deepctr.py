"""The DeepCTR-Torch side of scripts/bench_train.py: DeepFM on the benchmark's rows, one epoch, then test.

    <baseline venv>/bin/python scripts/bench_train_deepctr.py DATA.npz RESULT.json --log-every N

Runs in the baseline venv (torch, numpy, scikit-learn, deepctr-torch; none of this repo's code or
requirements), so it imports nothing from the repo. DATA.npz holds the store's encoded splits as written by
bench_train.py (``{split}_sparse`` int32 [n, F], ``{split}_label`` float32 [n], ``fields``, ``vocab_sizes``).
It does what a DeepCTR-Torch user does with encoded columns: one ``SparseFeat`` per field (the store's
vocabulary size, embedding 16) for both the linear and the DNN part, ``DeepFM(dnn_hidden_units=(400, 400,
400))`` with every L2 term 0 (ours trains without one; DeepCTR-Torch's default 1e-5 adds a pass over every
embedding table per step), ``compile("adam")`` (lr 1e-3), one epoch of ``fit(batch_size, validation_data=the
valid split, verbose=0)`` (verbose 0: no per-batch training AUC, which ours does not compute either), then
``predict`` on test at the same batch size. Training samples/s: a forward pre-hook stamps each training step;
windows of ``--log-every`` steps, as train.py's train/samples_per_s points. Writes RESULT.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from deepctr_torch.inputs import SparseFeat  # noqa: E402  (the package's import starts its PyPI version check)
from deepctr_torch.models import DeepFM  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help=".npz written by bench_train.py")
    p.add_argument("result", help="JSON to write")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--hidden-units", type=int, nargs="+", default=[400, 400, 400])
    p.add_argument("--log-every", type=int, default=20, help="steps per samples/s window")
    p.add_argument("--seed", type=int, default=2018)
    args = p.parse_args(argv)
    imported = time.perf_counter()

    with np.load(args.data) as npz:  # each array read once (an NpzFile reads an array at every access)
        data = {k: npz[k] for k in npz.files}
    fields, vocab = [str(f) for f in data["fields"]], [int(v) for v in data["vocab_sizes"]]
    x = {s: {f: data[f"{s}_sparse"][:, i] for i, f in enumerate(fields)} for s in ("train", "valid", "test")}
    y = {s: data[f"{s}_label"] for s in ("train", "valid", "test")}
    loaded = time.perf_counter()

    columns = [SparseFeat(f, vocabulary_size=v, embedding_dim=args.embed_dim) for f, v in zip(fields, vocab)]
    model = DeepFM(columns, columns, dnn_hidden_units=tuple(args.hidden_units), l2_reg_linear=0.0,
                   l2_reg_embedding=0.0, l2_reg_dnn=0.0, seed=args.seed, device="cpu")
    model.compile("adam", "binary_crossentropy", metrics=["binary_crossentropy", "auc"])
    stamps: list[float] = []
    model.register_forward_pre_hook(lambda m, _: stamps.append(time.perf_counter()) if m.training else None)
    start = time.perf_counter()
    history = model.fit(x["train"], y["train"], batch_size=args.batch_size, epochs=1, verbose=0,
                        validation_data=(x["valid"], y["valid"]))
    fitted = time.perf_counter()
    pred = model.predict(x["test"], batch_size=args.batch_size)
    done = time.perf_counter()

    k, b = args.log_every, args.batch_size
    rates = [k * b / (stamps[i + k] - stamps[i]) for i in range(0, len(stamps) - k, k)]
    result = {"torch_threads": torch.get_num_threads(), "import_s": imported - T0, "load_s": loaded - imported,
              "build_s": start - loaded, "fit_s": fitted - start, "predict_s": done - fitted,
              "train_rows": len(y["train"]), "steps": len(stamps), "window_samples_per_s": rates,
              "valid_auc": float(history.history["val_auc"][-1]),
              "test_auc": float(roc_auc_score(y["test"], pred.ravel()))}
    with open(args.result, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
