"""`lrt eval --baseline`: paired significance of runs against a baseline, checked on the shipped DL19 runs
against an independent computation (test_evaluate's plain-Python trec_eval nDCG@10, scipy's paired t and permutation test)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.evaluate import holm
from test_evaluate import _trec_ndcg  # the suite's from-scratch trec_eval ndcg_cut

DATA = Path(__file__).resolve().parents[1] / "lrt/resources/data/fullrank"
QRELS, BM25, RM100 = (DATA / "qrels.dl19-passage.txt", DATA / "dl19-bm25_top100.txt",
                      DATA / "dl19-RankMistral100_top100_passnum-1.txt")


def _lrt_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrt.cli", "eval", *args], capture_output=True, text=True,
                          timeout=300)


def test_rankmistral_vs_bm25_on_dl19_matches_an_independent_computation() -> None:
    stats = pytest.importorskip("scipy.stats")
    res = _lrt_eval("--qrels", str(QRELS), "--run", str(RM100), "--baseline", str(BM25), "--json")
    assert res.returncode == 0, res.stderr
    tests = {t["measure"]: t for t in json.loads(res.stdout)["baseline"]["tests"]}
    got = tests["nDCG@10"]
    a, b = _trec_ndcg(RM100, QRELS, 10), _trec_ndcg(BM25, QRELS, 10)
    qids = sorted(set(a) & set(b))
    d = [a[q] - b[q] for q in qids]
    assert got["queries"] == len(qids) == 43
    assert (got["wins"], got["losses"], got["ties"]) == (sum(x > 1e-12 for x in d), sum(x < -1e-12 for x in d),
                                                          sum(abs(x) <= 1e-12 for x in d)) == (37, 4, 2)
    assert got["diff"] == pytest.approx(sum(d) / len(d), abs=1e-4)
    assert got["t"] == pytest.approx(stats.ttest_rel([a[q] for q in qids], [b[q] for q in qids]).statistic, rel=1e-3)
    assert got["p"] < 0.01 and got["p_holm"] == got["p"]  # one run: Holm changes nothing
    # a measure with a p well above the floor: the randomization p agrees with scipy's sign-flip test
    nd1 = tests["nDCG@1"]
    assert 0.001 < nd1["p"] < 0.05
    res1 = _lrt_eval("--qrels", str(QRELS), "--run", str(RM100), "--baseline", str(BM25), "--json",
                     "--measures", "nDCG@1", "--per-query")
    runs = json.loads(res1.stdout)["runs"]
    res_b = json.loads(_lrt_eval("--qrels", str(QRELS), "--run", str(BM25), "--json", "--measures", "nDCG@1",
                                 "--per-query").stdout)["runs"]
    pa, pb = next(iter(runs.values()))["per_query"], next(iter(res_b.values()))["per_query"]
    x = [pa[q]["nDCG@1"] for q in sorted(pa)]
    y = [pb[q]["nDCG@1"] for q in sorted(pa)]
    ref = stats.permutation_test((x, y), lambda u, v: sum(u) / len(u) - sum(v) / len(v), vectorized=False,
                                 permutation_type="samples", n_resamples=20000, random_state=1)
    assert abs(nd1["p"] - ref.pvalue) < 0.006  # two Monte Carlo estimates, each with sd ~ 0.0009


def test_table_output_names_the_baseline_and_counts() -> None:
    res = _lrt_eval("--qrels", str(QRELS), "--run", str(RM100), "--baseline", str(BM25), "--measures", "nDCG@10")
    assert res.returncode == 0, res.stderr
    assert "against the baseline" in res.stdout and "20000 sign flips" in res.stdout
    row = [ln for ln in res.stdout.splitlines() if ln.startswith(RM100.name) and "nDCG@10" in ln][-1].split()
    assert row[1:6] == ["nDCG@10", "0.2197", "37", "2", "4"] and float(row[7]) < 0.01


def test_holm_against_hand_computed_values() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_several_runs_share_one_holm_family(tmp_path: Path) -> None:
    copy = tmp_path / "rm100-copy.txt"
    copy.write_text(RM100.read_text())
    res = _lrt_eval("--qrels", str(QRELS), "--run", str(RM100), "--run", str(copy), "--run", str(BM25),
                    "--baseline", str(BM25), "--measures", "nDCG@10,nDCG@1", "--json")
    assert res.returncode == 0, res.stderr
    rows = [t for t in json.loads(res.stdout)["baseline"]["tests"] if t["measure"] == "nDCG@1"]
    assert len(rows) == 3
    by = {Path(r["run"]).name: r for r in rows}
    assert by["dl19-bm25_top100.txt"]["p"] == 1.0 and by["dl19-bm25_top100.txt"]["diff"] == 0.0
    rm = by[RM100.name]
    assert rm["p_holm"] == pytest.approx(min(1.0, 3 * rm["p"]))  # the smallest of three equal-ish p's: x3


def test_binary_qrels_get_measures_that_count_grade_one(tmp_path: Path) -> None:
    binary = tmp_path / "binary.qrels"
    binary.write_text("".join(f"{q} 0 {d} {int(int(g) > 1)}\n" for q, _, d, g in
                              (ln.split() for ln in QRELS.read_text().splitlines())))
    res = _lrt_eval("--qrels", str(binary), "--run", str(RM100), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["measures"] == ["nDCG@1", "nDCG@5", "nDCG@10", "RR@10", "R@100"]
    mean = next(iter(out["runs"].values()))["mean"]
    assert mean["RR@10"] > 0.5 and mean["R@100"] > 0.3
    graded = json.loads(_lrt_eval("--qrels", str(QRELS), "--run", str(RM100), "--json").stdout)
    assert graded["measures"][3:] == ["RR(rel=2)@10", "R(rel=2)@100"]


@pytest.mark.parametrize("args, needle", [
    (["--resamples", "5"], "--resamples 5"),
    (["--baseline", "/nonexistent/run.txt"], "/nonexistent/run.txt"),
])
def test_bad_baseline_arguments_are_one_error(args: list[str], needle: str) -> None:
    res = _lrt_eval("--qrels", str(QRELS), "--run", str(RM100), *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and needle in err[0]
