"""lrt: learning-to-rank training for LLM listwise rerankers.

Data flows prep -> data (schema, prompts, collate) -> scoring -> losses -> train -> export ->
rerank / evaluate. Heavy modules (torch, transformers) are imported lazily so that
`lrt validate` and `lrt eval` start fast.
"""
from __future__ import annotations

from lrt.version import __version__

__all__ = ["__version__", "Reranker", "Recipe", "load_recipe", "train"]


def __getattr__(name: str):  # PEP 562, lazy: keep `import lrt` cheap (no torch, no config)
    if name == "Reranker":
        from lrt.rerank import Reranker

        return Reranker
    if name in ("Recipe", "load_recipe"):
        import lrt.config

        return getattr(lrt.config, name)
    if name == "train":  # the lrt.train package, callable: lrt.train(recipe) -> TrainResult
        import importlib

        return importlib.import_module("lrt.train")
    raise AttributeError(name)
