"""scripts/benchmark.py's table writer and the BARS presets (models/presets.py, train.py --preset)."""
from __future__ import annotations

import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402
from models.presets import PRESETS, SHARED_FLAGS, get_preset, preset_argv, to_argv  # noqa: E402

# -- table writer ----------------------------------------------------------------------------------------------


def test_markdown_table_aligns_first_column_left_and_numbers_right():
    table = benchmark.markdown_table(["model", "AUC"], [["DeepFM", "0.8143"], ["LR", 0.7934]])
    assert table == "| model | AUC |\n| --- | ---: |\n| DeepFM | 0.8143 |\n| LR | 0.7934 |"
    assert benchmark.markdown_table(["a", "b"], [], "rl") == "| a | b |\n| ---: | --- |"
    assert benchmark.markdown_table(["e"], [["x | y\nz"]]) == "| e |\n| --- |\n| x \\| y z |"


def test_markdown_table_rejects_rows_of_the_wrong_width():
    with pytest.raises(ValueError, match="2 entries"):
        benchmark.markdown_table(["a", "b"], [["only one"]])


def test_mean_std_uses_the_sample_standard_deviation():
    assert benchmark.mean_std([0.70, 0.72]) == "0.7100 ± 0.0141"  # stdev = 0.02 / sqrt(2)
    assert benchmark.mean_std([0.7, 0.7, 0.7]) == "0.7000 ± 0.0000"
    assert benchmark.mean_std([0.75]) == "0.7500"
    assert benchmark.mean_std([float("nan"), 0.6]) == "0.6000"
    assert benchmark.mean_std([]) == "n/a"
    assert benchmark.mean_std([3, 4], digits=1) == "3.5 ± 0.7"


def test_quality_rows_average_over_seeds_and_report_failures():
    runs = [{"seed": 1, "best_epoch": 1, "test": {"auc": 0.70, "logloss": 0.50}},
            {"seed": 2, "best_epoch": 3, "test": {"auc": 0.72, "logloss": 0.46}},
            {"seed": 3, "error": "train.py exited with 1: boom"}]
    rows = benchmark.criteo_quality_rows({"runs": {"DeepFM": runs}})
    assert rows == [["DeepFM", "0.7100 ± 0.0141", "0.4800 ± 0.0283", "2.0 ± 1.4",
                     "1 failed: train.py exited with 1: boom"]]


def test_census_rows_report_each_task_and_flag_esmm():
    run = {"seed": 1, "test": {"income/auc": 0.94, "marital/auc": 0.99, "logloss": 0.11}}
    rows = benchmark.census_quality_rows({"runs": {"MMoE": [run], "ESMM": [run]}})
    assert rows[0] == ["MMoE", "0.9400", "0.9900", "0.1100", ""]
    assert rows[1][:4] == ["ESMM", "0.9400", "0.9900", "0.1100"] and "not a funnel" in rows[1][4]


def test_speed_table_has_cuda_columns_only_for_measured_devices():
    pipeline = {"rows": 1000, "batch_size": 4096, "workers": 2,
                "preprocessing": {"ours_rows_per_s": 250000.4, "ours_rows": 1000, "pytorchfm_rows_per_s": 36540,
                                  "pytorchfm_rows": 1000},
                "loader": {"ours_samples_per_s": 5.1e6, "ours_rows": 2400}}
    dfm = {"samples_per_s": 16312.8, "params": 2055897, "peak_rss_mib": 602.2, "peak_cuda_mib": 88.6}
    speed = {"pipeline": pipeline, "devices": ["cpu", "cuda"], "idle_rss_mib": 416.0, "batch_size": 4096,
             "warmup": 2, "steps": 10, "training": {"DeepFM": {"cpu": dfm, "cuda": dfm},
                                                    "FiBiNET": {"cpu": {"error": "BrokenProcessPool: killed"},
                                                                "cuda": {"error": "OOM"}}}}
    text = benchmark.speed_section(speed)
    assert "| preprocessing (ours: dataset.criteo) | 250,000 rows/s |" in text
    assert ("| model | params | CPU samples/s | CPU peak RSS (MiB) | CUDA samples/s | CUDA peak allocated (MiB) |"
            in text)
    assert "| DeepFM | 2,055,897 | 16,313 | 602 | 16,313 | 89 |" in text
    assert "| FiBiNET |  | failed: BrokenProcessPool: killed |  | failed: OOM |  |" in text
    speed["devices"], speed["training"] = ["cpu"], {"DeepFM": {"cpu": dfm}}
    assert "CUDA" not in benchmark.speed_section(speed)


def test_presets_table_puts_published_beside_measured():
    quality = {"criteo": {"runs": {"DeepFM": [{"test": {"auc": 0.75}}, {"test": {"auc": 0.76}}]}}}
    text = benchmark.presets_section(quality)
    assert "published AUC (BARS, full Criteo_x4)" in text and "measured here: AUC, 12k rows" in text
    line = next(l for l in text.splitlines() if l.startswith("| DeepFM |"))
    command = "`python train.py --preset DeepFM_criteo_x4_001 --data data/criteo`"
    assert line.endswith(f"| 0.8143 | 0.4376 | 0.7550 ± 0.0071 | {command} |")
    assert len([l for l in text.splitlines() if l.startswith("| ")]) == 2 + len(PRESETS)


def test_recorded_commands_hide_machine_paths(tmp_path):
    argv = ["python", "preprocess.py", "census", "--input", str(benchmark.SHARED_DATA / "census" / "x.gz"),
            "--out", str(tmp_path / "census_seed1")]
    assert benchmark.portable(argv, tmp_path) == (
        "python preprocess.py census --input ../shared/data/census/x.gz --out $WORK/census_seed1")


def test_a_fresh_process_reports_its_own_peak_memory_not_its_parents():
    block = bytearray(512 * 2**20)
    block[::4096] = b"\1" * len(block[::4096])  # touch every page: this process holds 512 MiB more
    child = benchmark.in_fresh_process(benchmark.idle_rss)  # ru_maxrss would report >= this process's RSS
    assert benchmark.peak_rss_mib() > 512 and child < benchmark.peak_rss_mib() - 256
    del block


def test_select_models_checks_names_against_the_registry():
    chosen = benchmark.select_models("all")
    assert "DeepFM" in chosen and "MMoE" in chosen
    assert set(models.model_names()) - set(chosen) == {"DIN", "DIEN", "BST", "DSIN"}  # need histories
    with pytest.raises(ValueError, match="bench_features.py --amazon-models DIN"):
        benchmark.select_models("DeepFM,din")
    assert benchmark.select_models("deepfm, DCN") == ["DeepFM", "DCN"]
    with pytest.raises(ValueError, match="valid models"):
        benchmark.select_models("DeepFM,NoSuchModel")


def test_quick_defaults_and_explicit_flags():
    args = benchmark.parse_args(["--quick"])
    assert (args.rows, args.seeds, args.steps) == (50_000, 1, 3)
    assert args.models == list(benchmark.QUICK_MODELS)
    args = benchmark.parse_args(["--quick", "--models", "LR", "--rows", "1000"])
    assert args.models == ["LR"] and args.rows == 1000
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--seeds", "0"])


def test_small_hparams_apply_only_where_the_model_has_them():
    assert benchmark.quality_hparams("LR") == {}
    assert benchmark.quality_hparams("DCN") == {"hidden_units": (64, 64), "num_cross_layers": 2}
    assert benchmark.quality_hparams("MMoE") == {"expert_units": (16,), "tower_units": (16,)}


# -- presets ---------------------------------------------------------------------------------------------------


def test_to_argv_writes_train_py_flag_syntax():
    assert to_argv({"lr": 0.001, "hidden_units": (64, 64), "batch_norm": False, "use_wide": True}) == [
        "--lr", "0.001", "--hidden_units", "64", "64", "--no-batch_norm", "--use_wide"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_parses_into_its_published_configuration(name: str):
    preset = PRESETS[name]
    args, hparams = train.parse_args(["--preset", name])
    assert args.model == models.get_model_class(preset.model).__name__
    assert (args.batch_size, args.lr, args.optimizer, args.epochs, args.patience, args.seed) == (
        preset.batch_size, 1e-3, "adam", 100, 2, 2019)
    assert args.embed_l2 == preset.embed_l2 and hparams["embed_dim"] == preset.embed_size
    assert (args.clip_grad_norm, args.embed_l2_mode) == (10.0, "table")  # FuxiCTR's clip and table regularizer
    assert {k: hparams[k] for k in preset.hparams} == preset.hparams
    assert preset.auc is not None and 0.79 < preset.auc < 0.82 and 0.43 < preset.logloss < 0.46


def test_published_numbers_are_the_bars_readme_values():
    assert (get_preset("DeepFM_criteo_x4_001").auc, get_preset("DeepFM_criteo_x4_001").logloss) == (0.814332, 0.437584)
    assert get_preset("dcn_CRITEO_x4_001").name == "DCN_criteo_x4_001"
    assert get_preset("AutoInt+_criteo_x4_001").source.endswith("/ranking/ctr/AutoInt/AutoInt+_criteo_x4_001")
    assert SHARED_FLAGS["batch_size"] == 10000
    assert (get_preset("FinalNet_criteo_x4_001").batch_size, get_preset("FGCNN_criteo_x4_001").batch_size) == (8192, 5000)


def test_command_line_flags_win_over_the_preset():
    args, hparams = train.parse_args(["--preset", "DeepFM_criteo_x4_001", "--lr", "0.01", "--hidden_units", "8",
                                      "--batch_norm", "--embed_size", "4"])
    assert args.lr == 0.01 and args.batch_size == 10000
    assert hparams["hidden_units"] == (8,) and hparams["batch_norm"] is True and hparams["embed_dim"] == 4
    assert hparams["dropout"] == 0.2


def test_unknown_preset_lists_the_valid_ones(capsys: pytest.CaptureFixture):
    assert train.main(["--preset", "DeepFM_x"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'DeepFM_x'" in err and "DeepFM_criteo_x4_001" in err and "ONN_criteo_x4_001" in err
    with pytest.raises(ValueError, match="valid presets"):
        preset_argv("nope")


def test_preset_refuses_another_model_and_resume():
    with pytest.raises(train.UsageError, match="is a DCN configuration but --model is DeepFM"):
        train.parse_args(["--preset", "DCN_criteo_x4_001", "--model", "DeepFM"])
    with pytest.raises(train.UsageError, match="drop it when passing --resume"):
        train.parse_args(["--preset", "DCN_criteo_x4_001", "--resume", "somewhere"])


def test_speed_pipeline_runs_with_bench_data_s_own_options(tmp_path):
    """benchmark.py's speed section times preprocessing and the loader through bench_data.py's functions; their
    options come from bench_data's parser, so a new bench_data flag cannot break it (it once lacked --repeat)."""
    out = benchmark.bench_pipeline(3000, 256, tmp_path)
    assert out["rows"] == 3000 and (tmp_path / "store").is_dir()
    assert {"preprocessing", "loader"} <= set(out)


@pytest.mark.parametrize("name", ["DeepFM", "MMoE"])
def test_speed_table_times_single_and_multitask_models(tmp_path, name: str):
    """The speed table's per-model measurement: a multi-task model trains on the label twice (two binary
    tasks; a schema of two labels needs a task type for each, which it once lacked)."""
    benchmark.bench_pipeline(3000, 256, tmp_path)
    out = benchmark.measure_training(str(tmp_path / "store"), name, "cpu", 64, 1, 1)
    assert out["samples_per_s"] > 0 and out["params"] > 0


def test_bench_features_frappe_models_all_leaves_out_multitask_and_sequence_models():
    import bench_features
    chosen = bench_features.parse_args(["--frappe-models", "all"]).frappe_models
    assert "FwFM" in chosen and "TwoTower" in chosen
    assert {"MMoE", "PLE", "ESMM", "SharedBottom", "DIN"}.isdisjoint(chosen)
    assert len(chosen) == len(models.model_names()) - 8  # 4 multi-task, 4 sequence models
    assert bench_features.parse_args(["--frappe-models", "deepfm,LR"]).frappe_models == ["DeepFM", "LR"]
    assert bench_features.parse_args([]).frappe_models == list(bench_features.FRAPPE_MODELS)
    with pytest.raises(ValueError, match="valid models"):
        bench_features.parse_args(["--frappe-models", "NoSuchModel"])


def test_bench_ab_child_times_a_model_and_the_parent_needs_a_checkout(tmp_path, capsys):
    import bench_ab
    assert bench_ab.child("FM", batch_size=64, vocab=10, steps=1)["samples_per_s"] > 0
    assert bench_ab.child("FM", batch_size=64, vocab=10, steps=1, optimizer_impl="train")["samples_per_s"] > 0
    with pytest.raises(SystemExit):
        bench_ab.parse_args(["--before", str(tmp_path), "--models", "FM"])  # not a checkout of this repo
    assert "--before must name a checkout" in capsys.readouterr().err


def test_bench_sparse_embed_times_what_train_py_builds(capsys: pytest.CaptureFixture):
    import bench_sparse_embed

    bench_sparse_embed.main(["--vocab", "400", "--fields", "4", "--batch-size", "32", "--steps", "1"])
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == list(bench_sparse_embed.CONTENDERS)
    model = bench_sparse_embed.build(4, 400, 0)
    (adagrad,) = bench_sparse_embed.optimizers(model, "sparse adagrad")
    assert isinstance(adagrad, torch.optim.Adagrad) and model.embedding.table.sparse
    (adam,) = bench_sparse_embed.optimizers(model, "dense adam")
    assert isinstance(adam, torch.optim.Adam) and not model.embedding.table.sparse
