"""Training: objective, the DDP/DeepSpeed-wrapped module, loop, checkpoints, metrics.

The package is also the Python entry point: `lrt.train(recipe)` trains and returns a `TrainResult`
(the loop and its heavy imports load on the first call).
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _TrainModule(types.ModuleType):
    """`lrt.train` stays a package (lrt.train.loop, ...) and is callable as `lrt.train(recipe)`."""

    def __call__(self, recipe: Any) -> Any:
        from lrt.train.loop import train

        return train(recipe)


sys.modules[__name__].__class__ = _TrainModule
