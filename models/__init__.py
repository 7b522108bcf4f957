"""Models, one file each; importing this package registers every one of them."""
import importlib
import pkgutil

from models.registry import MODELS, build_model, get_model_class, model_hparams, model_names, register

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry", "presets"):
        importlib.import_module(f"models.{_info.name}")

__all__ = ["MODELS", "build_model", "get_model_class", "model_hparams", "model_names", "register"]
