"""The paired randomization test the quickstart prints: against exact enumeration and scipy's t."""
from __future__ import annotations

import itertools
import random

import pytest

from lrt.evaluate import paired_test, per_query_ndcg


def _exact_p(d: list[float]) -> float:
    obs = abs(sum(d) / len(d))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d)) / len(d)) >= obs - 1e-12
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


@pytest.mark.parametrize("shift", [0.0, 0.15, 0.4])
def test_p_matches_exact_enumeration_and_t_matches_scipy(shift: float) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(int(shift * 100))
    a = {f"q{i}": rng.random() for i in range(12)}
    b = {q: v - shift + rng.gauss(0, 0.3) for q, v in a.items()}
    res = paired_test(a, b, resamples=40000, seed=1)
    d = [a[q] - b[q] for q in sorted(a)]
    exact = _exact_p(d)
    assert abs(res["p"] - exact) < 0.01 + 0.05 * exact  # Monte Carlo error at 40k resamples
    assert res["t"] == pytest.approx(scipy_stats.ttest_rel([a[q] for q in sorted(a)], [b[q] for q in sorted(a)]).statistic)
    assert res["wins"] + res["losses"] + res["ties"] == res["queries"] == 12
    assert res["mean_diff"] == pytest.approx(sum(d) / len(d))


def test_only_common_queries_count_and_p_is_never_zero() -> None:
    a = {"q1": 1.0, "q2": 0.9, "q3": 0.8, "extra": 0.0}
    b = {"q1": 0.0, "q2": 0.1, "q3": 0.2}
    res = paired_test(a, b, resamples=999)
    assert res["queries"] == 3 and res["p"] > 0 and res["wins"] == 3


def test_per_query_ndcg_averages_to_the_reported_mean() -> None:
    from lrt.evaluate import ndcg_at_k

    qrels = {"a": {"d1": 2.0, "d2": 0.0, "d3": 1.0}, "b": {"d1": 0.0, "d2": 3.0}}
    run = {"a": ["d2", "d3", "d1"], "b": ["d2", "d1"]}
    pq = per_query_ndcg(run, qrels)
    assert pq["b"] == 1.0 and 0 < pq["a"] < 1
    assert sum(pq.values()) / 2 == pytest.approx(ndcg_at_k(run, qrels, 10))
