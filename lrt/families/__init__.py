"""The scoring-family registry: `get(name)` by the recipe's `scoring.mode` or an export's
`lrt_reranker.json` `mode`; `of_recipe(r)`, `of_meta(meta)`, `of_rerank_mode(mode)`.

Everything that differs between families is asked of the family (lrt.families.base.Family), never
decided by comparing mode strings elsewhere. Adding a family: a module and one entry here (and its
`scoring.mode` value with its declarative rules in lrt.config.SCORING_MODES).
"""
from __future__ import annotations

from typing import Any

from lrt.errors import LrtError
from lrt.suggest import did_you_mean
from lrt.families.base import Family
from lrt.families.listwise import LISTWISE
from lrt.families.pointwise import POINTWISE

FAMILIES: dict[str, Family] = {f.name: f for f in (LISTWISE, POINTWISE)}

__all__ = ["FAMILIES", "Family", "get", "of_meta", "of_recipe", "of_rerank_mode", "rerank_modes"]


def get(name: str) -> Family:
    """The family registered under `name`; an unknown name is one error with a did-you-mean."""
    fam = FAMILIES.get(name)
    if fam is None:
        raise LrtError(f"unknown scoring family {name!r}" + did_you_mean(name, FAMILIES, cutoff=0.5)
                       + f"; known: {', '.join(FAMILIES)}")
    return fam


def of_recipe(r: Any) -> Family:
    """The family a recipe trains (its `scoring.mode`)."""
    return get(r.scoring.mode)


def of_meta(meta: Any) -> Family:
    """The family of an export (RerankerMeta.mode; exports older than pointwise say first_token)."""
    return get(getattr(meta, "mode", None) or "first_token")


def rerank_modes() -> tuple[str, ...]:
    """Every rerank mode of every family, in registry order (first_token, full, generate, pointwise)."""
    return tuple(m for f in FAMILIES.values() for m in f.rerank_modes)


def of_rerank_mode(mode: str) -> Family:
    """The family that reranks in `mode` (e.g. full -> the listwise family)."""
    for fam in FAMILIES.values():
        if mode in fam.rerank_modes:
            return fam
    raise LrtError(f"unknown rerank mode {mode!r}" + did_you_mean(mode, rerank_modes(), cutoff=0.5)
                   + f"; choose one of {', '.join(rerank_modes())}")
