"""Turn a model's ranking text (`[C] > [A] > ...`) into a complete permutation of a window.

Teachers (data prep) and the reranker's `generate` mode both read free-form model output with the
same rules, so a permutation means the same thing wherever it is parsed. The rules are RankGPT's
`receive_permutation`: extract identifiers in order, keep the first of each duplicate, drop ids
that are not in the window, and append the window members the model omitted in their current
order. The result is always a strict total order; the repair counts say how much was invented, so
a data-prep job can report how noisy its teacher was instead of silently papering over it.

Dependency-free on purpose (standard library only): it is imported by light CLI paths.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

__all__ = ["ParsedPermutation", "parse_permutation", "format_permutation"]

_ALPHA = re.compile(r"\[\s*([A-Za-z])\s*\]")
_NUMBER = re.compile(r"\d+")
_SPECIAL = re.compile(r"<id_(\d+)>")


@dataclass(frozen=True)
class ParsedPermutation:
    """`order[r]` is the 0-based window index of the item ranked r-th (always a full permutation)."""

    order: list[int]
    extracted: int  # identifiers found in the text, before any repair
    duplicates: int  # repeated identifiers dropped (first occurrence kept)
    out_of_range: int  # identifiers that name no member of the window
    missing: int  # window members the text omitted, appended in current order

    @property
    def valid(self) -> bool:
        """True iff the text was already a complete permutation (no repair of any kind)."""
        return not (self.duplicates or self.out_of_range or self.missing)

    def repairs(self) -> dict[str, int]:
        return {"duplicates": self.duplicates, "out_of_range": self.out_of_range, "missing": self.missing}


@lru_cache(maxsize=256)
def _scheme(labels: tuple[str, ...]) -> str:
    """Which identifier syntax `labels` use: alpha (A..Z), numeric (1..n) or special (<id_k>)."""
    n = len(labels)
    if labels == tuple(str(i + 1) for i in range(n)):
        return "numeric"
    if labels == tuple(f"<id_{i + 1}>" for i in range(n)):
        return "special"
    if labels == tuple(chr(ord("A") + i) for i in range(n)) and n <= 26:
        return "alpha"
    raise ValueError(
        f"unsupported identifier labels {list(labels)[:4]}...: expected A..Z, 1..n or <id_1>..<id_n>"
    )


def _extract(text: str, scheme: str) -> list[int]:
    """1-based identifier numbers in textual order (unbounded: range is checked by the caller)."""
    if scheme == "alpha":  # letters count only inside brackets: prose is full of letters
        return [ord(c.upper()) - ord("A") + 1 for c in _ALPHA.findall(text)]
    if scheme == "numeric":  # RankGPT: every run of digits is an identifier, brackets or not
        return [int(d) for d in _NUMBER.findall(text)]
    return [int(d) for d in _SPECIAL.findall(text)]


def parse_permutation(text: str, labels: Sequence[str]) -> ParsedPermutation:
    """Parse `text` against the window's identifier `labels` with RankGPT's repair rules.

    >>> parse_permutation("[C] > [A] > [C] > [Z]", ["A", "B", "C"]).order
    [2, 0, 1]
    """
    n = len(labels)
    ids = _extract(text or "", _scheme(tuple(labels))) if n else []
    if len(ids) == n and set(ids) == set(range(1, n + 1)):  # fast path: already a permutation
        return ParsedPermutation([k - 1 for k in ids], n, 0, 0, 0)
    seen: set[int] = set()
    order: list[int] = []
    dup = oor = 0
    for k in ids:
        if k < 1 or k > n:
            oor += 1
        elif k - 1 in seen:
            dup += 1
        else:
            seen.add(k - 1)
            order.append(k - 1)
    missing = n - len(order)
    if missing:
        order.extend(i for i in range(n) if i not in seen)
    return ParsedPermutation(order, len(ids), dup, oor, missing)


def format_permutation(order: Sequence[int], labels: Sequence[str]) -> str:
    """The canonical `[C] > [A] > [B]` text for `order` (what a perfect teacher would answer)."""
    return " > ".join([f"[{labels[i]}]" for i in order])
