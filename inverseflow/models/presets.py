"""Model presets per dataset. MNIST follows the paper (L=2, K=16, coupling width 512)."""

from __future__ import annotations

from .convflow import ConvFlow
from .flow import Glow, InverseFlow
from .size import check_flow_steps

#: The Glow-backbone sizes per dataset name (``from_preset(name)``): ``image_shape``, L
#: ``levels``, K ``steps`` and ``coupling_width``; MNIST follows the paper (L=2, K=16, 512).
PRESETS = {
    "digits": dict(image_shape=(1, 8, 8), levels=2, steps=4, coupling_width=64),
    "mnist": dict(image_shape=(1, 28, 28), levels=2, steps=16, coupling_width=512),
    "fashion-mnist": dict(image_shape=(1, 28, 28), levels=2, steps=16, coupling_width=512),
    "cifar10": dict(image_shape=(3, 32, 32), levels=3, steps=16, coupling_width=512),
    "imagenet32": dict(image_shape=(3, 32, 32), levels=3, steps=16, coupling_width=512),
    "imagenet64": dict(image_shape=(3, 64, 64), levels=4, steps=16, coupling_width=512),
}

# The CNN backbone (DESIGN §10): the paper's if_cnn_mnist has 3 blocks of 16 layers, 2×2.
#: The CNN-backbone sizes per dataset name (``from_preset(name, model="convflow")``).
CONVFLOW_PRESETS = {
    "digits": dict(image_shape=(1, 8, 8), blocks=3, steps=4, kernel_size=2),
    "mnist": dict(image_shape=(1, 28, 28), blocks=3, steps=16, kernel_size=2),
    "fashion-mnist": dict(image_shape=(1, 28, 28), blocks=3, steps=16, kernel_size=2),
    "cifar10": dict(image_shape=(3, 32, 32), blocks=3, steps=16, kernel_size=2),
    "imagenet32": dict(image_shape=(3, 32, 32), blocks=3, steps=16, kernel_size=2),
    "imagenet64": dict(image_shape=(3, 64, 64), blocks=4, steps=16, kernel_size=2),
}

#: Model classes by the name that ``from_preset``, ``build_model`` and checkpoints use.
MODELS = {"inverseflow": InverseFlow, "glow": Glow, "convflow": ConvFlow}


def from_preset(name: str, model: str = "inverseflow", **overrides):
    """Builds ``model`` ("inverseflow", "glow" or "convflow") with the preset for dataset
    ``name``; ``overrides`` that are None keep the preset's value."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    table = CONVFLOW_PRESETS if model == "convflow" else PRESETS
    config = {**table[name], **{k: v for k, v in overrides.items() if v is not None}}
    check_flow_steps(model, config)
    return MODELS[model](**config)


def build_model(config: dict):
    """Rebuilds a model from its ``config`` (as stored in checkpoints)."""
    config = dict(config)
    kind = config.pop("model", "inverseflow")
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r} in config; choose from {', '.join(MODELS)}")
    config["image_shape"] = tuple(config["image_shape"])
    if kind == "glow":
        # Glow checkpoints of 0.1.0 recorded InverseFlow's k×k defaults, unused by Glow;
        # drop exactly those so the checkpoints still load (a real k×k option still fails).
        for key, legacy in _GLOW_LEGACY_KXK.items():
            if key in config and config[key] == legacy:
                del config[key]
    check_flow_steps(kind, config)
    return MODELS[kind](**config)


_GLOW_LEGACY_KXK = {"kernel_size": None, "solve_on": "density", "order": "quad"}
