"""`lrt rerank`: reranks the top-k of a TREC run, keeps the tail, writes unique decreasing scores;
bad inputs fail with a DataError naming the file and the fix (before the model loads), or are
counted and kept in first-stage order with --on-missing skip. Nothing is dropped silently."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrt.cli import main as lrt_main
from lrt.data.prompts import PromptTemplate
from lrt.errors import DataError
from lrt.io.trec import read_run
from lrt.rerank import RerankerMeta
from lrt.cli.rerank import main

DOCS = {q: [f"{q}d{i}" for i in range(1, 9)] for q in ("q1", "q2")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lrt.testing.tiny import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("cli") / "model", "chatml")
    tpl = PromptTemplate.preset("compact", max_passage_tokens=12)
    RerankerMeta(template=tpl.to_dict(), window=5, stride=2, max_length=512).save(d)
    return d


def write_inputs(d: Path, fmt: str = "tsv", drop_doc: str | None = None, drop_query: str | None = None,
                 run_lines: list[str] | None = None) -> dict[str, str]:
    run = d / "run.trec"
    lines = run_lines if run_lines is not None else [
        f"{q} Q0 {doc} {r} {10 - r:.1f} bm25" for q, docs in DOCS.items() for r, doc in enumerate(docs, 1)]
    run.write_text("".join(x + "\n" for x in lines))
    topics = {"q1": "quick fox", "q2": "lazy dog"}
    topics.pop(drop_query or "", None)
    corpus = {doc: f"the {doc} passage text about a fox" for docs in DOCS.values() for doc in docs}
    corpus.pop(drop_doc or "", None)
    if fmt == "json":
        (d / "topics.json").write_text(json.dumps({q: {"title": t} for q, t in topics.items()}))
        (d / "corpus.jsonl").write_text("".join(json.dumps({"docid": k, "text": v}) + "\n" for k, v in corpus.items()))
        tq, tc = d / "topics.json", d / "corpus.jsonl"
    else:
        (d / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()))
        (d / "corpus.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in corpus.items()))
        tq, tc = d / "topics.tsv", d / "corpus.tsv"
    return {"run": str(run), "queries": str(tq), "corpus": str(tc), "out": str(d / "out.trec")}


def argv(f: dict[str, str], model: str, *extra: str) -> list[str]:
    return ["--model", model, "--run", f["run"], "--queries", f["queries"], "--corpus", f["corpus"], "--out", f["out"],
            *extra]


def raw_scores(path: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in Path(path).read_text().splitlines():
        q, _, _, _, s, _ = line.split()
        out.setdefault(q, []).append(float(s))
    return out


@pytest.mark.parametrize("fmt", ["tsv", "json"])
def test_rerank_top_k_keeps_tail_and_writes_unique_scores(model_dir, tmp_path, fmt):
    f = write_inputs(tmp_path, fmt)
    assert main(argv(f, model_dir, "--top-k", "6", "--window", "4", "--stride", "2")) == 0
    run = read_run(f["out"])
    for q, docs in DOCS.items():
        got = [d for d, _ in run[q]]
        assert sorted(got[:6]) == sorted(docs[:6]) and got[6:] == docs[6:]
        s = raw_scores(f["out"])[q]
        assert all(a > b for a, b in zip(s, s[1:]))


def test_missing_doc_is_an_error_naming_the_corpus(model_dir, tmp_path):
    f = write_inputs(tmp_path, drop_doc="q2d3")
    with pytest.raises(DataError, match=r"corpus\.tsv.*q2d3.*--on-missing skip"):
        main(argv(f, model_dir))  # fails before loading any model


def test_doc_beyond_top_k_need_not_have_text(model_dir, tmp_path):
    f = write_inputs(tmp_path, drop_doc="q2d8")
    assert main(argv(f, model_dir, "--top-k", "3")) == 0
    assert [d for d, _ in read_run(f["out"])["q2"]][3:] == DOCS["q2"][3:]


def test_missing_query_is_an_error_naming_the_topics(model_dir, tmp_path):
    f = write_inputs(tmp_path, "json", drop_query="q2")
    with pytest.raises(DataError, match=r"topics\.json.*'q2'"):
        main(argv(f, model_dir))


def test_duplicate_docids_and_empty_run(model_dir, tmp_path, capsys):
    dup = ["q1 Q0 q1d1 1 2.0 bm25", "q1 Q0 q1d2 2 1.5 bm25", "q1 Q0 q1d1 3 1.0 bm25"]
    f = write_inputs(tmp_path, run_lines=dup)
    with pytest.raises(DataError, match=r"run\.trec:3: duplicate docid 'q1d1'"):
        main(argv(f, model_dir))
    f = write_inputs(tmp_path, run_lines=[])
    with pytest.raises(DataError, match=r"run\.trec: run is empty"):
        main(argv(f, model_dir))
    assert lrt_main(["rerank", *argv(f, model_dir)]) == 2  # one clear line, no traceback
    assert "error:" in capsys.readouterr().err


def test_on_missing_skip_counts_and_keeps_everything(model_dir, tmp_path, capsys):
    f = write_inputs(tmp_path, drop_doc="q1d2", drop_query="q2")
    stats = tmp_path / "stats.json"
    assert main(argv(f, model_dir, "--on-missing", "skip", "--top-k", "4", "--mode", "generate",
                     "--stats", str(stats))) == 0
    out = capsys.readouterr().out
    assert "1 queries not in" in out and "1 top-4 documents not in" in out
    assert "outputs were valid permutations" in out  # generate mode reports its valid share
    run = read_run(f["out"])
    q1 = [d for d, _ in run["q1"]]
    assert sorted(q1[:3]) == ["q1d1", "q1d3", "q1d4"] and q1[3] == "q1d2" and q1[4:] == DOCS["q1"][4:]
    assert [d for d, _ in run["q2"]] == DOCS["q2"]  # no text: first-stage order, not dropped
    st = json.loads(stats.read_text())
    assert st["skipped_queries"] == 1 and st["skipped_docs"] == 1 and 0 <= st["valid_share"] <= 1
