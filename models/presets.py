"""BARS Criteo_x4_001 presets: the published configuration and test result of every model that has one.

The exact reproduction (the BARS Criteo_x4 files, https://huggingface.co/datasets/reczoo/Criteo_x4):

    python preprocess.py criteo --train data/raw/criteo_x4/train.csv --valid data/raw/criteo_x4/valid.csv \
        --test data/raw/criteo_x4/test.csv --out data/criteo          # min-count 10 on train, bucketized I fields
    python train.py --preset DeepFM_criteo_x4_001 --data data/criteo
    python train.py --preset DeepFM_criteo_x4_001 --data data/criteo --gpu_ids 0 --lr 2e-3   # given flags win

Source: the BARS benchmark (Zhu et al., "BARS: Towards Open Benchmarking for Recommender Systems", SIGIR 2022;
Zhu et al., "Open Benchmarking for Click-Through Rate Prediction", CIKM 2021), repository reczoo/BARS: one
``ranking/ctr/<Model>/<Model>_criteo_x4_001/README.md`` per model (its logged config and test result) and the
leaderboard ``docs/CTR/leaderboard/criteo_x4_001.csv``. ``auc`` / ``logloss`` below are the README's test
numbers, copied as published (FuxiCTR v1.0.2 runs; DCNv2, FinalMLP, FinalNet and MaskNet FuxiCTR v2.2.0 runs).

Every Criteo_x4_001 run shares: the Criteo_x4 train/valid/test files, min-count 10 and ``floor(ln(x)^2)``
bucketized dense fields (preprocess.py's criteo defaults), embedding 16 (FFM 4, ONN 8), batch 10000, Adam lr
1e-3, the LR times 0.1 after every evaluation without a better valid score, early stopping after 2 such
evaluations, at most 100 epochs, seed 2019, gradients clipped at norm 10 (FuxiCTR's trainer default
``max_gradient_norm=10``: ``--clip_grad_norm 10``) and no regularizer on the other weights (net_regularizer 0).
Model hyperparameters are the README's, in train.py's flag names.

``embed_l2`` is the README's embedding_regularizer, a float lambda, which FuxiCTR applies as
``lambda / 2 * ||W||^2`` to every embedding table (first-order ones included) at every step: v1.x
``BaseModel.add_regularization`` sums ``(lambda / p) * torch.norm(W, p) ** p`` (p = 2 for a float) over the
parameters named ``embedding_layer``, v2.x ``regularization_loss`` the same over the FeatureEmbeddingDict
parameters (v2.0: every nn.Embedding); for Criteo_x4_001, whose fields are all categorical, these are the same
tables. Every preset therefore sets ``--embed_l2_mode table`` (:meth:`layers.embedding.FeatureEmbedding.
l2_table_penalty`) with the published lambda; ``--embed_l2_mode batch`` (train.py's default) would regularize
only the rows a batch touches, ``lambda * ||rows||^2 / B``.

With the given split files, every preset is the published configuration in these respects (data split,
vocabulary, dense buckets, model, optimizer, schedule, clipping, regularizer). What still differs, so expect
close but not bit-identical numbers:

* the v1.0.2 runs (all but DCNv2, FinalMLP, FinalNet, MaskNet) pick the best epoch and decay the LR by
  ``AUC - logloss`` on valid (the logged ``monitor: {'AUC': 1, 'logloss': -1}``, read in the DeepFM and ONN
  logs); train.py monitors AUC, as the v2.2.0 runs do;
* FuxiCTR fills an empty I cell with 0 before bucketizing (``fill_na: 0``), so a missing I value shares the
  bucket of 0; preprocess.py keeps it apart (id 1, missing);
* random streams (init, shuffling, dropout) are torch's under another implementation, so no run matches bit
  for bit.

A store made from one raw train.txt (``python preprocess.py criteo --input train.txt``) is split 8:1:1 by
preprocess.py's seed instead: the same sizes, but each split holds other rows than the Criteo_x4 files.

Registered models without a preset: FNN, IFM, DIFM, DeepFEFM, MLR, FLEN, GDCN, DLRM, EDCN, EulerNet (no
Criteo_x4_001 run in BARS; DLRM and EDCN have Criteo_x1 runs only, FLEN an Avazu_x4 one), TwoTower (a matching
model), the behaviour-sequence models DIN, DIEN, BST, DSIN (Criteo has no histories) and the multi-task models
ESMM, MMoE, PLE, SharedBottom (Criteo has one label). FinalMLP, FinalNet and MaskNet are FuxiCTR v2.2.0 runs
(monitor AUC, like DCNv2); FwFM, AFN, AFN+, FiGNN, CCPM and FGCNN v1.0.2 runs. Two presets differ from their run
in the model itself: FwFM's one regularizer also covers the FwFM weights in FuxiCTR, and BARS' FGCNN gives
feature generation its own embedding table (share_embedding False).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BARS_URL = "https://github.com/reczoo/BARS/tree/main/ranking/ctr"
PREPROCESS_COMMAND = ("python preprocess.py criteo --train data/raw/criteo_x4/train.csv --valid "
                      "data/raw/criteo_x4/valid.csv --test data/raw/criteo_x4/test.csv --out data/criteo --min-count 10")
# The training flags every Criteo_x4_001 run shares (train.py's defaults already give lr decay 0.1 per
# non-improving evaluation: --lr_decay_factor 0.1 --lr_patience 0, and --min_lr 1e-6). FuxiCTR clips at 10 and
# regularizes whole tables (see the module docstring).
SHARED_FLAGS: dict[str, Any] = {"batch_size": 10000, "optimizer": "adam", "lr": 1e-3, "epochs": 100, "patience": 2,
                                "seed": 2019, "clip_grad_norm": 10.0, "embed_l2_mode": "table"}
DNN_1000x5 = (1000, 1000, 1000, 1000, 1000)


@dataclass(frozen=True)
class Preset:
    """One BARS experiment: ``name`` is its BARS id, ``folder`` its directory under ranking/ctr."""

    name: str
    model: str
    folder: str
    auc: float | None
    logloss: float | None
    embed_l2: float  # BARS' embedding_regularizer, applied as FuxiCTR does (embed_l2_mode "table")
    hparams: dict[str, Any] = field(default_factory=dict)
    embed_size: int = 16
    batch_size: int = SHARED_FLAGS["batch_size"]  # FinalNet's run used 8192, FGCNN's 5000

    @property
    def flags(self) -> dict[str, Any]:
        """train.py flags (names without ``--``) of this preset, shared ones included."""
        return {"model": self.model, **SHARED_FLAGS, "batch_size": self.batch_size, "embed_size": self.embed_size,
                "embed_l2": self.embed_l2, **self.hparams}

    @property
    def source(self) -> str:
        return f"{BARS_URL}/{self.folder}/{self.name}"

    def command(self, data: str = "data/criteo") -> str:
        return f"python train.py --preset {self.name} --data {data}"


def _preset(name: str, model: str, folder: str, auc: float, logloss: float, embed_l2: float,
            embed_size: int = 16, batch_size: int = SHARED_FLAGS["batch_size"], **hparams: Any) -> Preset:
    return Preset(name, model, folder, auc, logloss, embed_l2, hparams, embed_size, batch_size)


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
    # FwFM's one ``regularizer: 5e-06`` also regularizes FuxiCTR's FwFM weights; here only the tables.
    _preset("FwFM_criteo_x4_001", "FwFM", "FwFM", 0.811214, 0.440797, 5e-6, linear_type="LW"),
    _preset("AFN_criteo_x4_001", "AFN", "AFN", 0.811513, 0.440225, 1e-6, logarithmic_neurons=1200,
            hidden_units=(1000, 1000, 1000, 1000), activation="relu", dropout=0.2, batch_norm=True),
    _preset("AFN+_criteo_x4_001", "AFNPlus", "AFN", 0.813804, 0.438404, 1e-5, logarithmic_neurons=1200,
            hidden_units=(1000, 1000, 1000, 1000), activation="relu", dropout=0.2, batch_norm=True,
            dnn_hidden_units=DNN_1000x5, dnn_dropout=0.0),
    _preset("FiGNN_criteo_x4_001", "FiGNN", "FiGNN", 0.813803, 0.438285, 1e-5, gnn_layers=4, use_gru=True,
            use_residual=True, reuse_graph_layer=False),
    _preset("CCPM_criteo_x4_001", "CCPM", "CCPM", 0.810411, 0.441482, 1e-5, channels=(64, 128, 256),
            kernel_heights=(7, 5, 3), activation="tanh"),
    # BARS' FGCNN runs with share_embedding False (a second table for feature generation); ours shares one.
    _preset("FGCNN_criteo_x4_001", "FGCNN", "FGCNN", 0.812061, 0.439800, 1e-5, batch_size=5000,
            channels=(38, 40, 42, 44), kernel_heights=9, pooling_sizes=2, recombined_channels=3,
            conv_activation="tanh", conv_batch_norm=True, hidden_units=(1000, 1000, 1000), activation="relu",
            dropout=0.0, batch_norm=False),
    _preset("MaskNet_criteo_x4_001", "MaskNet", "MaskNet", 0.813420, 0.438748, 1e-5, structure="parallel",
            num_blocks=2, block_dim=500, reduction_ratio=0.1, hidden_units=DNN_1000x5, activation="relu",
            dropout=0.3, layer_norm=False, embed_layer_norm=False),
    _preset("FinalMLP_criteo_x4_001", "FinalMLP", "FinalMLP", 0.814584, 0.437353, 1e-5, hidden_units=DNN_1000x5,
            hidden_units2=(500,), activation="relu", dropout=0.2, dropout2=0.1, batch_norm=False, fusion_heads=50,
            feature_selection=False),
    _preset("FinalNet_criteo_x4_001", "FinalNet", "FinalNet", 0.814966, 0.437116, 1e-5, batch_size=8192,
            block_type="2B", feature_gating=True, hidden_units=(1000, 1000, 1000), block2_units=(512,),
            activation="relu", dropout=0.4, batch_norm=True, residual_type="concat"),
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
