"""scripts/export.py: TorchScript and ONNX exports of trained runs give the eager model's probabilities on real
rows (Criteo's head8k.txt; census for the multi-task models, Amazon Beauty for the sequence models) at two
batch sizes, with a manifest and the store's vocabularies, written atomically."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import models
import train
from conftest import ROOT, SHARED_DATA
from dataset.criteo import preprocess_criteo
from dataset.predict_encode import vocabulary_checksum, vocabulary_records
from dataset.schema import Schema
from dataset.store import SPLITS, StoreReader, StoreWriter
from test_models import is_multitask, needs_sequences, small

sys.path.insert(0, str(ROOT / "scripts"))
import export  # noqa: E402

FAST_MODELS = ["DeepFM", "DCNv2", "MMoE", "DIN"]
BATCH_SIZES = (1, 37)


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Stores of real rows, made lazily: criteo (head8k.txt, numeric dense fields and a hashed field), census
    (two tasks) and amazon (behaviour sequences)."""
    return {"_root": tmp_path_factory.mktemp("export_stores")}


def store_for(stores: dict[str, Path], name: str) -> Path:
    kind = "criteo2" if is_multitask(name) else "amazon" if needs_sequences(name) else "criteo"
    if kind not in stores:
        out = stores["_root"] / kind
        if kind == "amazon":
            import preprocess
            assert preprocess.main(["amazon", "--input", str(SHARED_DATA / "amazon" / "Beauty.txt"),
                                    "--out", str(out)]) == 0
        elif kind == "criteo":
            preprocess_criteo(SHARED_DATA / "criteo" / "head8k.txt", out, min_count=2, dense="numeric",
                              hashed={"C3": 97}, progress=False)
        else:
            two_task_store(store_for(stores, "DeepFM"), out)
        stores[kind] = out
    return stores[kind]


def two_task_store(source: Path, out: Path) -> Path:
    """The criteo store's real rows with a second label (click and C6's id is even: a "conversion" that only
    follows a click, as ESMM wants) and the same vocabularies and options: a multi-task store with what
    export.py's vocabulary checks need (census and criteo_cvr stores keep no vocabularies)."""
    reader = StoreReader(source)
    s = reader.schema
    schema = Schema(s.sparse_fields, s.vocab_sizes, s.dense_fields, ("click", "conversion"),
                    sparse_vocabs=s.sparse_vocabs)
    c6 = s.sparse_fields.index("C6")
    with StoreWriter(out, schema, dataset="criteo", chunk_size=2048) as writer:
        for split in SPLITS:
            rows = reader.read_split(split)
            conversion = rows["label"][:, :1] * (rows["sparse"][:, c6:c6 + 1] % 2 == 0)
            writer.add(split, rows["sparse"], rows["dense"], np.concatenate([rows["label"], conversion], axis=1))
        for name in s.vocabs:
            record = dict(reader.vocabulary(name))
            writer.put_vocabulary(name, record.pop("values"), record)
        writer.meta["options"] = reader.meta["options"]
    return out


def make_run(store: Path, name: str, run_dir: Path, extra: tuple[str, ...] = ()) -> Path:
    """A run dir as train.py writes one (config.json, best.pt with its checksum), of ``name`` at small sizes
    with weights spread by noise (at init the embeddings are ~1e-4 and every probability nearly the same, which
    would make the parity check weak)."""
    argv = ["--model", name, "--data", str(store), "--gpu_ids", "", "--num_workers", "0",
            "--model_save_dir", str(run_dir), *extra]
    args, hparams = train.parse_args(argv)
    hparams.update({k: v for k, v in small(name).items() if k in hparams})
    config = train.resolve_config(args, hparams, 1)
    train.prepare_run_dir(config)
    reader = StoreReader(store)
    _, schema = train.Inputs.of(reader.schema, args.drop_fields, args.labels, torch.device("cpu"))
    torch.manual_seed(0)
    model = train.build(config, schema, torch.device("cpu"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    train.save_checkpoint(run_dir / "best.pt", {"model": model.state_dict(), "config": config, "progress": {}})
    return run_dir


def eager_probs(run_dir: Path, rows: dict[str, torch.Tensor]) -> np.ndarray:
    """The eager model's probabilities on store rows, the way predict.py and --eval_only compute them."""
    state = train.load_checkpoint(run_dir / "best.pt")
    store = StoreReader(state["config"]["store"]["path"])
    model, inputs = train.load_trained(state, store, torch.device("cpu"))
    tasks = model.eval().num_tasks
    with torch.inference_mode():
        return train.predict_batch(model, rows, tasks, False, inputs)[:, tasks:2 * tasks].numpy()


def test_rows(store: Path, n: int) -> dict[str, torch.Tensor]:
    """The last ``n`` rows of the test split (not those the export was checked on), batch dtypes."""
    reader = StoreReader(store)
    split = reader.read_split("test")
    return {b.name: torch.from_numpy(split[b.name][-n:].astype(b.batch_dtype)) for b in reader.schema.blocks()
            if b.name in reader.schema.batch_keys()}


def assert_parity(out: Path, run_dir: Path, store: Path) -> None:
    """TorchScript and onnxruntime probabilities equal the eager model's within 1e-5 at batch sizes 1 and 37."""
    manifest = json.loads((out / "manifest.json").read_text())
    names = [i["name"] for i in manifest["inputs"]]
    scripted = torch.jit.load(str(out / "model.pt"))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    fed = {i.name for i in session.get_inputs()}
    for size in BATCH_SIZES:
        rows = test_rows(store, size)
        want = eager_probs(run_dir, rows)
        assert want.shape == (size, len(manifest["tasks"]))
        with torch.inference_mode():
            got_ts = scripted(*(rows[n] for n in names)).numpy()
        got_onnx = session.run(["prob"], {n: rows[n].numpy() for n in names if n in fed})[0]
        np.testing.assert_allclose(got_ts, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_onnx, want, rtol=0, atol=1e-5)
    spread = eager_probs(run_dir, test_rows(store, 200))
    assert spread.std(axis=0).min() > 1e-3, "probabilities nearly constant: the parity check would be weak"


def export_and_check(stores: dict[str, Path], name: str, tmp_path: Path) -> None:
    store = store_for(stores, name)
    run_dir = make_run(store, name, tmp_path / "run")
    result = export.export_run(run_dir, tmp_path / "export")
    assert result["not_exported"] == {}, result["not_exported"]
    assert_parity(tmp_path / "export", run_dir, store)


# ------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", FAST_MODELS)
def test_exports_match_the_eager_model_on_real_rows(name, stores, tmp_path):
    export_and_check(stores, name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in models.model_names() if n not in FAST_MODELS])
def test_every_model_exports_with_parity(name, stores, tmp_path):
    export_and_check(stores, name, tmp_path)
