"""Name → ranking loss registry, so recipes select losses by string with validated params.

`get_ranking_loss("ranknet", weighting="first")` fails *at construction* (i.e. when the recipe is
loaded, not hours into training) for an unknown loss, an unknown parameter or an illegal value,
with the allowed options and a did-you-mean suggestion.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Any, Callable

import torch
from torch import Tensor

from lrt.losses._common import PARAM_CHOICES, check_param
from lrt.losses.distill import kl_distill, margin_mse
from lrt.losses.pg_rank import pg_rank
from lrt.losses.pointwise import bce
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
    "bce": bce,  # pointwise: BCE against graded relevance (or the teacher's top-k)
    "pg_rank": pg_rank,  # policy gradient over sampled PL rankings; the objective passes per-list seeds
}

# Score distillation (lrt.losses.distill): same call, but the third tensor is the teacher's
# per-candidate scores (`batch["teacher_scores"]`), not relevance; kept apart from RANKING_LOSSES
# so code that calls every ranking loss as fn(scores, ranks[, relevance]) stays correct.
TEACHER_SCORE_LOSSES: dict[str, RankingLoss] = {"margin_mse": margin_mse, "kl_distill": kl_distill}


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def loss_params(name: str) -> dict[str, Any]:
    """Tunable parameters of a registered loss and their defaults (its keyword-only arguments)."""
    fn = _lookup(name)
    sig = inspect.signature(fn)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _lookup(name: str) -> RankingLoss:
    known = {**RANKING_LOSSES, **TEACHER_SCORE_LOSSES}
    if name not in known:
        options = sorted(known)
        raise ValueError(f"unknown ranking loss {name!r}; available: {options}.{_did_you_mean(name, options)}")
    return known[name]


# The `lm` term is not a ranking loss (it reads hidden states, see lrt.objective.objective) but its
# params are recipe data too: each is checked here, so `normalize: bogus` cannot silently mean "tokens".
LM_PARAMS: dict[str, str] = {
    "importance": "true or false (fullrank importance-aware token weights)",
    "alpha": "a finite number >= 0 (weight of separator/EOS tokens under importance)",
    "normalize": "one of 'tokens', 'weights'",
    "chunk_size": "null or an int >= 1 (vocabulary rows per logits chunk)",
    "kernel": "one of 'torch', 'liger'",
}
_LM_CHOICES = {"normalize": ("tokens", "weights"), "kernel": ("torch", "liger")}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _lm_ok(key: str, v: Any) -> bool:
    if key in _LM_CHOICES:
        return v in _LM_CHOICES[key]
    if key == "importance":
        return isinstance(v, bool)
    if key == "alpha":
        return _number(v) and v >= 0
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)  # chunk_size


def param_problems(name: str, params: dict[str, Any], in_recipe: bool = True) -> dict[str, str]:
    """Every bad parameter of loss `name` (`lm` or a registered ranking loss): {param: problem}.

    All of them, not the first: a recipe is fixed in one round. Unknown names get a did-you-mean,
    bad values the allowed choices or range. An unknown loss name is reported under "". In a
    recipe, `reduction` is the objective's (sum over lists / global list count), not the term's.
    """
    if name == "lipo_k":  # sequence-level LiPO: not a score loss, its params are checked by its module
        from lrt.losses.lipo_k import LIPO_K_PARAMS, lipo_k_problems

        allowed_k = sorted(LIPO_K_PARAMS)
        out_k = {key: f"loss 'lipo_k' has no parameter {key!r}; allowed: {allowed_k}.{_did_you_mean(key, allowed_k)}"
                 for key in params if key not in LIPO_K_PARAMS}
        return out_k | lipo_k_problems(params)
    if name == "lm":
        allowed: list[str] = sorted(LM_PARAMS)
    elif name in RANKING_LOSSES or name in TEACHER_SCORE_LOSSES:
        allowed = sorted(loss_params(name))
        if name == "lipo_lambda":
            allowed = sorted([*allowed, "beta"])
    else:
        options = sorted([*RANKING_LOSSES, *TEACHER_SCORE_LOSSES, "lm", "lipo_k"])
        close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return {"": f"unknown loss {name!r}{hint}; choose from {options}"}
    out: dict[str, str] = {}
    for key, value in params.items():
        if key not in allowed:
            what = "unknown lm param" if name == "lm" else f"ranking loss {name!r} has no parameter"
            out[key] = f"{what} {key!r}; allowed: {allowed}.{_did_you_mean(key, allowed)}"
        elif name == "lm":
            if not _lm_ok(key, value):
                hint = _did_you_mean(value, list(_LM_CHOICES.get(key, ()))) if isinstance(value, str) else ""
                out[key] = f"{key}={value!r} must be {LM_PARAMS[key]}.{hint}"
        elif key == "reduction" and in_recipe:
            out[key] = ("reduction is set by the objective (each term is summed over lists and divided by the "
                        "global list count, exact under accumulation); remove it")
        elif key == "beta":  # lipo_lambda's reference scale, used by the objective, not the loss function
            if not (_number(value) and value > 0):
                out[key] = f"beta={value!r} must be a finite number > 0"
        else:
            try:
                check_param(key, value)
            except ValueError as err:
                choices = [c for c in PARAM_CHOICES.get(key, ()) if isinstance(c, str)]
                hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
                out[key] = f"{err}.{hint}"
    return out


def check_loss_params(name: str, params: dict[str, Any], in_recipe: bool = True) -> None:
    """Raise one ValueError naming every bad parameter of loss `name`."""
    bad = param_problems(name, params, in_recipe)
    if bad:
        raise ValueError(f"loss {name!r}: " + "; ".join(f"params.{k}: {v}" if k else v for k, v in bad.items()))


def get_ranking_loss(name: str, **params: Any) -> RankingLoss:
    """The loss `name` with `params` bound: call it as `loss(scores, ranks, relevance)`.

    Parameter names are checked against the function signature and values against the allowed
    choices/ranges (all of them, in one ValueError), so every mistake surfaces here.
    """
    fn = _lookup(name)
    check_loss_params(name, params, in_recipe=False)
    bound = functools.partial(fn, **params)

    @functools.wraps(fn)
    def fp32_loss(scores: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # fp32 whatever autocast the caller runs under (the losses upcast their scores themselves)
        with torch.autocast(device_type=scores.device.type, enabled=False):
            return bound(scores, *args, **kwargs)

    return fp32_loss
