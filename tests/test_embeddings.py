"""Embeddings in and out (issue #13): vectors of raw values extracted from a run, pretrained init and freezing
of fields' rows (train.py --pretrained_embed / --freeze_embed), and AFM's attention weights, on the real
Criteo rows of head8k.txt."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
import train
from conftest import ROOT, SHARED_DATA
from dataset.criteo import preprocess_criteo
from dataset.embed_values import encode_values, read_vectors
from dataset.raw import InputError
from dataset.split import SplitAssigner
from dataset.store import StoreReader

sys.path.insert(0, str(ROOT / "scripts"))
import embeddings  # noqa: E402

HEAD = SHARED_DATA / "criteo" / "head8k.txt"
SEED, RATIOS, D = 2018, (0.8, 0.1, 0.1), 4
FIELDS = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "criteo"
    preprocess_criteo(HEAD, out, min_count=2, seed=SEED, split=RATIOS, progress=False)
    return out


def train_argv(store: Path, out: Path, *extra: str, model: str = "AFM", steps: int = 10) -> list[str]:
    return ["--model", model, "--embed_size", str(D), "--data", str(store), "--max_steps", str(steps),
            "--batch_size", "256", "--gpu_ids", "", "--num_workers", "0", "--lr", "0.01", "--model_save_dir",
            str(out), *extra]


@pytest.fixture(scope="module")
def afm_run(store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "afm"
    assert train.main(train_argv(store, out)) == 0
    return out


def raw_cells() -> list[list[str]]:
    """head8k.txt's rows as cells: click, I1..I13, C1..C26."""
    return [line.split("\t") for line in HEAD.read_text().splitlines()]


def vocab_values(store: Path, field: str, n: int) -> list[str]:
    return StoreReader(store).vocabulary(field)["values"][:n]


# -- extract ---------------------------------------------------------------------------------------------------


def test_raw_values_get_the_ids_preprocessing_wrote(store):
    """Every field of the train split's raw rows, encoded value by value, gives exactly the store's train rows
    (as multisets: the store shuffles its rows)."""
    cells = raw_cells()
    train_rows = [row for row, split in zip(cells, SplitAssigner(RATIOS, SEED).assign(len(cells))) if split == 0]
    reader = StoreReader(store)
    ids = np.stack([encode_values(reader, f, [row[1 + j] for row in train_rows]) for j, f in enumerate(FIELDS)], 1)
    stored = reader.read_split("train")["sparse"].astype(np.int64)
    assert ids.shape == stored.shape
    np.testing.assert_array_equal(ids[np.lexsort(ids.T[::-1])], stored[np.lexsort(stored.T[::-1])])


def test_extract_gives_the_table_rows_of_those_ids_and_flags_oov(store, afm_run, tmp_path):
    values = vocab_values(store, "C3", 3) + ["deadbeef", "not-hex"]
    out = tmp_path / "vecs.tsv"
    assert embeddings.main(["extract", str(afm_run), "--field", "C3", "--values", *values, "--out", str(out)]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    reader = StoreReader(store)
    ids = encode_values(reader, "C3", values)
    assert [r[0] for r in rows] == values and [int(r[1]) for r in rows] == ids.tolist() == [2, 3, 4, 0, 0]
    assert [r[2] for r in rows] == ["0", "0", "0", "1", "1"]
    state = train.load_checkpoint(afm_run / "best.pt")["model"]["embedding.table.weight"]
    start = sum(reader.schema.vocab_sizes[:FIELDS.index("C3")])
    np.testing.assert_array_equal(np.array([[float(x) for x in r[3:]] for r in rows], np.float32),
                                  state[start + torch.from_numpy(ids)].numpy())


def test_extract_all_and_its_errors(store, afm_run, tmp_path, capsys):
    out = tmp_path / "all.tsv"
    assert embeddings.main(["extract", str(afm_run), "--field", "C9", "--all", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert [r.split("\t")[1] for r in rows] == [str(i) for i in range(2, StoreReader(store).schema.vocab_sizes[
        FIELDS.index("C9")])]
    assert embeddings.main(["extract", str(afm_run), "--field", "C9", "--all", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert embeddings.main(["extract", str(afm_run), "--field", "C99", "--values", "a"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'C99'" in err and "C26" in err and err.count("\n") == 1


def test_dense_and_hashed_fields_are_clear_errors(tmp_path):
    numeric = tmp_path / "numeric"
    preprocess_criteo(HEAD, numeric, min_count=2, dense="numeric", hashed={"C3": 97}, progress=False)
    reader = StoreReader(numeric)
    with pytest.raises(InputError, match="I2 is a dense field: it has no embedding rows"):
        encode_values(reader, "I2", ["3"])
    with pytest.raises(InputError, match="C3 is hashed into 97 buckets.*only its bucket"):
        encode_values(reader, "C3", ["05db9164"])


# -- pretrained init and freezing ------------------------------------------------------------------------------


def write_vectors(path: Path, values: list[str], vectors: np.ndarray, header: bool = True) -> Path:
    lines = [f"{len(values)} {vectors.shape[1]}"] if header else []
    lines += [" ".join([v, *(repr(float(x)) for x in vec)]) for v, vec in zip(values, vectors)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pretrained_init_sets_exactly_those_rows(store, tmp_path, capsys):
    reader = StoreReader(store)
    values = vocab_values(store, "C3", 5)[1:4] + ["deadbeef"]
    vectors = np.arange(len(values) * D, dtype=np.float32).reshape(-1, D) + 0.5
    path = write_vectors(tmp_path / "c3.txt", values, vectors)
    torch.manual_seed(0)
    plain = models.build_model("AFM", reader.schema, embed_dim=D)
    torch.manual_seed(0)
    model = models.build_model("AFM", reader.schema, embed_dim=D)
    args = train.argparse.Namespace(resume=None, pretrained_embed=[f"C3={path}"], freeze_embed=[])
    train.apply_embed_flags(model, args, reader, reader.schema.sparse_fields, master=True)
    printed = capsys.readouterr().out
    assert "--pretrained_embed C3: 3 rows set" in printed and "1 of its values are not in the vocabulary" in printed
    start = sum(reader.schema.vocab_sizes[:FIELDS.index("C3")])
    rows = start + np.array([3, 4, 5])  # values[0:3] are the vocabulary's 2nd..4th values: ids 3..5
    got, before = model.embedding.table.weight.detach(), plain.embedding.table.weight.detach()
    np.testing.assert_array_equal(got[rows].numpy(), vectors[:3])
    others = np.setdiff1d(np.arange(got.shape[0]), rows)
    assert torch.equal(got[others], before[others])


def test_pretrained_file_errors_name_file_and_line(store, tmp_path, capsys):
    values = vocab_values(store, "C3", 2)
    bad_dim = tmp_path / "dim.txt"
    bad_dim.write_text(f"{values[0]} 1 2 3 4\n{values[1]} 1 2 3\n")
    assert train.main(train_argv(store, tmp_path / "r1", "--pretrained_embed", f"C3={bad_dim}")) == 2
    err = capsys.readouterr().err
    assert f"{bad_dim}:2: 3 numbers after the value, expected D = {D}" in err and err.count("\n") == 1
    bad_num = tmp_path / "num.txt"
    bad_num.write_text(f"{values[0]} 1 2 x 4\n")
    with pytest.raises(InputError, match=f"{bad_num}:1: not a number"):
        read_vectors(bad_num, D)
    assert train.main(train_argv(store, tmp_path / "r2", "--pretrained_embed", f"C99={bad_dim}")) == 2
    err = capsys.readouterr().err
    assert "--pretrained_embed C99: no such field" in err and "C26" in err
    assert train.main(train_argv(store, tmp_path / "r3", "--freeze_embed", "I99")) == 2
    assert "--freeze_embed I99: no such field" in capsys.readouterr().err
    assert train.main(train_argv(store, tmp_path / "r4", "--drop_fields", "C3", "--freeze_embed", "C3")) == 2
    assert "--freeze_embed C3: no such field" in capsys.readouterr().err  # dropped: the model has no C3 rows
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r4"))


@pytest.mark.parametrize("mode", ["batch", "table"])
def test_frozen_rows_stay_bit_identical_while_others_move(store, tmp_path, mode):
    """C3 pretrained and frozen, C4 pretrained only: after 10 Adam steps with --embed_l2 C3's rows are the
    file's vectors bit for bit, C4's moved; --resume (the files deleted) does not re-apply them."""
    vectors = np.full((3, D), 0.25, np.float32)
    c3 = write_vectors(tmp_path / "c3.txt", vocab_values(store, "C3", 3), vectors)
    c4 = write_vectors(tmp_path / "c4.txt", vocab_values(store, "C4", 3), vectors, header=False)
    run = tmp_path / "run"
    argv = train_argv(store, run, "--pretrained_embed", f"C3={c3}", f"C4={c4}", "--freeze_embed", "C3",
                      "--embed_l2", "0.01", "--embed_l2_mode", mode)
    assert train.main(argv) == 0
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["freeze_embed"] == ["C3"] and set(config["pretrained_sha256"]) == {"C3", "C4"}
    reader = StoreReader(store)
    sizes = reader.schema.vocab_sizes
    s3, s4 = sum(sizes[:FIELDS.index("C3")]), sum(sizes[:FIELDS.index("C4")])
    table = train.load_checkpoint(run / "last.pt")["model"]["embedding.table.weight"]
    np.testing.assert_array_equal(table[s3 + 2:s3 + 5].numpy(), vectors)
    assert not np.allclose(table[s4 + 2:s4 + 5].numpy(), vectors)
    c3.unlink(), c4.unlink()
    frozen_before = table[s3:s3 + sizes[FIELDS.index("C3")]].clone()
    assert train.main(["--resume", str(run), "--max_steps", "20"]) == 0
    after = train.load_checkpoint(run / "last.pt")
    assert after["progress"]["global_step"] == 20
    table = after["model"]["embedding.table.weight"]
    assert torch.equal(table[s3:s3 + sizes[FIELDS.index("C3")]], frozen_before)


# -- AFM attention ---------------------------------------------------------------------------------------------


def test_afm_attention_weights_are_the_models_own(store, afm_run):
    model = train.load_trained(train.load_checkpoint(afm_run / "best.pt"), StoreReader(store),
                               torch.device("cpu"))[0].eval()
    rows = StoreReader(store).read_split("test")
    batch = {"sparse": torch.from_numpy(rows["sparse"][:64]).long(), "dense": torch.from_numpy(rows["dense"][:64])}
    with torch.no_grad():
        weights, pairs = model.attention(batch)
        logits = model(batch)
    f = model.embedding.num_fields
    assert pairs == [(i, j) for i in range(f) for j in range(i + 1, f)]
    assert weights.shape == (64, len(pairs))
    torch.testing.assert_close(weights.sum(1), torch.ones(64), rtol=0, atol=1e-6)
    # brute force in float64 from the model's parameters
    emb = model.embedding(batch).double()
    lin1, lin2 = model.afm.attention[0], model.afm.attention[2]
    W, b, h = lin1.weight.double(), lin1.bias.double(), lin2.weight.double()[0]
    products = torch.stack([emb[:, i] * emb[:, j] for i, j in pairs], 1)  # [B, P, D]
    scores = torch.relu(products @ W.T + b) @ h  # [B, P]
    expected = torch.softmax(scores, dim=1)
    torch.testing.assert_close(weights.double(), expected, rtol=0, atol=1e-6)
    pooled = (weights.double().unsqueeze(-1) * products).sum(1)  # [B, D]
    rebuilt = model.embedding.linear(batch).double() + pooled @ model.p.weight.double().T
    torch.testing.assert_close(rebuilt, logits.double(), rtol=0, atol=1e-5)


def test_afm_attention_cli_writes_top_pairs_per_row(store, afm_run, tmp_path):
    out = tmp_path / "att.tsv"
    assert embeddings.main(["afm-attention", str(afm_run), "--input", str(HEAD), "--rows", "3", "--top", "4",
                            "--out", str(out)]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [int(r[0]) for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    _, weights, _ = embeddings.afm_attention(afm_run, HEAD, 3)
    top = np.sort(weights[0])[::-1][:4]
    np.testing.assert_allclose([float(r[3]) for r in rows[:4]], top, rtol=0, atol=0)
    assert all(r[1] in FIELDS and r[2] in FIELDS for r in rows)


def test_afm_attention_never_writes_over_its_input(afm_run, tmp_path, capsys):
    raw = tmp_path / "rows.txt"
    raw.write_bytes(b"".join(HEAD.read_bytes().splitlines(keepends=True)[:5]))
    before = raw.read_bytes()
    assert embeddings.main(["afm-attention", str(afm_run), "--input", str(raw), "--out", str(raw),
                            "--overwrite"]) == 2
    assert "is the input file" in capsys.readouterr().err and raw.read_bytes() == before
