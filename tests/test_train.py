"""train.py: learning, TensorBoard output, DDP equivalence, exact resume after SIGKILL, the NaN guard,
CLI errors, multi-process CPU runs and multi-task training.

Stores are small (a few thousand rows) and carry a planted signal:
``label ~ Bernoulli(sigmoid(sum_f w_f[x_f] - 1))`` with random per-id weights ``w_f``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import log_loss, roc_auc_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import models
import train
from models.base import task_loss
from conftest import ROOT, load_rows, make_batch, write_behaviour_store
from dataset.loader import make_loader
from dataset.schema import Schema
from dataset.store import StoreReader, StoreWriter, encode_chunk

SMALL = ["--batch_size", "64", "--num_workers", "0", "--embed_size", "8", "--log_every", "5", "--seed", "7"]
DEEPFM = ["--model", "DeepFM", "--hidden_units", "32", "32", *SMALL]


def write_store(path: Path, n_rows: int = 2000, labels: tuple[str, ...] = ("click",), seed: int = 0,
                chunk_size: int = 128) -> Path:
    """A store of ``n_rows`` rows (80/10/10 train/valid/test): 4 sparse fields of 20 ids, 2 dense fields,
    one planted-signal label column per name in ``labels``."""
    rng = np.random.default_rng(seed)
    fields, vocab = 4, 20
    sparse = rng.integers(0, vocab, (n_rows, fields)).astype(np.int32)
    dense = rng.random((n_rows, 2)).astype(np.float32)
    columns = []
    for _ in labels:
        weights = rng.normal(0.0, 1.5, (fields, vocab))
        logit = weights[np.arange(fields), sparse].sum(axis=1) - 1.0
        columns.append(rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit)))
    label = np.stack(columns, axis=1).astype(np.float32)
    schema = Schema([f"C{i}" for i in range(fields)], [vocab] * fields, ("I0", "I1"), labels)
    a, b = int(0.8 * n_rows), int(0.9 * n_rows)
    with StoreWriter(path, schema, dataset="planted", chunk_size=chunk_size) as writer:
        for split, rows in (("train", slice(0, a)), ("valid", slice(a, b)), ("test", slice(b, n_rows))):
            writer.add(split, sparse[rows], dense[rows], label[rows])
    return path


def corrupt_chunk(path: Path, split: str, index: int) -> Path:
    """``path``'s store with 64 bytes in the middle of chunk ``split/index`` zeroed (found by its exact bytes)."""
    reader = StoreReader(path)
    data = bytearray((path / "data.mdb").read_bytes())
    value = bytes(encode_chunk(reader.read_chunk(split, index), reader.schema))
    at = data.find(value) + len(value) // 2
    data[at:at + 64] = bytes(64)
    (path / "data.mdb").write_bytes(bytes(data))
    return path


def run_main(argv: list[str], capsys: pytest.CaptureFixture | None = None) -> tuple[int, str]:
    """train.main in this process -> (exit code, stderr)."""
    code = train.main([str(a) for a in argv])
    return code, capsys.readouterr().err if capsys else ""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("store") / "planted")


@pytest.fixture(scope="module")
def deepfm_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2-epoch single-process DeepFM run (shared by several tests)."""
    run_dir = tmp_path_factory.mktemp("runs") / "deepfm"
    assert train.main([*DEEPFM, "--data", str(store), "--epochs", "2", "--model_save_dir", str(run_dir)]) == 0
    return run_dir


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# -- learning and outputs ------------------------------------------------------------------------------


def test_deepfm_beats_the_untrained_model_on_valid_auc(store: Path, deepfm_run: Path):
    config = json.loads((deepfm_run / "config.json").read_text())
    torch.manual_seed(7)
    untrained = models.build_model("DeepFM", StoreReader(store).schema, **config["model_hparams"])
    loader = make_loader(store, "valid", 64, train=False, num_workers=0)
    before, rows = train.evaluate(untrained, loader, train.Ctx())
    after = read_metrics(deepfm_run)
    assert rows == StoreReader(store).num_rows("valid")
    assert after["valid"]["auc"] > before["auc"] + 0.15
    assert after["valid"]["auc"] > 0.75 and after["test"]["auc"] > 0.75
    assert after["test_rows"] == StoreReader(store).num_rows("test")
    assert after["stop_reason"] == "epochs" and after["epochs"] == 2


def test_run_dir_holds_config_checkpoints_and_tensorboard_scalars(store: Path, deepfm_run: Path):
    config = json.loads((deepfm_run / "config.json").read_text())
    assert config["model"] == "DeepFM" and config["model_hparams"]["hidden_units"] == [32, 32]
    assert config["model_hparams"]["embed_dim"] == 8
    assert config["store"]["path"] == str(store) and config["store"]["dataset"] == "planted"
    assert config["train"]["batch_size"] == 64 and config["world_size"] == 1
    metrics = read_metrics(deepfm_run)
    steps = metrics["global_step"]
    assert steps == 2 * -(-StoreReader(store).num_rows("train") // 64)

    events = EventAccumulator(str(deepfm_run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s", "valid/auc", "valid/logloss", "test/auc",
            "test/logloss", "hparam/test_auc"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5, steps + 1, 5))
    assert len(events.Scalars("valid/auc")) == 2  # once per epoch
    assert events.Scalars("test/auc")[-1].value == pytest.approx(metrics["test"]["auc"], rel=1e-6)
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-3)

    last = train.load_checkpoint(deepfm_run / "last.pt")
    assert {"model", "optimizer", "scheduler", "progress", "rng", "config"} <= set(last)
    assert last["progress"]["global_step"] == steps
    assert not list(deepfm_run.glob(".*.tmp-*"))  # atomic writes leave no temp files


def test_eval_only_scores_best_pt_like_the_run_did(deepfm_run: Path, capsys: pytest.CaptureFixture):
    assert train.main(["--eval_only", str(deepfm_run), "--num_workers", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    test = read_metrics(deepfm_run)["test"]
    assert printed["auc"] == pytest.approx(test["auc"], abs=1e-12)
    assert printed["logloss"] == pytest.approx(test["logloss"], abs=1e-12)
    assert printed["rows"] == read_metrics(deepfm_run)["test_rows"]


# -- building blocks ------------------------------------------------------------------------------------


def test_task_loss_and_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 3, generator=g), (torch.rand(50, 3, generator=g) < 0.4).float()
    labels[:, 2] = torch.randn(50, generator=g) * 3  # a regression task
    weights = torch.tensor([1.0, 0.25, 0.5])
    p = torch.sigmoid(logits)
    manual = sum(w * -(y * torch.log(q) + (1 - y) * torch.log(1 - q)).mean()
                 for w, q, y in zip(weights[:2], p.T[:2], labels.T[:2]))
    manual = manual + 0.5 * ((logits[:, 2] - labels[:, 2]) ** 2).mean()
    regression = torch.tensor([False, False, True])
    assert task_loss(logits, labels, regression, weights).item() == pytest.approx(manual.item(), rel=1e-5)
    labels = labels[:, :2]

    y, q = labels.double().numpy(), p.double().numpy()
    m = train.compute_metrics(y, q, ("click", "buy"))
    assert m["click/auc"] == pytest.approx(roc_auc_score(y[:, 0], q[:, 0]), abs=1e-12)
    assert m["buy/logloss"] == pytest.approx(log_loss(y[:, 1], q[:, 1]), rel=1e-12)
    assert m["auc"] == pytest.approx((m["click/auc"] + m["buy/auc"]) / 2)
    assert set(train.compute_metrics(y[:, :1], q[:, :1], ("click",))) == {"auc", "logloss"}


def test_weight_decay_skips_biases_norms_and_embedding_tables(schema: Schema):
    model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,), batch_norm=True)
    decay, plain = train.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == ["dnn.net.0.weight", "dnn.net.3.weight"]
    assert len(decay["params"]) + len(plain["params"]) == len(names)


@pytest.mark.parametrize("name", sorted(train.OPTIMIZERS))
def test_optimizers_run_fused_or_foreach_on_cpu_like_the_for_loop_and_keep_it_when_loading_a_state(name: str,
                                                                                                  schema: Schema):
    args = train.base_parser(False).parse_args(["--optimizer", name, "--lr", "0.01", "--weight_decay", "0.01"])

    def trained(make: Callable[[torch.nn.Module], torch.optim.Optimizer]):
        torch.manual_seed(0)
        model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,))
        optimizer, loss_fn = make(model), train.make_loss_fn(model, args)
        for step in range(4):
            train.train_step(model, make_batch(schema, 16, seed=step), optimizer, loss_fn, train.Ctx())
        return model, optimizer

    model, optimizer = trained(lambda m: train.make_optimizer(m, args))
    loop_model, loop_optimizer = trained(lambda m: train.OPTIMIZERS[name](train.param_groups(m, 0.01), lr=0.01,
                                                                          foreach=False))
    impl = "fused" if name in train.FUSED["cpu"] else "foreach"
    assert optimizer.param_groups[0][impl] is True
    assert not optimizer.param_groups[0].get({"fused": "foreach", "foreach": "fused"}[impl])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, loop_model.state_dict()[k], rtol=1e-5, atol=1e-7, msg=k)
    train.load_optimizer_state(optimizer, loop_optimizer.state_dict())  # e.g. a checkpoint of another device
    assert optimizer.param_groups[0][impl] is True and not loop_optimizer.param_groups[0].get("fused")
    assert optimizer.state_dict()["state"].keys() == loop_optimizer.state_dict()["state"].keys()


def test_model_flags_come_from_the_constructor_signature():
    args, hparams = train.parse_args(["--model", "dcnv2", "--hidden_units", "8", "4", "--batch_norm",
                                      "--embed_size", "12", "--dropout", "0.5"])
    assert args.model == "DCNv2" and hparams["hidden_units"] == (8, 4) and hparams["batch_norm"] is True
    assert hparams["embed_dim"] == 12 and hparams["dropout"] == 0.5
    assert hparams["num_cross_layers"] == 3  # the constructor's default
    _, hparams = train.parse_args(["--model", "MMoE", "--gate_units", "--no-batch_norm"])
    assert hparams["gate_units"] == () and hparams["batch_norm"] is False
    with pytest.raises(SystemExit):  # DeepFM has no cross layers
        train.parse_args(["--model", "DeepFM", "--num_cross_layers", "2"])


def test_a_nan_loss_is_kept_on_the_device_and_raised_naming_its_step_at_the_next_check(schema: Schema):
    """train_step returns the loss as a device tensor and steps whatever it is (NaN weights follow); the loss
    window records the first NaN/inf step on the device, and the boundary check raises naming that step."""
    model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss_fn = train.make_loss_fn(model, train.base_parser(False).parse_args([]))
    good, bad = make_batch(schema, 16, seed=1), make_batch(schema, 16, seed=1)
    bad["dense"][3, 0] = float("nan")
    window, losses = train.LossWindow(torch.device("cpu")), []
    for step, batch in ((11, good), (12, bad), (13, good)):
        loss = train.train_step(model, batch, optimizer, loss_fn, train.Ctx())
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
        window.add(loss, step, rows=16)
        losses.append(loss)
    assert torch.isfinite(losses[0]) and losses[1].isnan() and losses[2].isnan()  # step 12 poisoned the weights
    assert isinstance(window.first_bad, torch.Tensor) and int(window.first_bad) == 12
    report = window.read(train.Ctx())
    assert (report.bad_step, report.steps, report.rows) == (12, 3, 48) and math.isnan(report.bad_loss)
    with pytest.raises(train.NonFiniteLossError, match=r"the training loss is nan at step 12 \(found at step 13; "
                                                       r"no step from 12 on was saved\)"):
        train.check_finite(report, 13)
    train.check_finite(train.LossWindow(torch.device("cpu")).read(train.Ctx()), 13)  # nothing recorded: passes


def test_the_window_loss_is_the_mean_of_its_step_losses():
    window = train.LossWindow(torch.device("cpu"))
    losses = torch.rand(7, generator=torch.Generator().manual_seed(0)) * 3
    for step, loss in enumerate(losses, start=1):
        window.add(loss, step, rows=10 + step)
    report = window.read(train.Ctx(), since_save=42.0)
    assert report.loss == math.fsum(losses.tolist()) / 7 and (report.steps, report.rows) == (7, 7 * 10 + 28)
    assert report.bad_step == 0 and report.since_save == 42.0
    window.reset()
    assert window.read(train.Ctx()).steps == 0 and math.isnan(window.read(train.Ctx()).loss)


def test_the_train_loss_curve_is_the_mean_of_the_eager_step_losses(store: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    """Every train/loss point (every 5 steps, evaluations every 3 steps inside the windows) equals the mean of
    the step losses since the previous point, read eagerly one by one."""
    step_losses, train_step = [], train.train_step

    def eager_step(*args, **kwargs):
        loss = train_step(*args, **kwargs)
        step_losses.append(float(loss))
        return loss

    monkeypatch.setattr(train, "train_step", eager_step)
    run_dir = tmp_path / "run"
    assert train.main([*DEEPFM, "--data", str(store), "--epochs", "1", "--eval_every", "3",
                       "--model_save_dir", str(run_dir)]) == 0
    events = EventAccumulator(str(run_dir))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in points] == list(range(5, len(step_losses) + 1, 5))
    for step, value in points:
        window = step_losses[step - 5:step]
        assert value == np.float32(math.fsum(window) / len(window)), step  # TensorBoard keeps float32


def test_evaluation_batches_default_to_four_training_batches_and_do_not_change_the_metrics(store: Path):
    def sizes(batch: int, given: int | None = None, device: str = "cuda") -> int:
        return train.eval_batch_size(argparse.Namespace(batch_size=batch, eval_batch_size=given), torch.device(device))
    assert (sizes(64), sizes(20_000), sizes(100_000), sizes(64, 7)) == (256, 65536, 100_000, 7)
    # on a CPU the default stops at 4096 rows (the caches), never below --batch_size
    assert [sizes(b, device="cpu") for b in (64, 1024, 4096, 20_000)] == [256, 4096, 4096, 20_000]
    assert sizes(4096, 50_000, device="cpu") == 50_000
    with pytest.raises(train.UsageError, match="--eval_batch_size must be >= 1, got 0"):
        sizes(64, 0)
    torch.manual_seed(7)
    model = models.build_model("DeepFM", StoreReader(store).schema, embed_dim=8, hidden_units=(32,))
    scored = [train.evaluate(model, make_loader(store, "valid", b, train=False, num_workers=0), train.Ctx())
              for b in (7, 64, 10_000)]
    for metrics, rows in scored[1:]:
        assert rows == scored[0][1] == StoreReader(store).num_rows("valid")
        assert metrics == pytest.approx(scored[0][0], rel=1e-6)  # float32 rounding differs with the batch shape
    assert all(p.grad is None for p in model.parameters())


def test_predict_returns_every_row_with_its_user_once_whatever_the_batch_size(tmp_path: Path):
    store = write_behaviour_store(tmp_path / "behaviour", n_rows=600)
    schema = StoreReader(store).schema
    inputs, _ = train.Inputs.of(schema, (), None, torch.device("cpu"))
    model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,))
    expected = load_rows(store, "test")
    for batch_size in (16, 1000):
        loader = make_loader(store, "test", batch_size, train=False, num_workers=0)
        labels, preds, users = train.predict(model, loader, train.Ctx(), inputs=inputs)
        assert np.array_equal(users, expected["sparse"][:, inputs.user_column].numpy())
        assert np.array_equal(labels, expected["label"].double().numpy())
        assert preds.shape == labels.shape and ((preds > 0) & (preds < 1)).all()


# -- DDP --------------------------------------------------------------------------------------------------

DDP_STEPS, DDP_B = 3, 8


def ddp_model(schema: Schema) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(16, 16))  # no dropout, no BN


def ddp_worker(rank: int, port: int, schema: Schema, out: str) -> None:
    """Rank ``rank`` of 2 gloo processes: DDP steps on rows [rank*b:(rank+1)*b] of each 2b batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = train.init_process(rank, 2, torch.device("cpu"))
    model = ddp_model(schema)
    ddp = torch.nn.parallel.DistributedDataParallel(model, static_graph=True)
    args = train.base_parser(False).parse_args(["--embed_l2", "0.01", "--lr", "0.01"])
    optimizer, loss_fn = train.make_optimizer(model, args), train.make_loss_fn(model, args)
    losses = []
    for step in range(DDP_STEPS):
        full = make_batch(schema, 2 * DDP_B, seed=step)
        batch = {k: v[rank * DDP_B:(rank + 1) * DDP_B] for k, v in full.items()}
        loss = train.train_step(ddp, batch, optimizer, loss_fn, ctx)  # this rank's
        dist.all_reduce(loss)
        losses.append(float(loss) / 2)
    rows = torch.arange(3 + 2 * rank, dtype=torch.float32).unsqueeze(1) + 100 * rank  # 3 rows, then 5 rows
    gathered = train.gather_rows(rows, ctx)
    if rank == 0:
        torch.save({"state": model.state_dict(), "losses": losses, "gathered": gathered}, out)
    del ddp  # its reducer holds the group: release it, and leave together, before the group goes away
    train.leave_group()


@pytest.mark.parametrize("which", ["schema", "seq_schema"])  # plain fields; sequences, shared vocabularies
def test_two_gloo_processes_match_one_process_with_the_double_batch(which: str, request: pytest.FixtureRequest,
                                                                    tmp_path: Path):
    schema = request.getfixturevalue(which)
    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker, args=(train.free_port(), schema, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    model = ddp_model(schema)
    args = train.base_parser(False).parse_args(["--embed_l2", "0.01", "--lr", "0.01"])
    optimizer, loss_fn = train.make_optimizer(model, args), train.make_loss_fn(model, args)
    losses = [float(train.train_step(model, make_batch(schema, 2 * DDP_B, seed=s), optimizer, loss_fn, train.Ctx()))
              for s in range(DDP_STEPS)]
    assert ddp["losses"] == pytest.approx(losses, rel=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    expected = torch.tensor([0, 1, 2, 100, 101, 102, 103, 104], dtype=torch.float32).unsqueeze(1)
    assert torch.equal(ddp["gathered"], expected)


def window_worker(rank: int, port: int, out: str) -> None:
    """Rank ``rank`` of 2 gloo processes: a loss window of steps 1-2 (finite), then steps 3-6 where rank 1's
    loss is NaN at step 3 and rank 0's inf at step 5."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = train.init_process(rank, 2, torch.device("cpu"))
    window, reports = train.LossWindow(ctx.device), []
    for step in range(1, 7):
        loss = {(1, 3): math.nan, (0, 5): math.inf}.get((rank, step), step + 10.0 * rank)
        window.add(torch.tensor(loss), step, rows=8 + rank)
        if step in (2, 6):
            reports.append(window.read(ctx, since_save=100.0 + rank))
            window.reset()
    torch.save([dataclasses.asdict(r) for r in reports], f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_ranks_read_one_window_and_stop_on_the_first_non_finite_step_of_either(tmp_path: Path):
    out = tmp_path / "window"
    mp.spawn(window_worker, args=(train.free_port(), str(out)), nprocs=2, join=True)
    for rank in range(2):
        finite, bad = torch.load(f"{out}.{rank}", weights_only=True)
        assert finite == {"loss": (1 + 2 + 11 + 12) / 4, "steps": 2, "rows": 2 * 8 + 2 * 9, "bad_step": 0,
                          "bad_loss": 0.0, "since_save": 100.0}  # rank 0's clock decides a checkpoint
        assert (bad["bad_step"], bad["steps"], bad["rows"]) == (3, 4, 4 * 8 + 4 * 9) and math.isnan(bad["bad_loss"])


def test_two_cpu_processes_score_every_test_row(store: Path, deepfm_run: Path, tmp_path: Path):
    run_dir = tmp_path / "cpu2"
    code = train.main([*DEEPFM, "--data", str(store), "--epochs", "1", "--cpu_procs", "2",
                       "--model_save_dir", str(run_dir)])
    assert code == 0
    metrics = read_metrics(run_dir)
    assert metrics["test_rows"] == read_metrics(deepfm_run)["test_rows"] == StoreReader(store).num_rows("test")
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert 0.5 < metrics["test"]["auc"] <= 1.0


# -- resume and failures -----------------------------------------------------------------------------------


def test_sigkilled_run_resumes_to_the_same_final_metrics(store: Path, tmp_path: Path):
    flags = [*DEEPFM, "--data", str(store), "--epochs", "3", "--batch_size", "32", "--dropout", "0.2",
             "--ckpt_every", "5", "--eval_every", "30"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train.main([*flags, "--model_save_dir", str(straight)]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *flags, "--model_save_dir", str(killed)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    progress = train.load_checkpoint(killed / "last.pt")["progress"]
    assert progress["step_in_epoch"] > 0 and not (killed / "metrics.json").exists()

    assert train.main(["--resume", str(killed)]) == 0
    assert read_metrics(killed) == read_metrics(straight)
    assert train_curve(killed) == train_curve(straight)  # the resumed run's train/loss points are the same


def train_curve(run_dir: Path) -> list[tuple[int, float]]:
    """The train/loss points of a run dir by step (of a resumed run: those its killed predecessor wrote after
    last.pt's step are purged). By step: the event files of a run resumed within the second it was killed
    sort by pid, not by time."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return sorted((e.step, e.value) for e in events.Scalars("train/loss"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(store: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture):
    run_dir = tmp_path / "nan"
    code, err = run_main([*DEEPFM, "--data", store, "--lr", "1e30", "--ckpt_every", "1",
                          "--model_save_dir", run_dir], capsys)
    assert code == 1
    assert "loss is nan at step 2" in err or "loss is inf at step 2" in err
    last = train.load_checkpoint(run_dir / "last.pt")
    assert last["progress"]["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())


@pytest.mark.parametrize("argv, message", [
    (["--model", "NoSuchNet"], "unknown model 'NoSuchNet'; valid models: "),
    (["--gpu_ids", "7"], "--gpu_ids 7: GPU 7 does not exist"),
    (["--gpu_ids", "zero"], "expected comma-separated GPU indices"),
    (["--data", "{tmp}/missing"], "preprocess.py"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--eval_batch_size", "-4"], "--eval_batch_size must be >= 1, got -4"),
    (["--model", "MMoE", "--task_weights", "1", "2", "3"], "--task_weights has 3 values"),
    (["--resume", "{tmp}/nowhere"], "no checkpoint at"),
])
def test_cli_errors_are_one_clear_line(argv: list[str], message: str, store: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, err = run_main(["--data", store, "--num_workers", "0", "--model_save_dir", tmp_path / "run", *argv],
                         capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0]


def test_resume_refuses_another_model_or_store(deepfm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    other = write_store(tmp_path / "two_labels", n_rows=400, labels=("click", "buy"))
    for argv, message in ((["--hidden_units", "8"], "trained with --hidden_units (32, 32)"),
                          (["--model", "FM"], "trained with --model DeepFM"),
                          (["--data", str(other)], "does not match the checkpoint's store")):
        code, err = run_main(["--resume", deepfm_run, *argv], capsys)
        assert code == 2 and message in err, err
    code, err = run_main([*DEEPFM, "--data", str(other), "--model_save_dir", deepfm_run], capsys)
    assert code == 2 and f"--resume {deepfm_run}" in err


# -- torch.compile ------------------------------------------------------------------------------------------


@pytest.mark.slow  # compiling DeepFM's training and evaluation graphs takes a minute or more on 2 CPU cores
def test_compiled_deepfm_trains_and_scores_like_the_eager_one(store: Path, tmp_path: Path):
    """One epoch of 1600 rows in batches of 60: 26 full batches and a last one of 40, which on a CPU reuses the
    training graph (dynamic shapes): two graphs in all, training and evaluation."""
    from torch._dynamo.utils import counters
    flags = [*DEEPFM, "--data", str(store), "--epochs", "1", "--batch_size", "60", "--log_every", "1",
             "--dropout", "0"]
    torch._dynamo.reset()
    try:
        for name, extra in (("eager", []), ("compiled", ["--compile"])):
            counters.clear()
            assert train.main([*flags, *extra, "--model_save_dir", str(tmp_path / name)]) == 0
            assert counters["stats"]["unique_graphs"] == (2 if name == "compiled" else 0)  # Dynamo's graphs
    finally:
        torch._dynamo.reset()
    eager, compiled = train_curve(tmp_path / "eager"), train_curve(tmp_path / "compiled")
    assert [s for s, _ in compiled] == [s for s, _ in eager] == list(range(1, 28))
    assert [v for _, v in compiled] == pytest.approx([v for _, v in eager], rel=1e-5)
    for split in ("valid", "test"):
        assert read_metrics(tmp_path / "compiled")[split] == pytest.approx(read_metrics(tmp_path / "eager")[split],
                                                                          rel=1e-5)


def test_compile_without_a_working_cpp_compiler_is_one_line_before_the_run_starts(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from torch._inductor import config as inductor_config
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    code, err = run_main([*DEEPFM, "--data", store, "--compile", "--model_save_dir", tmp_path / "run"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"train.py: error: --compile: torch.compile cannot compile for CPU here: it builds C++ for "
                        f"CPU, and no C++ compiler runs here (tried {tmp_path / 'no-such-g++'}): install g++ or "
                        f"point $CXX at one; drop --compile to train eagerly")
    assert not (tmp_path / "run").exists()


# -- CUDA (skipped without a GPU; ../shared/gpu/check.sh runs the tests marked cuda) ---------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def host_syncs(fn: Callable[[], object]) -> list[str]:
    """The synchronizing CUDA calls (the host waits for the device) that ``fn()`` makes, by torch's sync debug
    mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # the first use of the mode also warns that it is a prototype: a note, not a synchronizing call
    return [str(w.message) for w in caught
            if "synchroniz" in str(w.message) and "debug mode is a prototype" not in str(w.message)]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", sorted(train.OPTIMIZERS))
def test_cuda_training_steps_never_wait_for_the_device(name: str, schema: Schema):
    device = torch.device("cuda", 0)
    args = train.base_parser(False).parse_args(["--optimizer", name, "--embed_l2", "0.01", "--weight_decay", "0.01"])
    batches = [train.to_device(make_batch(schema, 64, seed=s), device) for s in range(8)]

    def trained(make: Callable[[torch.nn.Module], torch.optim.Optimizer]):
        torch.manual_seed(0)
        model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,)).to(device)
        optimizer, loss_fn, window = make(model), train.make_loss_fn(model, args), train.LossWindow(device)

        def steps(first: int, last: int) -> None:
            for step in range(first, last + 1):
                loss = train.train_step(model, batches[step - 1], optimizer, loss_fn, train.Ctx(device=device))
                window.add(loss, step, rows=64)
        steps(1, 2)  # the first step creates the optimizer's state
        return model, optimizer, window, host_syncs(lambda: steps(3, 8))

    model, optimizer, window, syncs = trained(lambda m: train.make_optimizer(m, args))
    assert syncs == []
    assert bool(optimizer.param_groups[0].get("fused")) == (name in train.FUSED["cuda"])  # None where unset
    report = window.read(train.Ctx(device=device))
    assert report.steps == 8 and report.bad_step == 0 and math.isfinite(report.loss)
    twin, *_ = trained(lambda m: train.OPTIMIZERS[name](train.param_groups(m, 0.01), lr=1e-3, foreach=True))
    for k, v in model.state_dict().items():  # fused: the same update as foreach, up to float rounding
        torch.testing.assert_close(v, twin.state_dict()[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.cuda
@needs_cuda
def test_cuda_evaluation_copies_to_the_host_once_per_split(store: Path):
    device = torch.device("cuda", 0)
    model = models.build_model("DeepFM", StoreReader(store).schema, embed_dim=8, hidden_units=(32,)).to(device)
    loader = make_loader(store, "valid", 16, train=False, num_workers=0)  # 200 rows: 13 batches
    assert len(host_syncs(lambda: train.predict(model, loader, train.Ctx(device=device)))) == 1


@pytest.mark.cuda
@needs_cuda
def test_cuda_runs_stop_on_nan_resume_a_cpu_run_and_compile_like_eager(store: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    gpu = ["--data", store, "--gpu_ids", "0"]
    code, err = run_main([*DEEPFM, *gpu, "--lr", "1e30", "--ckpt_every", "1", "--model_save_dir", tmp_path / "nan"],
                         capsys)
    assert code == 1 and ("loss is nan at step 2" in err or "loss is inf at step 2" in err), err
    assert train.load_checkpoint(tmp_path / "nan" / "last.pt")["progress"]["global_step"] == 1

    assert run_main([*DEEPFM, "--data", store, "--max_steps", "4", "--model_save_dir", tmp_path / "cpu"])[0] == 0
    assert run_main(["--resume", tmp_path / "cpu", "--gpu_ids", "0", "--max_steps", "8"])[0] == 0
    last = train.load_checkpoint(tmp_path / "cpu" / "last.pt")
    assert last["progress"]["global_step"] == 8 and last["optimizer"]["param_groups"][0]["fused"] is True

    flags = [*DEEPFM, *gpu, "--max_steps", "6", "--log_every", "1", "--dropout", "0"]
    try:
        for name, extra in (("eager", []), ("compiled", ["--compile"])):
            assert run_main([*flags, *extra, "--model_save_dir", tmp_path / name])[0] == 0
    finally:
        torch._dynamo.reset()
    eager, compiled = train_curve(tmp_path / "eager"), train_curve(tmp_path / "compiled")
    assert [v for _, v in compiled] == pytest.approx([v for _, v in eager], rel=1e-4)


# -- multi-task ---------------------------------------------------------------------------------------------


def test_mmoe_trains_on_two_labels_and_logs_per_task_auc(tmp_path: Path):
    store = write_store(tmp_path / "mt", n_rows=2000, labels=("click", "buy"), seed=1)
    run_dir = tmp_path / "mmoe"
    code = train.main(["--model", "MMoE", "--expert_units", "16", "--tower_units", "8", *SMALL, "--data",
                       str(store), "--epochs", "2", "--lr", "0.01", "--task_weights", "1", "0.5",
                       "--model_save_dir", str(run_dir)])
    assert code == 0
    metrics = read_metrics(run_dir)
    for split in ("valid", "test"):
        assert metrics[split]["auc"] == pytest.approx((metrics[split]["click/auc"] + metrics[split]["buy/auc"]) / 2)
    assert metrics["valid"]["click/auc"] > 0.7 and metrics["valid"]["buy/auc"] > 0.7
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert {"valid/click/auc", "valid/buy/auc", "valid/click/logloss", "test/buy/auc"} <= set(events.Tags()["scalars"])


# -- gradient clipping and the embedding regularizer (BARS / FuxiCTR training) ----------------------------------


def sgd_setup(schema: Schema, *flags: str,
              dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.optim.Optimizer, Callable]:
    """A small DeepFM (no dropout, no BN) with plain SGD at lr 1 (unless ``flags`` say otherwise): a step is
    ``p - g``."""
    torch.manual_seed(0)
    model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,)).to(dtype)
    args = train.base_parser(False).parse_args(["--optimizer", "sgd", "--lr", "1", *flags])
    return model, train.make_optimizer(model, args), train.make_loss_fn(model, args)


def test_clip_grad_norm_scales_the_step_to_the_hand_clipped_one(schema: Schema):
    batch = make_batch(schema, 32, seed=3)
    batch["dense"] = batch["dense"].double()
    model, optimizer, loss_fn = sgd_setup(schema, "--embed_l2", "0.01", dtype=torch.float64)  # exact steps
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    loss_fn(batch, model(batch)).backward()  # the unclipped gradients, by hand
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    max_norm = 1e-3
    assert norm > 100 * max_norm  # the clip is active
    scale = max_norm / (norm + 1e-6)
    train.train_step(model, batch, optimizer, loss_fn, train.Ctx(), clip=max_norm)
    for k, p in model.named_parameters():
        step = before[k] - p.detach()
        torch.testing.assert_close(step, grads.get(k, torch.zeros_like(step)) * scale, rtol=1e-6, atol=1e-11, msg=k)
    total = math.sqrt(sum(float((before[k] - p.detach()).pow(2).sum()) for k, p in model.named_parameters()))
    assert total == pytest.approx(norm * scale, rel=1e-6)  # SGD at lr 1: the step is the clipped gradient


def test_clip_grad_norm_zero_is_bit_identical_to_no_clipping(schema: Schema):
    assert train.base_parser(False).parse_args([]).clip_grad_norm == 0.0
    results = []
    for kwargs in ({}, {"clip": 0.0}):
        model, optimizer, loss_fn = sgd_setup(schema, "--embed_l2", "0.01", "--lr", "0.1")
        for step in range(3):
            train.train_step(model, make_batch(schema, 16, seed=step), optimizer, loss_fn, train.Ctx(), **kwargs)
        results.append(model.state_dict())
    for k, v in results[0].items():
        assert torch.equal(v, results[1][k]), k


def test_embed_l2_modes_match_the_hand_computed_penalty_in_float64(schema: Schema):
    torch.manual_seed(0)
    model = models.build_model("DeepFM", schema, embed_dim=4, hidden_units=(8,), embed_init_std=0.1).double()
    emb = model.embedding
    with torch.no_grad():
        emb.weight.weight.normal_()  # a first-order table that is not all zeros
    batch = make_batch(schema, 16, seed=1)
    batch["dense"] = batch["dense"].double()
    logits = model(batch)
    base = model.loss(batch, logits)
    lam = 1e-2
    E, w = emb.table.weight.detach().numpy(), emb.weight.weight.detach().numpy()
    ids = (batch["sparse"] + emb.offsets).numpy()
    by_rows = lam * ((E[ids] ** 2).sum() + (w[ids] ** 2).sum()) / len(ids)  # rows the batch touches, per row
    tables = [p.detach().numpy() for name, p in emb.named_parameters() if name != "bias"]
    assert len(tables) == 3  # E, w and the dense first-order weights (dense_mode "vector": no dense table)
    whole = lam / 2 * sum((t ** 2).sum() for t in tables)  # FuxiCTR: lambda / p * ||W||_p^p, p = 2
    for mode, expected in (("batch", by_rows), ("table", whole)):
        args = train.base_parser(False).parse_args(["--embed_l2", str(lam), "--embed_l2_mode", mode])
        loss = train.make_loss_fn(model, args)(batch, logits)
        assert loss.dtype == torch.float64
        assert float((loss - base).detach()) == pytest.approx(expected, rel=1e-12), mode
    assert train.base_parser(False).parse_args([]).embed_l2_mode == "batch"  # the default keeps the old loss


def test_embed_l2_table_mode_decays_rows_no_batch_touches(schema: Schema):
    batch = make_batch(schema, 8, seed=0)
    batch["sparse"][:, 3] = 2  # C4 (50 ids): only id 2 is touched
    row = int(model_offsets(schema)[3]) + 7  # C4's id 7: never in the batch
    moved = {}
    for mode in ("batch", "table"):
        model, optimizer, loss_fn = sgd_setup(schema, "--embed_l2", "0.5", "--embed_l2_mode", mode, "--lr", "0.1")
        before = model.embedding.table.weight[row].detach().clone()
        train.train_step(model, batch, optimizer, loss_fn, train.Ctx())
        moved[mode] = model.embedding.table.weight[row].detach()
        if mode == "table":  # its gradient is lambda * row: SGD scales it by 1 - lr * lambda
            torch.testing.assert_close(moved[mode], before * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(moved[mode], before)


def model_offsets(schema: Schema) -> torch.Tensor:
    from layers.embedding import field_offsets
    return field_offsets(list(schema.vocab_sizes))


def test_clip_grad_norm_and_embed_l2_mode_are_checked():
    with pytest.raises(train.UsageError, match="--clip_grad_norm must be a finite number >= 0"):
        train.check_args(*train.parse_args(["--clip_grad_norm", "-1"]))
    with pytest.raises(SystemExit):
        train.parse_args(["--embed_l2_mode", "rows"])


def ddp_clip_worker(rank: int, port: int, schema: Schema, out: str) -> None:
    """Rank ``rank`` of 2 gloo processes with --clip_grad_norm and the table regularizer (see ddp_worker)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = train.init_process(rank, 2, torch.device("cpu"))
    model = ddp_model(schema)
    ddp = torch.nn.parallel.DistributedDataParallel(model, static_graph=True)
    args = train.base_parser(False).parse_args(DDP_CLIP_FLAGS)
    optimizer, loss_fn = train.make_optimizer(model, args), train.make_loss_fn(model, args)
    for step in range(DDP_STEPS):
        full = make_batch(schema, 2 * DDP_B, seed=step)
        batch = {k: v[rank * DDP_B:(rank + 1) * DDP_B] for k, v in full.items()}
        train.train_step(ddp, batch, optimizer, loss_fn, ctx, clip=args.clip_grad_norm)
    if rank == 0:
        torch.save(model.state_dict(), out)
    del ddp
    train.leave_group()


DDP_CLIP_FLAGS = ["--embed_l2", "0.01", "--embed_l2_mode", "table", "--lr", "0.01", "--clip_grad_norm", "0.05"]


def test_two_gloo_processes_clip_the_averaged_gradient_like_one_process(schema: Schema, tmp_path: Path):
    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_clip_worker, args=(train.free_port(), schema, str(out)), nprocs=2, join=True)
    ddp_state = torch.load(out, weights_only=True)
    model = ddp_model(schema)
    args = train.base_parser(False).parse_args(DDP_CLIP_FLAGS)
    optimizer, loss_fn = train.make_optimizer(model, args), train.make_loss_fn(model, args)
    for s in range(DDP_STEPS):
        train.train_step(model, make_batch(schema, 2 * DDP_B, seed=s), optimizer, loss_fn, train.Ctx(),
                         clip=args.clip_grad_norm)
    unclipped = ddp_model(schema)  # the same run without clipping ends elsewhere: the clip acts
    args_off = train.base_parser(False).parse_args([*DDP_CLIP_FLAGS, "--clip_grad_norm", "0"])
    opt_off, loss_off = train.make_optimizer(unclipped, args_off), train.make_loss_fn(unclipped, args_off)
    for s in range(DDP_STEPS):
        train.train_step(unclipped, make_batch(schema, 2 * DDP_B, seed=s), opt_off, loss_off, train.Ctx())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert any(not torch.allclose(v, unclipped.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_run_with_clip_and_table_regularizer_trains_and_records_them(tmp_path: Path):
    store = write_store(tmp_path / "store")
    run_dir = tmp_path / "run"
    code = train.main([*DEEPFM, "--data", str(store), "--epochs", "1", "--max_steps", "4", "--embed_l2", "1e-4",
                       "--embed_l2_mode", "table", "--clip_grad_norm", "10", "--model_save_dir", str(run_dir)])
    assert code == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["train"]["embed_l2_mode"], config["train"]["clip_grad_norm"]) == ("table", 10.0)


# -- sparse embedding gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_sparse_embed_trains_like_dense_gradients(store: Path, tmp_path: Path, optimizer: str,
                                                  monkeypatch: pytest.MonkeyPatch):
    """Adagrad and SGD leave a row without gradient as it is, so updating only the rows a batch touches is the
    same arithmetic as the dense update: the same weights after an epoch, with the L2 of the batch's rows, a
    frozen field (its rows dropped from the sparse gradient) and clipping (the norm of coalesced rows)."""
    flags = [*DEEPFM, "--data", store, "--epochs", "1", "--optimizer", optimizer, "--lr", "0.05",
             "--embed_l2", "1e-3", "--freeze_embed", "C1", "--clip_grad_norm", "0.5"]
    seen, step = [], train.train_step

    def recording_step(model: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = step(model, *args, **kwargs)
        seen.append(tuple(t.weight.grad.is_sparse for t in (model.embedding.table, model.embedding.weight)))
        return loss

    monkeypatch.setattr(train, "train_step", recording_step)
    assert train.main([str(a) for a in [*flags, "--model_save_dir", tmp_path / "dense"]]) == 0
    assert seen and set(seen) == {(False, False)}
    seen.clear()
    assert train.main([str(a) for a in [*flags, "--sparse_embed", "--model_save_dir", tmp_path / "sparse"]]) == 0
    assert seen and set(seen) == {(True, True)}
    assert json.loads((tmp_path / "sparse" / "config.json").read_text())["train"]["sparse_embed"] is True
    dense, sparse = (train.load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("dense", "sparse"))
    for k, v in dense.items():
        torch.testing.assert_close(sparse[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert read_metrics(tmp_path / "sparse")["test"] == pytest.approx(read_metrics(tmp_path / "dense")["test"],
                                                                       rel=1e-5)


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adam"], "--sparse_embed needs --optimizer adagrad or sgd"),
    (["--optimizer", "adagrad", "--embed_l2", "1e-4", "--embed_l2_mode", "table"],
     "--sparse_embed with --embed_l2_mode table"),
])
def test_sparse_embed_refuses_what_needs_every_row(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   flags: list[str], message: str):
    code, err = run_main([*DEEPFM, "--data", store, "--sparse_embed", *flags, "--model_save_dir", tmp_path / "r"],
                         capsys)
    assert code == 2 and message in err and not (tmp_path / "r").exists()


def test_sparse_embed_on_several_gpus_is_refused_before_anything_starts():
    cpu, gpus = [torch.device("cpu")], [torch.device("cuda", 0), torch.device("cuda", 1)]
    train.check_sparse_embed({"sparse_embed": True}, 1, gpus[:1])  # one GPU: no all-reduce
    train.check_sparse_embed({"sparse_embed": True}, 2, cpu * 2)  # gloo all-reduces sparse tensors
    train.check_sparse_embed({"sparse_embed": False}, 2, gpus)
    with pytest.raises(train.UsageError, match="--sparse_embed on 2 GPUs: NCCL has no sparse all-reduce"):
        train.check_sparse_embed({"sparse_embed": True}, 2, gpus)


def test_a_resumed_run_s_event_file_sorts_after_its_predecessor_s(tmp_path: Path):
    """TensorBoard applies a resumed run's purge only to event files it read before the run's own, in name
    order; a predecessor started in the same second with a larger pid would sort last and keep its stale
    points (tests/test_train.py's kill-and-resume test saw one under load)."""
    old = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.host.99999999.0"
    old.write_bytes(b"")
    train.after_event_files(tmp_path)
    writer = SummaryWriter(str(tmp_path))
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))[-1] != old.name
