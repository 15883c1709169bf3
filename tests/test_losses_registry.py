"""Tests for lrt.losses.registry: name/param selection and early, helpful errors."""
from __future__ import annotations

import inspect

import pytest
import torch

import lrt.losses as L
from lrt.losses import RANKING_LOSSES, get_ranking_loss, loss_params

EXPECTED = {"ranknet", "lambdaloss", "listnet", "listmle", "approxndcg", "softmax_ce", "lipo_lambda", "bce", "pg_rank"}

PARAMS = {
    "ranknet": {"weighting": "label_diff", "reduction_pairs": "weights", "sigma": 2.0},
    "lambdaloss": {"scheme": "lambdarank", "k": 3, "sigma": 1.0, "mu": 5.0, "gain": "inverse"},
    "listnet": {"temperature": 2.0, "target": "ranks"},
    "listmle": {"top_k": 2, "alpha": "inv_log2"},
    "approxndcg": {"temperature": 0.1, "gain": "exp_safe"},
    "softmax_ce": {},
    "lipo_lambda": {"gain": "linear"},
    "bce": {"use_relevance": False, "top_k": 2},
    "pg_rank": {"samples": 4, "k": 3, "reward": "reasonrank", "entropy": 0.1},
}


def _batch():
    torch.manual_seed(0)
    return torch.randn(2, 4), torch.tensor([[1, 2, 3, 4], [3, 0, 1, 2]])


def test_every_loss_registered_and_selectable_with_params():
    assert set(RANKING_LOSSES) == EXPECTED
    scores, ranks = _batch()
    for name, params in PARAMS.items():
        loss = get_ranking_loss(name, **params)
        direct = RANKING_LOSSES[name](scores, ranks, None, **params)
        assert torch.equal(loss(scores, ranks, None), direct)
        assert loss(scores, ranks, None, reduction="none").shape == (2,)
        assert loss.__name__ == RANKING_LOSSES[name].__name__


def test_signatures_follow_the_interface():
    for name, fn in RANKING_LOSSES.items():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["scores", "ranks", "relevance"], name
        assert params[2].default is None
        assert loss_params(name)["reduction"] == "mean"


def test_unknown_loss_suggests_a_name():
    with pytest.raises(ValueError, match=r"Did you mean 'listmle'\?") as err:
        get_ranking_loss("listmel")
    assert "available" in str(err.value)


def test_unknown_param_lists_allowed_and_suggests():
    with pytest.raises(ValueError) as err:
        get_ranking_loss("ranknet", weigthing="first")
    msg = str(err.value)
    assert "Did you mean 'weighting'?" in msg and "reduction_pairs" in msg and "sigma" in msg


@pytest.mark.parametrize(
    ("name", "params", "hint"),
    [
        ("ranknet", {"weighting": "frist"}, "Did you mean 'first'?"),
        ("lambdaloss", {"scheme": "ndcg_loss2p"}, "Did you mean 'ndcg_loss2pp'?"),
        ("lambdaloss", {"k": 0}, "int >= 1"),
        ("listnet", {"temperature": 0.0}, "> 0"),
        ("listmle", {"alpha": "inv_log"}, "Did you mean 'inv_log2'?"),
        ("approxndcg", {"temperature": float("nan")}, "finite"),
        ("softmax_ce", {"reduction": "avg"}, "choose one of"),
    ],
)
def test_bad_values_fail_at_construction(name, params, hint):
    with pytest.raises(ValueError, match=hint.replace("?", r"\?")):
        get_ranking_loss(name, **params)


def test_public_api_exports():
    for sym in L.__all__:
        assert hasattr(L, sym), sym
