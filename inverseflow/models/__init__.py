"""Inverse-Flow models (Nagar & Varma, AISTATS 2025) and the Glow 1×1 baseline."""

from .base import ImageFlow, bits_per_dim
from .convflow import ConvFlow
from .flow import Glow, InverseFlow
from .presets import CONVFLOW_PRESETS, MODELS, PRESETS, build_model, from_preset

__all__ = ["ImageFlow", "InverseFlow", "Glow", "ConvFlow", "bits_per_dim", "PRESETS", "CONVFLOW_PRESETS", "MODELS",
           "from_preset", "build_model"]
