"""lrt: learning-to-rank training for LLM listwise rerankers.

Data flows prep -> data (schema, prompts, collate) -> scoring -> losses -> train -> export ->
rerank / evaluate. Heavy modules (torch, transformers) are imported lazily so that
`lrt validate` and `lrt eval` start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Reranker"]


def __getattr__(name: str):  # lazy: keep `import lrt` cheap
    if name == "Reranker":
        from lrt.rerank import Reranker

        return Reranker
    raise AttributeError(name)
