"""Inverse-Flow models (Nagar & Varma, AISTATS 2025) and the Glow 1×1 baseline."""

from .flow import Glow, InverseFlow, bits_per_dim
from .presets import MODELS, PRESETS, build_model, from_preset

__all__ = ["InverseFlow", "Glow", "bits_per_dim", "PRESETS", "MODELS", "from_preset", "build_model"]
