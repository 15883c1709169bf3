"""A training run as `lrt train` and `lrt.train(recipe)` run it: the Trainer trains; then RUN/final."""
from __future__ import annotations

import os

from lrt.config import Recipe
from lrt.train.loop import TrainResult, Trainer


def train(recipe: Recipe) -> TrainResult:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = Trainer(recipe)
    try:
        res = trainer.fit()
    finally:
        trainer.release()  # the SIGTERM/SIGUSR1 handlers and the output_dir lock never outlive the run
    trainer.env.close()  # after a completed run only: a failed rank must not wait on its peers here
    return res
