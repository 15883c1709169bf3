"""A tiny, fully synthetic IR world and tokenizer for the CPU quickstart.

Why it exists: the quickstart must show a *measured* reranking gain in minutes on 2 CPU cores, with
no downloads. `world` generates seeded queries/passages with graded relevance and a weak first-stage
order; `tokenizer` builds a word-level fast tokenizer for it; `lrt/assets/tiny-backbone` is a tiny
Llama pretrained on segment lookup over the other half of the vocabulary (research/pretrain_lookup_backbone.py).
"""
from __future__ import annotations

from lrt.demo.world import World, make_split, list_ndcg, write_jsonl

__all__ = ["World", "make_split", "list_ndcg", "write_jsonl"]
