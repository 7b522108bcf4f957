"""BARS Criteo_x4_001 presets: the published configuration and test result of every model that has one.

    python preprocess.py criteo --input data/raw/criteo/train.txt --out data/criteo   # min-count 10, bucketized
    python train.py --preset DeepFM_criteo_x4_001 --data data/criteo
    python train.py --preset DeepFM_criteo_x4_001 --data data/criteo --gpu_ids 0 --lr 2e-3   # given flags win

Source: the BARS benchmark (Zhu et al., "BARS: Towards Open Benchmarking for Recommender Systems", SIGIR 2022;
Zhu et al., "Open Benchmarking for Click-Through Rate Prediction", CIKM 2021), repository reczoo/BARS: one
``ranking/ctr/<Model>/<Model>_criteo_x4_001/README.md`` per model (its logged config and test result) and the
leaderboard ``docs/CTR/leaderboard/criteo_x4_001.csv``. ``auc`` / ``logloss`` below are the README's test
numbers, copied as published (FuxiCTR v1.0.2 runs; DCNv2 a FuxiCTR v2.2.0 run).

Every Criteo_x4_001 run shares: min-count 10 and ``floor(ln(x)^2)`` bucketized dense fields (preprocess.py's
criteo defaults), embedding 16 (FFM 4, ONN 8), batch 10000, Adam lr 1e-3, the LR times 0.1 after every
evaluation without a better valid AUC, early stopping after 2 such evaluations, at most 100 epochs, seed 2019.
Model hyperparameters are the README's, in train.py's flag names; ``embed_l2`` is BARS' embedding_regularizer.

Registered models without a preset: FNN (no Criteo_x4_001 run in BARS), TwoTower (a matching model) and the
multi-task models ESMM, MMoE, PLE, SharedBottom (Criteo has one label).

What differs from the published runs, so expect close but not identical numbers:

* split: Criteo_x4 is a fixed 8:1:1 split shipped as CSV files; preprocess.py makes its own seeded 8:1:1 split
  of the same train.txt, so each split holds other rows;
* regularization: FuxiCTR adds ``lambda/2 * ||E||^2`` of the whole embedding table each step, train.py adds
  ``lambda * ||rows of the batch||^2 / B`` (``--embed_l2``): the same lambda, scaled differently;
* FuxiCTR clips gradients at norm 10; train.py does not clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BARS_URL = "https://github.com/reczoo/BARS/tree/main/ranking/ctr"
PREPROCESS_COMMAND = "python preprocess.py criteo --input data/raw/criteo/train.txt --out data/criteo --min-count 10"
# The training flags every Criteo_x4_001 run shares (train.py's defaults already give lr decay 0.1 per
# non-improving evaluation: --lr_decay_factor 0.1 --lr_patience 0, and --min_lr 1e-6).
SHARED_FLAGS: dict[str, Any] = {"batch_size": 10000, "optimizer": "adam", "lr": 1e-3, "epochs": 100, "patience": 2,
                                "seed": 2019}
DNN_1000x5 = (1000, 1000, 1000, 1000, 1000)


@dataclass(frozen=True)
class Preset:
    """One BARS experiment: ``name`` is its BARS id, ``folder`` its directory under ranking/ctr."""

    name: str
    model: str
    folder: str
    auc: float | None
    logloss: float | None
    embed_l2: float
    hparams: dict[str, Any] = field(default_factory=dict)
    embed_size: int = 16

    @property
    def flags(self) -> dict[str, Any]:
        """train.py flags (names without ``--``) of this preset, shared ones included."""
        return {"model": self.model, **SHARED_FLAGS, "embed_size": self.embed_size, "embed_l2": self.embed_l2,
                **self.hparams}

    @property
    def source(self) -> str:
        return f"{BARS_URL}/{self.folder}/{self.name}"

    def command(self, data: str = "data/criteo") -> str:
        return f"python train.py --preset {self.name} --data {data}"


def _preset(name: str, model: str, folder: str, auc: float, logloss: float, embed_l2: float,
            embed_size: int = 16, **hparams: Any) -> Preset:
    return Preset(name, model, folder, auc, logloss, embed_l2, hparams, embed_size)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _preset("LR_criteo_x4_001", "LR", "LR", 0.793359, 0.456754, 1e-7),
    _preset("FM_criteo_x4_001", "FM", "FM", 0.808607, 0.443109, 1e-5),
    _preset("FFM_criteo_x4_001", "FFM", "FFM", 0.811263, 0.440745, 1e-6, embed_size=4),
    _preset("AFM_criteo_x4_001", "AFM", "AFM", 0.805961, 0.445523, 1e-6, attention_dim=16, dropout=0.0),
    _preset("WideDeep_criteo_x4_001", "WDL", "WideDeep", 0.814232, 0.437693, 1e-5,
            hidden_units=DNN_1000x5, activation="relu", dropout=0.2, batch_norm=False),
    _preset("IPNN_criteo_x4_001", "PNN", "PNN", 0.814212, 0.437840, 1e-5, product_type="inner",
            hidden_units=(1000, 1000), activation="relu", dropout=0.2, batch_norm=False),
    _preset("NFM_criteo_x4_001", "NFM", "NFM", 0.809330, 0.442406, 1e-5, hidden_units=(1000, 1000, 1000),
            activation="relu", dropout=0.0, batch_norm=False, bi_batch_norm=False),
    _preset("DeepFM_criteo_x4_001", "DeepFM", "DeepFM", 0.814332, 0.437584, 1e-5,
            hidden_units=DNN_1000x5, activation="relu", dropout=0.2, batch_norm=False),
    _preset("DCN_criteo_x4_001", "DCN", "DCN", 0.814437, 0.437612, 1e-5, num_cross_layers=4,
            hidden_units=DNN_1000x5, activation="relu", dropout=0.2, batch_norm=False),
    _preset("DCNv2_criteo_x4_001", "DCNv2", "DCNv2", 0.814514, 0.437631, 1e-5, structure="parallel",
            num_cross_layers=3, low_rank=0, hidden_units=DNN_1000x5, activation="relu", dropout=0.1,
            batch_norm=True),
    _preset("xDeepFM_criteo_x4_001", "xDeepFM", "xDeepFM", 0.814331, 0.437602, 1e-4, cin_layer_sizes=(64, 64, 64),
            hidden_units=DNN_1000x5, activation="relu", dropout=0.2, batch_norm=False),
    _preset("AutoInt_criteo_x4_001", "AutoInt", "AutoInt", 0.811918, 0.439914, 1e-5, attention_layers=5,
            num_heads=1, attention_dim=64, use_residual=True, use_scale=False, layer_norm=False, use_wide=False),
    _preset("AutoInt+_criteo_x4_001", "AutoIntPlus", "AutoInt", 0.813240, 0.439023, 1e-5, attention_layers=5,
            num_heads=1, attention_dim=64, use_residual=True, use_scale=False, layer_norm=False, use_wide=True,
            hidden_units=DNN_1000x5, activation="relu", dropout=0.0, batch_norm=False),
    _preset("FiBiNET_criteo_x4_001", "FiBiNET", "FiBiNET", 0.813097, 0.438736, 1e-6,
            bilinear_type="field_interaction", reduction_ratio=3, hidden_units=(2000, 2000, 2000),
            activation="relu", dropout=0.0, batch_norm=False),
    _preset("ONN_criteo_x4_001", "ONN", "ONN", 0.814772, 0.437190, 1e-5, embed_size=8,
            hidden_units=(1000, 1000, 1000), activation="relu", dropout=0.4, batch_norm=False),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive); an unknown name is a ValueError listing the valid ones."""
    for key, preset in PRESETS.items():
        if key.lower() == name.lower():
            return preset
    raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)} (models/presets.py)")


def to_argv(flags: dict[str, Any]) -> list[str]:
    """``{"lr": 0.001, "hidden_units": (64, 64), "batch_norm": False}`` ->
    ``["--lr", "0.001", "--hidden_units", "64", "64", "--no-batch_norm"]`` (train.py's flag syntax)."""
    argv: list[str] = []
    for name, value in flags.items():
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, (tuple, list)):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def preset_argv(name: str) -> list[str]:
    """train.py argv of the preset called ``name``."""
    return to_argv(get_preset(name).flags)
