"""File formats lrt reads and writes (TREC runs/qrels, topics, passage corpora)."""
from __future__ import annotations

from lrt.io.trec import (
    Qrels,
    Run,
    read_corpus,
    read_qrels,
    read_run,
    read_topics,
    trec_order,
    write_run,
)

__all__ = [
    "Qrels",
    "Run",
    "read_corpus",
    "read_qrels",
    "read_run",
    "read_topics",
    "trec_order",
    "write_run",
]
