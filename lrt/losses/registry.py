"""Name → ranking loss registry, so recipes select losses by string with validated params.

`get_ranking_loss("ranknet", weighting="first")` fails *at construction* (i.e. when the recipe is
loaded, not hours into training) for an unknown loss, an unknown parameter or an illegal value,
with the allowed options and a did-you-mean suggestion.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable

from torch import Tensor

from lrt.losses._common import PARAM_CHOICES, check_param
from lrt.losses.ranking import approxndcg, lambdaloss, lipo_lambda, listmle, listnet, ranknet, softmax_ce

RankingLoss = Callable[..., Tensor]

RANKING_LOSSES: dict[str, RankingLoss] = {
    "ranknet": ranknet,
    "lambdaloss": lambdaloss,
    "listnet": listnet,
    "listmle": listmle,
    "approxndcg": approxndcg,
    "softmax_ce": softmax_ce,
    "lipo_lambda": lipo_lambda,
}


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def loss_params(name: str) -> dict[str, Any]:
    """Tunable parameters of a registered loss and their defaults (its keyword-only arguments)."""
    fn = _lookup(name)
    sig = inspect.signature(fn)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _lookup(name: str) -> RankingLoss:
    if name not in RANKING_LOSSES:
        options = sorted(RANKING_LOSSES)
        raise ValueError(f"unknown ranking loss {name!r}; available: {options}.{_did_you_mean(name, options)}")
    return RANKING_LOSSES[name]


def get_ranking_loss(name: str, **params: Any) -> RankingLoss:
    """The loss `name` with `params` bound: call it as `loss(scores, ranks, relevance)`.

    Parameter names are checked against the function signature and values against the allowed
    choices/ranges, so every mistake surfaces here as a ValueError.
    """
    fn = _lookup(name)
    allowed = loss_params(name)
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(
                f"ranking loss {name!r} has no parameter {key!r}; allowed: {sorted(allowed)}."
                f"{_did_you_mean(key, sorted(allowed))}"
            )
        try:
            check_param(key, value)
        except ValueError as err:
            choices = [c for c in PARAM_CHOICES.get(key, ()) if isinstance(c, str)]
            hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
            raise ValueError(f"ranking loss {name!r}: {err}.{hint}") from None
    bound = functools.partial(fn, **params)
    functools.update_wrapper(bound, fn)
    return bound
