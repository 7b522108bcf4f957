"""One registry: ``--model deepfm`` or ``--model DeepFM`` finds the class."""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from dataset.schema import Schema

MODELS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a model reachable by its (case-insensitive) class name."""
    key = cls.__name__.lower()
    if key in MODELS and MODELS[key] is not cls:
        raise ValueError(f"model name {cls.__name__} is registered twice")
    MODELS[key] = cls
    return cls


def model_names() -> list[str]:
    return sorted(cls.__name__ for cls in MODELS.values())


def get_model_class(name: str) -> type:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(model_names())}") from None


def model_hparams(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword hyperparameters of a model (its ``__init__`` arguments after ``schema``), with defaults."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "schema") and p.kind is p.POSITIONAL_OR_KEYWORD}


DENSE_INITS = {"xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_,
               "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, a=5 ** 0.5)}  # the last is torch's default


def init_dense_weights(model: nn.Module, init: str = "xavier_normal") -> None:
    """Glorot/Xavier init (or ``init``) for every Linear/Conv1d weight, zeros for their biases, and the same
    for layers that hold stacks of linear maps and say so with an ``init_dense(fn)`` method (the batched
    experts). Embeddings keep their own init; formula-specific parameters (cross and bilinear kernels)
    are Xavier-normal initialized by their layers."""
    if init not in DENSE_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {sorted(DENSE_INITS)}")
    fn = DENSE_INITS[init]
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "init_dense"):
            m.init_dense(fn)


def build_model(name: str, schema: Schema, dense_init: str = "xavier_normal", seq_pooling: str = "mean",
                **hparams: Any) -> nn.Module:
    """Build a registered model from a store's schema; unknown hyperparameters are an error.
    ``seq_pooling`` (mean / sum / max) is how the shared embedding pools sequence fields into fields."""
    cls = get_model_class(name)
    unknown = set(hparams) - set(model_hparams(cls))
    if unknown:
        raise ValueError(f"{cls.__name__} has no hyperparameter(s) {sorted(unknown)}; "
                         f"it takes {sorted(model_hparams(cls))}")
    model = cls(schema, **hparams)
    model.embedding.seq_pooling = seq_pooling
    init_dense_weights(model, dense_init)
    return model
