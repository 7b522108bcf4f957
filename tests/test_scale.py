"""Scale: a million generated Criteo rows through preprocessing and the DDP loaders (``-m slow``)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from dataset.loader import make_loader
from dataset.store import StoreReader
from dataset.synthetic import write_synthetic_criteo

pytestmark = pytest.mark.slow
ROWS = 1_000_000
PEAK_MIB_LIMIT = 2048  # the 1M-row store is ~160 MB; memory must not grow like the raw file (~240 MB) x passes


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    work = tmp_path_factory.mktemp("scale")
    raw = write_synthetic_criteo(work / "raw.txt", ROWS, seed=5)
    code = ("import sys; from dataset.criteo import preprocess_criteo; "
            f"preprocess_criteo({str(raw)!r}, {str(work / 'store')!r}, progress=False); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    peak_mib = int(out.stdout.strip().splitlines()[-1]) / 1024
    return StoreReader(work / "store"), peak_mib


def test_preprocessing_a_million_rows_keeps_memory_bounded(big_store):
    store, peak_mib = big_store
    assert sum(store.num_rows(s) for s in ("train", "valid", "test")) == ROWS
    assert store.meta["stats"]["rows"] == ROWS
    assert peak_mib < PEAK_MIB_LIMIT, f"preprocessing peaked at {peak_mib:.0f} MiB"


def row_keys(batches) -> np.ndarray:
    """Each row's ids as one hashable byte string (rows of a big store are distinct with near certainty)."""
    return np.concatenate([np.ascontiguousarray(b["sparse"].numpy()).view(f"V{b['sparse'].shape[1] * 8}").ravel()
                           for b in batches])


def test_ddp_shards_over_a_big_store(big_store):
    store, _ = big_store
    evals = [row_keys(make_loader(store, "test", 4096, train=False, rank=r, world_size=3, num_workers=2))
             for r in range(3)]
    everything = row_keys(make_loader(store, "test", 4096, train=False, num_workers=0))
    assert sum(len(e) for e in evals) == len(everything) == store.num_rows("test")
    assert sorted(np.concatenate(evals).tolist()) == sorted(everything.tolist())
    loaders = [make_loader(store, "train", 4096, train=True, rank=r, world_size=2, num_workers=2) for r in range(2)]
    for loader in loaders:
        loader.set_epoch(3)
    trains = [list(loader) for loader in loaders]
    assert len(trains[0]) == len(trains[1]) == len(loaders[0])  # equal steps, or DDP would hang
    keys = [row_keys(t) for t in trains]
    assert len(np.intersect1d(keys[0], keys[1])) == 0
    seen = len(keys[0]) + len(keys[1])
    assert store.num_rows("train") - seen < 2 * (2 * store.meta["chunk_size"] + 2 * 4096)  # the documented drop
