"""dataset/resident.py and train.py --data_path: the device-resident path yields the chunk loader's rows
(per epoch, per rank, as multisets) with its guarantees: disjoint equal-count training shards with the
documented drop, every evaluation row exactly once, exact resume, a seeded order; sequence stores; the
choice of path; end-to-end runs, resume and DDP.

Rows of the plain test store carry their id in sparse column 0, as in tests/test_loader.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from conftest import make_batch, write_behaviour_store
from dataset import resident
from dataset.loader import make_loader
from dataset.resident import ResidentSplit, choose_data_path, make_resident_loader, resident_bytes
from dataset.schema import Schema
from dataset.store import StoreCorruptError, StoreReader, StoreWriter
from test_loader import ROWS, rows_of, write_numbered_store
from test_train import DEEPFM, corrupt_chunk, read_metrics, write_store

BATCH = 64  # the loader tests' store: ROWS = 2345 rows in 24 chunks, the last one short; ROWS is odd, so 2
# ranks drop a row
Batches = list[dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_numbered_store(tmp_path_factory.mktemp("resident") / "store")


@pytest.fixture
def seq_store(tmp_path: Path, seq_schema: Schema) -> Path:
    """Random rows of conftest's sequence schema (with a weighted field, so seq_weight is there)."""
    b = {k: v.numpy() for k, v in make_batch(seq_schema, 700, seed=3).items()}
    with StoreWriter(tmp_path / "seq", seq_schema, dataset="test", chunk_size=64) as w:
        w.add("train", b["sparse"].astype(np.int32), b["dense"], b["label"], seq=b["seq"],
              seq_len=b["seq_len"].astype(np.int32), seq_weight=b["seq_weight"])
    return tmp_path / "seq"


def chunked(path: Path, split: str = "train", train: bool = True, batch: int = BATCH, **kw):
    return make_loader(path, split, batch, train=train, num_workers=0, shuffle_chunks=5, **kw)


def resident_loader(path: Path, split: str = "train", train: bool = True, batch: int = BATCH, **kw):
    return make_resident_loader(path, split, batch, train=train, **kw)


def epoch(ld, e: int, skip: int = 0) -> Batches:
    ld.set_epoch(e, skip)
    return list(ld)


def ids(batches: Batches) -> list[list[int]]:
    return [b["sparse"][:, 0].tolist() for b in batches]


def flat(batches: Batches) -> list[int]:
    return [i for b in ids(batches) for i in b]


def sorted_rows(batches: Batches) -> np.ndarray:
    """Every row of the batches, all keys side by side (in name order) as float64, sorted: a multiset of rows."""
    if not batches:
        return np.zeros((0, 0))
    rows = np.concatenate([np.concatenate([b[k].double().numpy() for k in sorted(b)], axis=1) for b in batches])
    return rows[np.lexsort(rows.T[::-1])]


# -- the batch contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path_fixture", ["store", "seq_store"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_batches_have_the_chunk_loaders_keys_dtypes_and_shapes(path_fixture: str, train_mode: bool,
                                                                 request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(path_fixture)
    ref = next(iter(chunked(path, train=train_mode)))
    for b in resident_loader(path, train=train_mode):
        assert list(b) == StoreReader(path).schema.batch_keys()
        assert {k: v.dtype for k, v in b.items()} == {k: v.dtype for k, v in ref.items()}
        assert all(v.shape[1:] == ref[k].shape[1:] and v.is_contiguous() for k, v in b.items())


def test_batches_carry_the_stored_rows(store: Path) -> None:
    sparse, dense, label = rows_of(ROWS)
    batches = epoch(resident_loader(store), 1)
    for b in batches:
        i = b["sparse"][:, 0].numpy()
        np.testing.assert_array_equal(b["sparse"].numpy(), sparse[i])
        np.testing.assert_array_equal(b["dense"].numpy(), dense[i])
        np.testing.assert_array_equal(b["label"].numpy(), label[i])
    assert [len(b["label"]) for b in batches] == [BATCH] * (ROWS // BATCH) + [ROWS % BATCH]


def test_a_batch_is_a_copy_not_a_view_of_the_resident_rows(store: Path) -> None:
    ld = resident_loader(store, "valid", train=False)
    first = next(iter(ld))
    first["sparse"].zero_(), first["dense"].zero_(), first["label"].zero_()
    assert next(iter(ld))["sparse"][:, 0].tolist() == list(range(BATCH))


def test_a_store_without_dense_fields_gives_zero_width_dense(tmp_path: Path) -> None:
    schema = Schema(("id",), (50,), (), ("click",))
    with StoreWriter(tmp_path / "s", schema, dataset="test", chunk_size=16) as w:
        w.add("train", np.arange(50, dtype=np.int32)[:, None], np.zeros((50, 0), np.float32),
              np.ones((50, 1), np.float32))
    batches = list(make_resident_loader(tmp_path / "s", "train", 20, train=False))
    assert [tuple(b["dense"].shape) for b in batches] == [(20, 0), (20, 0), (10, 0)]
    assert flat(batches) == list(range(50)) and all(b["label"].eq(1).all() for b in batches)


# -- the chunk loader's rows, per epoch and rank -----------------------------------------------------------


@pytest.mark.parametrize("path_fixture", ["store", "seq_store"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_one_rank_yields_the_chunk_loaders_rows(path_fixture: str, train_mode: bool,
                                                request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(path_fixture)
    res, ref = resident_loader(path, train=train_mode), chunked(path, train=train_mode)
    for e in (0, 1):
        np.testing.assert_array_equal(sorted_rows(epoch(res, e)), sorted_rows(epoch(ref, e)))
    assert res.num_rows == ref.num_rows == StoreReader(path).num_rows("train")


@pytest.mark.parametrize("world_size", [2, 3])
def test_train_shards_are_disjoint_equal_counts_and_drop_n_mod_w_rows(store: Path, world_size: int) -> None:
    loaders = [resident_loader(store, rank=r, world_size=world_size) for r in range(world_size)]
    every_row = sorted_rows(epoch(chunked(store, train=False), 0))
    dropped = []
    for e in (0, 1):
        shards = [epoch(ld, e) for ld in loaders]
        assert len({len(s) for s in shards} | {len(ld) for ld in loaders}) == 1, "ranks yield different counts"
        seen = [set(flat(s)) for s in shards]
        assert sum(map(len, seen)) == len(set().union(*seen)), "a row went to two ranks"
        assert [len(s) for s in seen] == [ld.num_rows for ld in loaders] == [ROWS // world_size] * world_size
        union = sorted_rows([b for s in shards for b in s])
        kept = np.isin(every_row[:, 0], union[:, 0])
        np.testing.assert_array_equal(union, every_row[kept])  # the stored rows, minus the drop
        dropped.append(set(range(ROWS)) - set().union(*seen))
        assert len(dropped[-1]) == ROWS % world_size  # the documented drop: N mod world_size rows
    assert dropped[0] != dropped[1]  # different rows each epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_train_ranks_together_see_the_batches_of_one_process_with_the_global_batch(store: Path,
                                                                                  world_size: int) -> None:
    """Global batch i of W ranks (rank order) = batch i of one process with batch W x b, but for the drop."""
    single = ids(epoch(resident_loader(store, batch=world_size * BATCH), 4))
    shards = [ids(epoch(resident_loader(store, rank=r, world_size=world_size), 4)) for r in range(world_size)]
    assert len(single) == len(shards[0])
    for i, whole in enumerate(single):
        joined = [x for s in shards for x in s[i]]
        assert joined == whole[:len(joined)] and len(whole) - len(joined) <= ROWS % world_size


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("split,rows", [("train", ROWS), ("valid", 250)])
def test_eval_shards_cover_every_row_exactly_once(store: Path, world_size: int, split: str, rows: int) -> None:
    loaders = [resident_loader(store, split, train=False, rank=r, world_size=world_size) for r in range(world_size)]
    shards = [epoch(ld, 0) for ld in loaders]
    assert sorted(i for s in shards for i in flat(s)) == list(range(rows))
    assert [len(ld) for ld in loaders] == [len(s) for s in shards]
    assert sum(ld.num_rows for ld in loaders) == rows
    assert flat(shards[0]) == list(range(len(flat(shards[0]))))  # stored order
    np.testing.assert_array_equal(sorted_rows([b for s in shards for b in s]),
                                  sorted_rows(epoch(chunked(store, split, train=False), 0)))


# -- order and resume --------------------------------------------------------------------------------------


def test_order_is_a_function_of_seed_and_epoch(store: Path) -> None:
    ld = resident_loader(store)
    first, second, again = ids(epoch(ld, 0)), ids(epoch(ld, 1)), ids(epoch(ld, 0))
    assert first == again and first != second
    assert flat(epoch(ld, 0)) != sorted(flat(epoch(ld, 0)))
    assert ids(epoch(resident_loader(store), 1)) == second
    assert ids(epoch(resident_loader(store, seed=7), 1)) != second
    assert ids(epoch(ld, 1)) == second and ids(list(ld)) == second  # without a new set_epoch the epoch repeats


@pytest.mark.parametrize("train_mode,world_size", [(True, 1), (True, 2), (False, 1), (False, 2)])
def test_skip_batches_resumes_the_epoch_exactly(store: Path, train_mode: bool, world_size: int) -> None:
    ld = resident_loader(store, train=train_mode, world_size=world_size, rank=world_size - 1)
    full = ids(epoch(ld, 3))
    assert len(ld) == len(full)
    for k in (1, 2, 7, len(full) - 1, len(full)):
        assert full[:k] + ids(epoch(ld, 3, skip=k)) == full, f"skip_batches={k}"
    assert ids(epoch(ld, 3)) == full  # the skip applies to one iteration only
    with pytest.raises(ValueError, match=f"skip_batches={len(full) + 1} is outside"):
        ld.set_epoch(3, len(full) + 1)


def test_one_resident_split_serves_several_loaders(store: Path) -> None:
    data = ResidentSplit(StoreReader(store), "train")
    assert data.rows.dtype == torch.int32 and data.rows.shape == (ROWS, 3 + 2 + 2)
    assert data.rows.numel() * 4 == resident_bytes(StoreReader(store), ["train"])
    a, b = (make_resident_loader(data, "train", BATCH, train=True, rank=r, world_size=2) for r in (0, 1))
    assert not set(flat(epoch(a, 0))) & set(flat(epoch(b, 0)))


def test_loading_verifies_every_chunk(tmp_path: Path) -> None:
    path = corrupt_chunk(write_store(tmp_path / "s", n_rows=600), "train", 2)
    with pytest.raises(StoreCorruptError, match="chunk train/00000002"):
        resident_loader(path)


def test_bad_arguments_name_the_fix(store: Path) -> None:
    with pytest.raises(ValueError, match="no split 'dev'"):
        resident_loader(store, "dev")
    with pytest.raises(ValueError, match="rank 2 is outside"):
        resident_loader(store, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        resident_loader(store, batch=0)


# -- the choice of path ------------------------------------------------------------------------------------


def test_auto_chooses_resident_when_the_splits_fit_in_half_the_free_memory(store: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reader, cpu = StoreReader(store), [torch.device("cpu")]
    need = resident_bytes(reader)
    assert need == (ROWS + 250) * 7 * 4
    assert choose_data_path("chunks", reader, cpu) == ("chunks", "--data_path chunks")
    assert choose_data_path("resident", reader, cpu)[0] == "resident"
    monkeypatch.setattr(resident, "available_memory", lambda: 2 * need)
    path, why = choose_data_path("auto", reader, cpu)
    assert path == "resident" and "within 50% of the" in why
    assert choose_data_path("auto", reader, cpu, processes=2)[0] == "chunks"  # each process holds a copy
    monkeypatch.setattr(resident, "available_memory", lambda: 2 * need - 2)
    path, why = choose_data_path("auto", reader, cpu)
    assert path == "chunks" and "more than 50% of the" in why


def test_resume_keeps_the_data_path_of_the_run(store: Path) -> None:
    args = train.base_parser(False).parse_args([])
    saved = {"train": {"data_path": "resident"}}
    assert train.resolve_data_path(args, StoreReader(store), [torch.device("cpu")], saved)[0] == "resident"
    assert train.resolve_data_path(args, StoreReader(store), [torch.device("cpu")], {"train": {}})[0] == "chunks"
    args.data_path = "chunks"
    with pytest.raises(train.UsageError, match="trained with --data_path resident"):
        train.resolve_data_path(args, StoreReader(store), [torch.device("cpu")], saved)


# -- train.py end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("train_store") / "planted")  # 1600 train rows: 25 batches of 64


def test_auto_prints_and_records_the_chosen_path(train_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resident, "available_memory", lambda: 1000)  # too little: chunks
    argv = [*DEEPFM, "--data", str(train_store), "--epochs", "1", "--model_save_dir", str(tmp_path / "a")]
    assert train.main(argv) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["train"]["data_path"] == "chunks"
    line = [x for x in capsys.readouterr().out.splitlines() if "data path" in x]
    assert len(line) == 1 and line[0].startswith("train.py: data path chunks (--data_path auto: the splits take ")


def test_resident_run_resumed_mid_epoch_ends_like_the_uninterrupted_one(train_store: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    flags = [*DEEPFM, "--data", train_store, "--epochs", "2", "--eval_every", "7", "--dropout", "0.2",
             "--data_path", "resident"]
    assert train.main([str(a) for a in [*flags, "--model_save_dir", tmp_path / "straight"]]) == 0
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["train"]["data_path"] == "resident"
    assert train.main([str(a) for a in [*flags, "--max_steps", "7", "--model_save_dir", tmp_path / "cut"]]) == 0
    assert train.load_checkpoint(tmp_path / "cut" / "last.pt")["progress"]["step_in_epoch"] == 7
    capsys.readouterr()
    assert train.main(["--resume", str(tmp_path / "cut"), "--data_path", "chunks"]) == 2
    assert "trained with --data_path resident" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "cut"), "--max_steps", "0"]) == 0
    assert "train.py: data path resident (the path of the run being resumed)" in capsys.readouterr().out
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "cut")
    assert resumed["test"] == straight["test"] and resumed["valid"] == straight["valid"]
    assert straight["global_step"] == 2 * 25


@pytest.mark.parametrize("optimizer", [[], ["--optimizer", "adagrad", "--sparse_embed"]], ids=["dense", "sparse"])
def test_two_cpu_processes_match_one_process_with_the_double_batch(train_store: Path, tmp_path: Path,
                                                                   optimizer: list[str]) -> None:
    """As tests/test_train.py's DDP test: 2 gloo ranks of batch b train like one process of batch 2b (the
    resident path gives the ranks exactly that process's batches), to the same tolerance; every test row
    is scored once. Also with --sparse_embed, whose sparse table gradients DDP all-reduces as sparse tensors."""
    flags = [*DEEPFM, "--data", train_store, "--epochs", "1", "--data_path", "resident", *optimizer]
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main([str(a) for a in [*flags, "--batch_size", "64", "--model_save_dir", one]]) == 0
    assert train.main([str(a) for a in [*flags, "--batch_size", "32", "--cpu_procs", "2",
                                        "--model_save_dir", two]]) == 0
    a, b = read_metrics(one), read_metrics(two)
    assert b["test_rows"] == a["test_rows"] == StoreReader(train_store).num_rows("test")
    assert b["global_step"] == a["global_step"] == 25
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    for split in ("valid", "test"):
        assert b[split] == pytest.approx(a[split], rel=1e-5)
    for k, v in train.load_checkpoint(one / "last.pt")["model"].items():
        torch.testing.assert_close(train.load_checkpoint(two / "last.pt")["model"][k], v, rtol=1e-5, atol=1e-6,
                                   msg=k)


def test_a_sequence_store_trains_resident(tmp_path: Path) -> None:
    path = write_behaviour_store(tmp_path / "behaviour", n_rows=600)
    argv = ["--model", "DIN", "--data", path, "--batch_size", "64", "--embed_dim", "4", "--hidden_units", "16",
            "--attention_units", "8", "--num_workers", "0", "--epochs", "1", "--data_path", "resident",
            "--model_save_dir", tmp_path / "run"]
    assert train.main([str(a) for a in argv]) == 0
    assert read_metrics(tmp_path / "run")["test_rows"] == StoreReader(path).num_rows("test")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_on_the_device_and_match_the_cpu_ones(store: Path) -> None:
    gpu, cpu = resident_loader(store, device="cuda"), resident_loader(store)
    for g, c in zip(epoch(gpu, 2), epoch(cpu, 2)):
        assert all(v.device.type == "cuda" for v in g.values())
        assert all(torch.equal(g[k].cpu(), c[k]) for k in c)
