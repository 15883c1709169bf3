"""Complete-label construction on the 1,000 real GPT-4o fullrank rankings.

A `scores` teacher consistent with each `final_list` (score = -position) must rebuild it exactly
from `initial_list`: freeze_prefix in 45 calls/query, full_repass (9 passes) in 81; one pass only
fixes the top 10. This pins the window schedule to fullrank-ltr-eval-anchor.md A.1.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lrt.data.schema import Candidate, ListwiseExample
from lrt.prep.teachers import ScoresTeacher
from lrt.prep.windows import build_labels, one_pass, passes_needed, schedule

FULLRANK = Path(__file__).resolve().parents[1] / "lrt" / "resources" / "data" / "fullrank"
LABELS = FULLRANK / "msmarco_gpt-4o-2024-08-06_bm25-top100-slidingwindow_9passes.jsonl"


@pytest.fixture(scope="module")
def gpt4o():
    assert LABELS.is_file(), f"missing shipped data {LABELS}"
    rows = [json.loads(line) for line in LABELS.open()]
    assert len(rows) == 1000
    examples = [ListwiseExample(r["qid"], "q", [Candidate(d, "p") for d in r["initial_list"]], r["initial_list"])
                for r in rows]
    scores = {r["qid"]: {d: -float(i) for i, d in enumerate(r["final_list"])} for r in rows}
    return rows, examples, ScoresTeacher(scores, source="final_list")


def _per_query_calls(res) -> set[int]:
    per = {}
    for c in res.calls:
        per[c.qid] = per.get(c.qid, 0) + 1
    return set(per.values())


def test_freeze_prefix_rebuilds_every_final_list_in_45_calls(gpt4o):
    rows, examples, teacher = gpt4o
    res = build_labels(examples, teacher, window=20, stride=10, mode="freeze_prefix")
    assert all(res.rankings[r["qid"]] == r["final_list"] for r in rows)
    assert res.counts["calls"] == 45 * 1000 and _per_query_calls(res) == {45}
    assert res.counts["invalid_responses"] == 0 and not res.failed


def test_full_repass_with_9_passes_rebuilds_in_81_calls(gpt4o):
    rows, examples, teacher = gpt4o
    res = build_labels(examples, teacher, window=20, stride=10, mode="full_repass", num_passes=9, record_calls=False)
    assert all(res.rankings[r["qid"]] == r["final_list"] for r in rows)
    assert res.counts["calls"] == 81 * 1000


def test_single_pass_fixes_only_the_top_10(gpt4o):
    rows, examples, teacher = gpt4o
    res = build_labels(examples, teacher, window=20, stride=10, mode="single_pass")
    assert res.counts["calls"] == 9 * 1000
    assert all(res.rankings[r["qid"]][:10] == r["final_list"][:10] for r in rows)
    exact = sum(res.rankings[r["qid"]] == r["final_list"] for r in rows)
    assert exact < 50  # the tail is mostly still in partial BM25 order: not a complete label


def test_schedules_match_rankgpt_windows():
    assert one_pass(100, 20, 10) == [(a, a + 20) for a in range(80, -1, -10)]
    assert one_pass(95, 20, 10)[-2:] == [(5, 25), (0, 15)]  # clamped, no redundant [0, 5) window
    assert one_pass(15, 20, 10) == [(0, 15)] and one_pass(0, 20, 10) == []
    assert passes_needed(100, 20, 10) == 9 and passes_needed(20, 20, 10) == 1
    freeze = schedule(100, 20, 10, "freeze_prefix")
    assert [sum(1 for p, *_ in freeze if p == k) for k in range(9)] == list(range(9, 0, -1))
    assert all(a >= 10 * p for p, a, _ in freeze)  # pass k never touches the frozen prefix
    assert len(schedule(100, 20, 10, "full_repass")) == 81
    assert len(schedule(100, 20, 10, "freeze_prefix", num_passes=3)) == 9 + 8 + 7
    with pytest.raises(ValueError):
        schedule(100, 10, 10, "single_pass")


@pytest.mark.parametrize("n", [7, 33, 95, 100, 101])
@pytest.mark.parametrize("window,stride", [(20, 10), (10, 4), (5, 2)])
def test_consistent_teacher_gives_a_complete_sort_for_any_length(n, window, stride):
    rng = random.Random(n * 100 + window)
    docids = [f"d{i}" for i in range(n)]
    score = {d: rng.random() for d in docids}
    ex = ListwiseExample("q", "q", [Candidate(d, "p") for d in docids], docids)
    truth = sorted(docids, key=lambda d: -score[d])
    teacher = ScoresTeacher({"q": score}, source="random")
    for mode in ("freeze_prefix", "full_repass"):
        res = build_labels([ex], teacher, window=window, stride=stride, mode=mode)
        assert res.rankings["q"] == truth, mode


def test_ties_keep_current_order_and_unknown_docs_sink():
    ex = ListwiseExample("q", "q", [Candidate(d, "p") for d in "abcde"], list("abcde"))
    teacher = ScoresTeacher({"q": {"b": 1.0, "d": 1.0, "e": 2.0}}, source="s")
    res = build_labels([ex], teacher, window=5, stride=2)
    assert res.rankings["q"] == ["e", "b", "d", "a", "c"]
    assert teacher.stats()["missing_scores"] == 2
