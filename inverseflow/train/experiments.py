"""The paper's named experiments (DESIGN §10), run through the ordinary training loop.

Each name fixes a backbone and its k×k layer; the dataset's preset sizes it (MNIST: the
paper's L=2, K=16, width 512 for the Glow backbone; 3 blocks × 16 layers, 2×2, for the
CNN). Where a row differs from the paper's released code, ``differences`` says how.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .checkpoint import save_json
from .loop import TrainConfig, train


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    paper_name: str        # the experiment's name in the paper's code
    backbone: str          # "glow" or "cnn"
    description: str
    model: str             # a key of models.MODELS
    options: tuple         # (keyword, value) pairs for the model, beyond the preset
    differences: str = ""

    def model_options(self) -> dict:
        return dict(self.options)


_GLOW_STEP = ("ActNorm → {conv} → per-element spline (5 bins, tail bound 20) → affine "
              "coupling, no 1×1")
_UNIT_DIAGONAL = ("our convolutions have a unit diagonal (log-det 0); the scale the "
                  "paper's kernels learn on their diagonal lives in the ActNorm")
_CNN_ACTNORM = ("an ActNorm before every conv (our inverse/FInC/emerging convs have a unit "
                "diagonal, so the paper's learned diagonal scale lives there; every CNN row "
                "keeps it, so that the rows differ only in the conv)")
_CORNERS = "; single-corner layers turn through TL, TR, BL, BR"

EXPERIMENTS = {e.name: e for e in [
    Experiment("if-glow", "if_glow_mnist", "glow",
               "Glow backbone, Inverse-Flow: " + _GLOW_STEP.format(
                   conv="3×3 inverse conv (TL, all channels, solved in the density pass)"),
               "inverseflow", (("layer", "inverse"), ("order", "TL"), ("kernel_size", 3),
                               ("solve_on", "density"), ("step_layout", "paper")),
               _UNIT_DIAGONAL),
    Experiment("finc-glow", "ff_glow_mnist", "glow",
               "Glow backbone, FInC Flow: " + _GLOW_STEP.format(
                   conv="3×3 quad conv (solved in the sampling pass)"),
               "inverseflow", (("layer", "finc"), ("kernel_size", 3), ("step_layout", "paper")),
               _UNIT_DIAGONAL),
    Experiment("emerging-glow", "emerging", "glow",
               "Glow backbone, Emerging: " + _GLOW_STEP.format(
                   conv="3×3 emerging conv (TL then BR, solved in the sampling pass)"),
               "inverseflow", (("layer", "emerging"), ("kernel_size", 3),
                               ("step_layout", "paper")),
               _UNIT_DIAGONAL + "; the paper's code may place the emerging conv in a Glow "
               "step with a 1×1 conv; here it sits in the same step as if-glow so that only "
               "the conv differs"),
    Experiment("glow", "conv1x1_glow", "glow",
               "Glow backbone, Glow 1×1: ActNorm → invertible 1×1 (LU) → affine coupling",
               "glow", ()),
    Experiment("if-cnn", "if_cnn_mnist", "cnn",
               "CNN backbone, Inverse-Flow: blocks of [2×2 inverse conv (density pass) → "
               "smooth leaky ReLU], squeeze between blocks",
               "convflow", (("layer", "inverse"), ("kernel_size", 2),
                            ("activation", "smooth-leaky-relu")), _CNN_ACTNORM + _CORNERS),
    Experiment("finc-cnn", "ff_cnn_mnist", "cnn",
               "CNN backbone, FInC: 2×2 quad conv (single corners where the channels do not "
               "divide by 4; sampling pass) → smooth leaky ReLU",
               "convflow", (("layer", "finc"), ("kernel_size", 2),
                            ("activation", "smooth-leaky-relu")),
               _CNN_ACTNORM + _CORNERS + "; MNIST's first block has 1 channel, so its "
               "FInC layers use single corners"),
    Experiment("emerging-cnn", "emerging_cnn_mnist", "cnn",
               "CNN backbone, Emerging: 2×2 emerging conv (TL then BR, sampling pass) → "
               "smooth leaky ReLU",
               "convflow", (("layer", "emerging"), ("kernel_size", 2),
                            ("activation", "smooth-leaky-relu")), _CNN_ACTNORM),
    Experiment("exponential-cnn", "exponential_cnn_mnist", "cnn",
               "CNN backbone, convolution exponential: 2×2 exp(M) conv → smooth leaky ReLU",
               "convflow", (("layer", "conv-exp"), ("kernel_size", 2),
                            ("activation", "smooth-leaky-relu")),
               _CNN_ACTNORM + "; the kernel is norm-limited by a bound rather than "
               "power iteration"),
]}

# The size overrides each backbone accepts (CLI flag → model keyword).
_SIZE_KEYS = {"glow": {"levels": "levels", "flow_steps": "steps",
                       "coupling_width": "coupling_width"},
              "cnn": {"blocks": "blocks", "flow_steps": "steps", "activation": "activation"}}

# The paper trains with Adam, batch 100 and gradient clipping.
PAPER_BATCH_SIZE = 100
UNLIMITED_STEPS = 10**9

# The TrainConfig fields `inverseflow experiment` takes from the run options it shares with
# `train`; with its own (steps, time budget, out, --quiet, the model's options) they are
# every field it sets, which a refused --resume may name.
RUN_FIELDS = ("data_dir", "batch_size", "lr", "warmup", "grad_clip", "seed", "device",
              "checkpoint_every", "eval_limit", "resume")
COMMAND_FIELDS = frozenset(RUN_FIELDS + ("steps", "time_budget", "out", "progress",
                                         "model_options"))


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} "
                         "(inverseflow experiment --list)")
    return EXPERIMENTS[name]


def listing() -> str:
    width = max(map(len, EXPERIMENTS))
    return "\n".join(f"{e.name:<{width}}  {e.description}" for e in EXPERIMENTS.values())


def train_config(name: str, dataset: str, out: str, steps: int | None = None,
                 time_budget: float | None = None, sizes: dict | None = None,
                 **train_fields) -> TrainConfig:
    """The TrainConfig of experiment ``name``. ``sizes`` overrides the preset's model size
    (``levels``, ``flow_steps``, ``coupling_width`` for the Glow backbone; ``blocks``,
    ``flow_steps``, ``activation`` for the CNN); ``train_fields`` go to TrainConfig."""
    experiment = get(name)
    if steps is None and time_budget is None:
        raise ValueError("give --steps, --time-budget or both")
    options = experiment.model_options()
    allowed = _SIZE_KEYS[experiment.backbone]
    for key, value in (sizes or {}).items():
        if value is None:
            continue
        if key not in allowed:
            raise ValueError(f"{key} does not apply to the {experiment.backbone} backbone of "
                             f"{name!r}; it takes {', '.join(sorted(allowed))}")
        options[allowed[key]] = value
    train_fields.setdefault("batch_size", PAPER_BATCH_SIZE)
    return TrainConfig(dataset=dataset, out=out, steps=steps or UNLIMITED_STEPS,
                       time_budget=time_budget, model=experiment.model,
                       model_options=options, **train_fields)


def run(name: str, config: TrainConfig) -> dict:
    """Trains ``config`` and adds the experiment's name and notes to metrics.json."""
    metrics = train(config, command_fields=COMMAND_FIELDS)
    if metrics:
        experiment = get(name)
        metrics.update(experiment=name, paper_name=experiment.paper_name,
                       backbone=experiment.backbone, differences=experiment.differences)
        save_json(metrics, Path(config.out) / "metrics.json")
    return metrics
