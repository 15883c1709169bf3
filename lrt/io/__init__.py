"""File formats lrt reads and writes: TREC runs/qrels, topics (JSON, MS MARCO `queries.tsv`, BEIR
`queries.jsonl`), passage corpora (MS MARCO `collection.tsv`, BEIR `corpus.jsonl`, streamed keeping only
the docids a run needs), BEIR folders (`corpus.jsonl`, `queries.jsonl`, `qrels/*.tsv`)."""
from __future__ import annotations

from lrt.io.trec import (
    Qrels,
    Run,
    beir_file,
    read_corpus,
    read_corpus_subset,
    read_qrels,
    read_run,
    read_topics,
    trec_order,
    write_run,
)

__all__ = [
    "Qrels",
    "Run",
    "beir_file",
    "read_corpus",
    "read_corpus_subset",
    "read_qrels",
    "read_run",
    "read_topics",
    "trec_order",
    "write_run",
]
