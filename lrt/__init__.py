"""lrt: learning-to-rank training for LLM listwise rerankers.

Data flows prep -> data (schema, prompts, collate) -> scoring -> losses -> train -> export ->
rerank / evaluate. Heavy modules (torch, transformers) are imported lazily so that
`lrt validate` and `lrt eval` start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Reranker", "Recipe", "load_recipe", "train"]


def __getattr__(name: str):  # lazy: keep `import lrt` cheap
    if name == "Reranker":
        from lrt.rerank import Reranker

        return Reranker
    if name in ("Recipe", "load_recipe"):
        import lrt.config

        return getattr(lrt.config, name)
    raise AttributeError(name)


# `lrt.train(recipe)`: the lrt.train package stays a package (lrt.train.loop, ...) and is callable as the
# public API's workflow (train -> RUN/final export -> plots, lrt.workflows.run.train -> TrainResult). The
# package itself is light (no torch); the workflow loads on the first call.
import lrt.train as _train_pkg  # noqa: E402


class _CallableTrain(type(_train_pkg)):
    def __call__(self, recipe):  # noqa: ANN001, ANN204
        from lrt.workflows.run import train

        return train(recipe)


_train_pkg.__class__ = _CallableTrain
