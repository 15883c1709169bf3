"""`lrt eval`: published DL19/DL20 numbers, an independent trec_eval nDCG, ties, query sets, errors."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import ir_measures
import pytest

from lrt.errors import DataError, LrtError
from lrt.cli.eval import main
from lrt.evaluate import compare, evaluate, format_table, ndcg_at_k, parse_measures
from lrt.io import read_qrels, read_run

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "lrt" / "resources" / "data" / "fullrank"
PUBLISHED = [  # nDCG@10 with trec_eval semantics (lrt/resources/data/fullrank/PROVENANCE.md)
    ("dl19-RankMistral100_top100_passnum-1.txt", "qrels.dl19-passage.txt", 0.7255),
    ("dl19-bm25_top100.txt", "qrels.dl19-passage.txt", 0.5058),
    ("dl20-bm25_top100.txt", "qrels.dl20-passage.txt", 0.4796),
]


@pytest.fixture(scope="module")
def data() -> Path:
    """The real public data shipped in the repo (lrt/resources/data/fullrank); absence is a failure."""
    if not (DATA / "qrels.dl19-passage.txt").is_file():
        pytest.fail(f"shipped data missing: {DATA}")
    return DATA


def _eval_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("run,qrels,expected", PUBLISHED)
def test_main_reproduces_published_ndcg10(data: Path, run: str, qrels: str, expected: float,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = _eval_json(["--qrels", str(data / qrels), "--run", str(data / run)], capsys)
    assert out["query_set"] == "run_and_qrels"
    assert round(out["runs"][run]["mean"]["nDCG@10"], 4) == expected


def test_subprocess_cli(data: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lrt.cli", "eval", "--qrels", str(data / "qrels.dl19-passage.txt"),
         "--run", str(data / PUBLISHED[0][0]), "--measures", "nDCG@10,RR(rel=2)@10"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, _, row = proc.stdout.splitlines()
    assert header.split() == ["run", "nDCG@10", "RR(rel=2)@10", "queries"]
    assert row.split()[1:] == ["0.7255", "0.8270", "43"]


def _trec_ndcg(run_path: Path, qrels_path: Path, k: int) -> dict[str, float]:
    """Independent trec_eval ndcg_cut: sort by (score, docid) desc; linear gain; log2 discount;
    IDCG from all positive qrels of the query; queries in run ∩ qrels."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in qrels_path.read_text().splitlines():
        q, _, d, r = line.split()
        qrels[q][d] = int(r)
    run: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line in run_path.read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run[q].append((float(s), d))
    out = {}
    for q, docs in run.items():
        ranked = [d for _, d in sorted(docs, reverse=True)][:k]
        dcg = sum(max(qrels[q].get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sorted((g for g in qrels[q].values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        out[q] = dcg / idcg if idcg else 0.0
    return out


@pytest.mark.parametrize("run,qrels,expected", PUBLISHED[:2])
def test_ndcg_matches_handwritten_trec_eval(data: Path, run: str, qrels: str, expected: float) -> None:
    ref = _trec_ndcg(data / run, data / qrels, k=10)
    qrels_d, run_d = read_qrels(data / qrels), read_run(data / run)
    ours = evaluate(qrels_d, run_d, ["nDCG@10"], per_query=True)
    assert ours.keys() == ref.keys()
    assert all(math.isclose(ours[q]["nDCG@10"], ref[q], abs_tol=1e-12) for q in ref)
    assert round(sum(ref.values()) / len(ref), 4) == expected
    ranked = {q: [d for d, _ in v] for q, v in run_d.items()}
    assert math.isclose(ndcg_at_k(ranked, qrels_d, k=10), sum(ref.values()) / len(ref), abs_tol=1e-12)


def test_rr_and_recall_match_handwritten(data: Path) -> None:
    qrels, run = read_qrels(data / "qrels.dl20-passage.txt"), read_run(data / "dl20-bm25_top100.txt")
    ours = evaluate(qrels, run, ["RR(rel=2)@10", "R(rel=2)@100"], per_query=True)
    for q, pairs in run.items():
        docs = [d for d, _ in pairs]
        hits = [i for i, d in enumerate(docs[:10]) if qrels[q].get(d, 0) >= 2]
        rel = {d for d, g in qrels[q].items() if g >= 2}
        assert ours[q]["RR(rel=2)@10"] == pytest.approx(1 / (hits[0] + 1) if hits else 0.0)
        recall = len(rel & set(docs[:100])) / len(rel) if rel else 0.0
        assert ours[q]["R(rel=2)@100"] == pytest.approx(recall)


def test_ties_are_broken_like_trec_eval_for_every_provider() -> None:
    qrels = {"q": {"b": 2, "a": 0}}
    tied = {"q": [("a", 1.0), ("b", 1.0)]}  # trec_eval: docid descending -> "b" first
    res = evaluate(qrels, tied, ["nDCG@1", "RR(rel=2)@10"])
    assert res == {"nDCG@1": 1.0, "RR(rel=2)@10": 1.0}
    # Raw ir_measures disagrees with itself here: its msmarco provider (RR@k) sorts docid ascending.
    raw = ir_measures.calc_aggregate([ir_measures.parse_measure("RR(rel=2)@10")], qrels,
                                     {"q": {"a": 1.0, "b": 1.0}})
    assert list(raw.values()) == [0.5]
    as_lists = evaluate(qrels, {"q": ["b", "a"]}, ["nDCG@1"])
    as_dict = evaluate(qrels, {"q": {"a": 1.0, "b": 1.0}}, ["nDCG@1"])
    assert as_lists == as_dict == {"nDCG@1": 1.0}
    assert evaluate(qrels, {"q": ["a", "b"]}, ["nDCG@1"]) == {"nDCG@1": 0.0}


def test_query_set_run_and_qrels_vs_all_queries() -> None:
    qrels = {"q1": {"d": 1}, "q2": {"d": 1}}
    run = {"q1": ["d"], "q3": ["d"]}  # q3 has no qrels (ignored); q2 missing from run
    assert evaluate(qrels, run, ["nDCG@10"]) == {"nDCG@10": 1.0}
    assert evaluate(qrels, run, ["nDCG@10"], all_queries=True) == {"nDCG@10": 0.5}
    assert evaluate(qrels, run, ["nDCG@10"], per_query=True, all_queries=True) == \
        {"q1": {"nDCG@10": 1.0}, "q2": {"nDCG@10": 0.0}}
    with pytest.raises(LrtError, match="share no query ids"):
        evaluate(qrels, {"q9": ["d"]})


def test_grades_must_be_integers_for_trec_eval_but_ndcg_at_k_takes_floats() -> None:
    assert evaluate({"q": {"a": 2.0}}, {"q": ["a"]}, ["nDCG@1"]) == {"nDCG@1": 1.0}
    with pytest.raises(DataError, match="not an integer"):
        evaluate({"q": {"a": 0.5}}, {"q": ["a"]})
    grades = {"q": {"a": 0.5, "b": 1.5, "c": 0.0, "d": -1.0}}
    got = ndcg_at_k({"q": ["a", "b", "d"]}, grades, k=10)
    ideal = 1.5 + 0.5 / math.log2(3)
    assert got == pytest.approx((0.5 + 1.5 / math.log2(3)) / ideal)
    # Linear-gain nDCG is scale-invariant: same value as trec_eval on the grades doubled to ints.
    as_ints = {"q": {d: int(g * 2) for d, g in grades["q"].items()}}
    assert got == pytest.approx(evaluate(as_ints, {"q": ["a", "b", "d"]}, ["nDCG@10"])["nDCG@10"])
    assert ndcg_at_k({"q": ["c"], "x": ["a"]}, grades, k=1) == 0.0  # no gain; "x" not judged
    with pytest.raises(DataError, match="repeats a docid"):
        ndcg_at_k({"q": ["a", "a"]}, grades)


def test_compare_and_format_table(data: Path) -> None:
    qrels = read_qrels(data / "qrels.dl19-passage.txt")
    runs = {name: read_run(data / name) for name, _, _ in PUBLISHED[:2]}
    rows = compare(qrels, runs, ["nDCG@10", "RR(rel=2)@10"])
    assert [r["run"] for r in rows] == list(runs) and all(r["queries"] == 43 for r in rows)
    assert [round(r["nDCG@10"], 4) for r in rows] == [0.7255, 0.5058]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["run", "nDCG@10", "RR(rel=2)@10", "queries"]
    assert lines[2].split()[:2] == [PUBLISHED[0][0], "0.7255"] and len(lines) == 4


def test_main_multi_run_and_per_query(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--qrels", str(data / "qrels.dl19-passage.txt"), "--measures", "nDCG@10",
            "--run", str(data / PUBLISHED[0][0]), "--run", str(data / PUBLISHED[1][0])]
    out = _eval_json([*argv, "--per-query"], capsys)
    assert list(out["runs"]) == [PUBLISHED[0][0], PUBLISHED[1][0]]
    pq = out["runs"][PUBLISHED[1][0]]["per_query"]
    assert len(pq) == 43 and round(sum(v["nDCG@10"] for v in pq.values()) / 43, 4) == 0.5058
    assert main([*argv, "--per-query"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 2 * 44 and lines[-1].split() == [PUBLISHED[1][0], "all", "0.5058"]


@pytest.mark.parametrize("run_text,extra,needle", [
    ("q1 Q0 d1 1 2 t\nq1 Q0 d1 2 1 t\n", [], r"r\.run:2: duplicate docid 'd1'"),
    ("q1 Q0 d1 1 2 t\nq1 Q0 d2 2\n", [], r"r\.run:2: expected 6 columns"),
    ("", [], r"r\.run: run is empty"),
    ("q1 Q0 d1 1 2 t\n", ["--measures", "nDCG@10,wat@3"], "unknown measure 'wat@3'"),
    ("q9 Q0 d1 1 2 t\n", [], "share no query ids"),
])
def test_main_bad_input_exits_2_with_message(tmp_path: Path, run_text: str, extra: list[str],
                                             needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    qrels = tmp_path / "q.txt"
    qrels.write_text("q1 0 d1 1\n")
    (tmp_path / "r.run").write_text(run_text)
    assert main(["--qrels", str(qrels), "--run", str(tmp_path / "r.run"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(needle, err), err


def test_main_missing_qrels_names_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--qrels", str(tmp_path / "absent.txt"), "--run", str(tmp_path / "r.run")]) == 2
    assert "absent.txt: file not found" in capsys.readouterr().err


def test_parse_measures_and_bad_measures() -> None:
    ms = parse_measures("nDCG@10, P(rel=2,judged_only=False)@5 ,ndcg_cut.20,nDCG@10")
    assert [str(m) for m in ms] == ["nDCG@10", "P(rel=2)@5", "nDCG@20"]
    for bad in ("nDCG(foo=1)@10", "wat", ""):
        with pytest.raises(LrtError, match="measure"):
            parse_measures(bad)
    with pytest.raises(LrtError, match="cannot compute alpha_nDCG@10"):  # provider not installed
        evaluate({"q": {"a": 1}}, {"q": ["a"]}, ["alpha_nDCG@10"])
    with pytest.raises(DataError, match="pairs"):
        evaluate({"q": {"a": 1}}, {"q": [("a", "high")]})
    with pytest.raises(DataError, match="appears twice"):
        evaluate({"q": {"a": 1}}, {"q": ["a", "a"]})
