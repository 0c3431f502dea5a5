"""Training, evaluation and sampling: the loop, atomic checkpoints, DDP and sample grids."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .guards import TrainingInterrupted
from .loop import (TrainConfig, TrainingDiverged, batch_indices, evaluate, learning_rate,
                   load_trained, restore_model, train)

__all__ = ["TrainConfig", "TrainingDiverged", "train", "evaluate", "load_trained",
           "restore_model", "batch_indices", "learning_rate", "CheckpointError",
           "load_checkpoint", "save_checkpoint", "TrainingInterrupted"]
