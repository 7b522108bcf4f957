"""DIN, DIEN, BST and DSIN beyond the generic model tests: fields found from the schema, gradients through
the candidate and the history, padding that never counts, DIEN's loss hook, DSIN's sessions, train.py runs,
and DDP with two gloo processes agreeing with one process on a behaviour store."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import models
import train
from conftest import BEHAVIOUR_SCHEMA, load_rows, make_batch, write_behaviour_store
from dataset.schema import Schema, SequenceField
from dataset.store import StoreWriter
from layers.sequence import auxiliary_loss

SEQUENCE_MODELS = ["DIN", "DIEN", "BST", "DSIN"]
SMALL = {"embed_dim": 4, "hidden_units": (16,)}


def build(name: str, schema: Schema, **hparams) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model(name, schema, **{**SMALL, **hparams})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_behaviour_store(tmp_path_factory.mktemp("behaviour") / "store")


def behaviour_batch(schema: Schema, size: int, seed: int) -> dict[str, torch.Tensor]:
    """make_batch with one length per row for all sequence fields, as a behaviour store has."""
    batch = make_batch(schema, size, seed)
    batch["seq_len"][:] = batch["seq_len"][:, :1]
    return batch


def test_candidates_and_histories_come_from_the_schema(seq_schema):
    for name in SEQUENCE_MODELS:
        model = build(name, seq_schema)
        assert model.groups == [(["item", "cate"], ["hist_item", "hist_cate"])]  # item ⊕ category
        assert model.behaviour_dims == [8] and model.pooled == ["genres"]  # genres goes to the DNN, pooled
    dsin = build("DSIN", BEHAVIOUR_SCHEMA)
    assert dsin.session_fields == ["hist_session"] and dsin.pooled == []  # the session ids are consumed
    two = Schema(("item", "shop"), (30, 7), sequence_fields=(
        SequenceField("clicked", "item", 30, 5), SequenceField("bought", "item", 30, 3),
        SequenceField("shops", "shop", 7, 5)), sparse_vocabs=("item", "shop"))
    din = build("DIN", two)  # two behaviour sequences: clicks (item ⊕ shop) and purchases
    assert din.groups == [(["item", "shop"], ["clicked", "shops"]), (["item"], ["bought"])]
    assert din(behaviour_batch(two, 6, 0)).shape == (6, 1)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_gradient_reaches_the_item_table_through_the_candidate_and_the_history(name, seq_schema):
    # DSIN: sessions of 2, so that its softmax over sessions has more than one to weigh
    model = build(name, seq_schema, **({"session_len": 2} if name == "DSIN" else {}))
    dnn = model.dnn.net[0].weight  # the candidate also feeds the DNN directly: cut that path
    with torch.no_grad():
        dnn[:, 4:12] = 0  # columns of the sparse fields item and cate (fields 1 and 2, D = 4)
    batch = behaviour_batch(seq_schema, 16, seed=2)
    batch["sparse"][:, 1] = 2 + torch.arange(16) % 5  # candidate items 2..6
    mask = model.embedding.seq_mask(batch)[:, :5]
    batch["seq"][:, :5] = torch.where(mask, 10 + batch["seq"][:, :5] % 20, 0)  # history items 10..29
    model(batch).sum().backward()
    grad = model.embedding.table.weight.grad.abs().sum(dim=1)
    item_start = 9  # after the user vocabulary
    assert (grad[item_start + 2: item_start + 7] > 0).all(), "no gradient through the candidate's attention"
    history = (batch["seq"][:, :5][mask] + item_start).unique()
    assert (grad[history] > 0).all(), "no gradient through the history"


PADDING_CASES = [("DIN", {}), ("DIN", {"attention_softmax": True}), ("DIEN", {}),
                 ("DIEN", {"gru_type": "AGRU", "attention": "din"}), ("DIEN", {"gru_type": "AIGRU"}), ("BST", {}),
                 ("BST", {"sequence_pooling": "concat"}), ("DSIN", {}),
                 ("DSIN", {"attention": "bilinear", "bias_encoding": False, "session_field": "none"})]


@pytest.mark.parametrize("name, hparams", PADDING_CASES)
def test_padding_never_counts(name, hparams):
    """Whatever ids the padded positions hold, the outputs are bit for bit the same."""
    model = build(name, BEHAVIOUR_SCHEMA, **hparams).eval()
    batch = behaviour_batch(BEHAVIOUR_SCHEMA, 32, seed=3)
    mask = model.embedding.seq_mask(batch)
    junk = {**batch, "seq": torch.where(mask, batch["seq"], torch.randint(0, 12, batch["seq"].shape))}
    with torch.no_grad():
        out = model(batch)
        assert torch.equal(out, model(junk)) and torch.isfinite(out).all()


def test_dien_loss_is_the_task_loss_plus_the_weighted_auxiliary_loss(store):
    model = build("DIEN", BEHAVIOUR_SCHEMA, aux_loss_weight=0.3)
    batch = {k: v[:64] for k, v in load_rows(store).items()}
    logits = model(batch)
    _, [(_, history, mask)] = model.embed(batch)
    aux = auxiliary_loss(model.extractors[0](history, mask), history, mask)
    want = F.binary_cross_entropy_with_logits(logits, batch["label"]) + 0.3 * aux
    torch.testing.assert_close(model.loss(batch, logits), want)
    assert aux > 0
    with pytest.raises(RuntimeError, match="call logits = model"):
        model.loss(batch, logits)  # the states of that forward are used up
    model.aux_loss_weight = 0.0
    torch.testing.assert_close(model.loss(batch, model(batch)), F.binary_cross_entropy_with_logits(logits, batch["label"]))


def test_dsin_sessions_come_from_the_session_field_else_windows(store):
    batch = {k: v[:64] for k, v in load_rows(store).items()}
    model = build("DSIN", BEHAVIOUR_SCHEMA).eval()
    one_session = {**batch, "seq": batch["seq"].clone()}
    one_session["seq"][:, 20:] = 2 * (one_session["seq"][:, 20:] > 0)  # every behaviour in the latest session
    with torch.no_grad():
        assert not torch.allclose(model(batch), model(one_session))  # the session ids are used
    no_ids = Schema(BEHAVIOUR_SCHEMA.sparse_fields, BEHAVIOUR_SCHEMA.vocab_sizes,
                    sparse_vocabs=BEHAVIOUR_SCHEMA.sparse_vocabs, sequence_fields=BEHAVIOUR_SCHEMA.sequence_fields[:2])
    assert build("DSIN", no_ids).session_fields == [None]  # Amazon Beauty: windows of session_len
    windows = build("DSIN", BEHAVIOUR_SCHEMA, session_field="none")
    assert windows.session_fields == [None] and windows.pooled == ["hist_session"]  # then an ordinary field


# -- train.py ----------------------------------------------------------------------------------------------


FLAGS = ["--batch_size", "64", "--num_workers", "0", "--embed_size", "4", "--hidden_units", "16", "--epochs", "1",
         "--seed", "3", "--lr", "0.01"]


@pytest.mark.parametrize("name", ["DIEN", "DSIN"])
def test_train_py_trains_and_scores_a_behaviour_store(name, store, tmp_path):
    run_dir = tmp_path / name
    assert train.main(["--model", name, *FLAGS, "--data", str(store), "--model_save_dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_rows"] == 300 and 0.5 < metrics["test"]["auc"] <= 1.0


def test_train_py_on_a_store_without_histories_names_the_stores_that_have_them(tmp_path, capsys):
    plain = tmp_path / "plain"
    rng = np.random.default_rng(0)
    with StoreWriter(plain, Schema(("a", "b"), (5, 5)), dataset="plain") as writer:
        for split in ("train", "valid", "test"):
            writer.add(split, rng.integers(0, 5, (40, 2)).astype(np.int32), np.zeros((40, 0), np.float32),
                       (rng.random((40, 1)) < 0.5).astype(np.float32))
    code = train.main(["--model", "DIN", *FLAGS, "--data", str(plain), "--model_save_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "DIN attends over behaviour histories" in err and "preprocess.py amazon" in err


# -- DDP ----------------------------------------------------------------------------------------------------

DDP_STEPS, DDP_B = 3, 16
DDP_HPARAMS = {  # no Dice or batch norm (batch statistics differ between one batch and two halves), no dropout
    "DIN": {"activation": "prelu", "attention_activation": "prelu"},
    "DIEN": {"activation": "prelu", "aux_loss_weight": 0.5},
    "BST": {"dropout": 0.0, "transformer_dropout": 0.0, "num_heads": 2},
    "DSIN": {"num_heads": 2, "max_sessions": 3, "session_len": 4, "attention_activation": "prelu"},
}


def ddp_setup(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    """SGD: DDP's promise is equal gradients. Adam divides each gradient by its own running size, so where a
    gradient is ~1e-9 (DSIN's attention over the Bi-LSTM states at init) float rounding becomes a visible step."""
    model = build(name, BEHAVIOUR_SCHEMA, **DDP_HPARAMS[name])
    args = train.base_parser(False).parse_args(["--embed_l2", "0.01", "--optimizer", "sgd", "--lr", "0.5"])
    return model, train.make_optimizer(model, args), train.make_loss_fn(model, args)


def ddp_batch(rows: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    return {k: v[step * 2 * DDP_B:(step + 1) * 2 * DDP_B] for k, v in rows.items()}


def ddp_worker(rank: int, port: int, store: str, out: str) -> None:
    """Rank ``rank`` of 2 gloo processes: every model, DDP steps on rows [rank*b:(rank+1)*b] of each 2b batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = train.init_process(rank, 2, torch.device("cpu"))
    rows, results = load_rows(Path(store)), {}
    for name in DDP_HPARAMS:
        model, optimizer, loss_fn = ddp_setup(name)
        ddp = torch.nn.parallel.DistributedDataParallel(model, static_graph=True)
        losses = []
        for s in range(DDP_STEPS):
            loss = train.train_step(ddp, {k: v[rank * DDP_B:(rank + 1) * DDP_B] for k, v in ddp_batch(rows, s).items()},
                                    optimizer, loss_fn, ctx)  # this rank's loss: average it over the ranks
            dist.all_reduce(loss)
            losses.append(float(loss) / 2)
        results[name] = {"state": model.state_dict(), "losses": losses}
        del ddp  # its reducer holds the group
    if rank == 0:
        torch.save(results, out)
    train.leave_group()


def test_two_gloo_processes_match_one_process_on_a_behaviour_store(store, tmp_path):
    """DIN, BST and DSIN: one process on the double batch. DIEN: one process on the two halves, loss averaged,
    since its auxiliary loss draws negatives from each rank's own batch (as DDP trains it)."""
    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker, args=(train.free_port(), str(store), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    rows = load_rows(store)
    for name in DDP_HPARAMS:
        model, optimizer, loss_fn = ddp_setup(name)
        losses = []
        for step in range(DDP_STEPS):
            full = ddp_batch(rows, step)
            if name != "DIEN":
                losses.append(float(train.train_step(model, full, optimizer, loss_fn, train.Ctx())))
                continue
            model.train()
            halves = [{k: v[i * DDP_B:(i + 1) * DDP_B] for k, v in full.items()} for i in range(2)]
            loss = sum(loss_fn(h, model(h)) for h in halves) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert ddp[name]["losses"] == pytest.approx(losses, rel=1e-5), name
        for k, v in model.state_dict().items():
            torch.testing.assert_close(ddp[name]["state"][k], v, rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
