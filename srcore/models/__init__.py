"""The model zoo: every architecture behind ``build(name, scale=..., **overrides)``."""

from srcore.models.base import Features, ModelConfig, SRModel
from srcore.models.checkpoint import load_model, load_weights, save_model
from srcore.models.presets import build, config_for, list_presets, preset, preset_names

__all__ = ["build", "config_for", "list_presets", "preset", "preset_names", "load_model", "load_weights",
           "save_model", "SRModel", "ModelConfig", "Features"]
