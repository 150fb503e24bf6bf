"""Whisper models: the variant table, the factory, bundled weights and the CT2 converter."""

from kidwhisper.models.factory import ModelFactory, WhisperModel, load_model
from kidwhisper.models.variants import VARIANTS, Variant, get_variant

__all__ = ["VARIANTS", "ModelFactory", "Variant", "WhisperModel", "get_variant", "load_model"]
