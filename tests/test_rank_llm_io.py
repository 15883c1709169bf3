"""rank_llm interop through rank_llm's own code (rank_llm.data 0.25): requests it writes are read by
`lrt rerank --requests`, the results lrt writes load with rank_llm's reader, and the ranking is the
one the TREC path gives for the same texts."""
from __future__ import annotations

import json

import pytest

from lrt.cli import main
from lrt.data.prompts import PromptTemplate
from lrt.data.schema import Candidate
from lrt.errors import DataError
from lrt.data.rank_llm import read_requests, write_requests
from lrt.io.trec import read_run
from lrt.rerank import RerankerMeta

rl = pytest.importorskip("rank_llm.data", reason="pip install --no-deps 'rank-llm>=0.25,<0.26' dacite")

TEXTS = {f"q{q}": [(f"q{q}d{i}", f"passage {i} of {q} about the quick fox", "Title" if i % 2 else None)
                   for i in range(7)] for q in (1, 2)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lrt.testing.tiny import save_tiny_model

    d = save_tiny_model(tmp_path_factory.mktemp("rl") / "model", "chatml", seed=4)
    RerankerMeta(template=PromptTemplate.preset("compact", max_passage_tokens=12).to_dict(), window=4, stride=2,
                 max_length=512).save(d)
    return d


def _rank_llm_requests(path):
    reqs = [rl.Request(query=rl.Query(text=f"fox {q}", qid=q),
                       candidates=[rl.Candidate(docid=d, score=10.0 - i,
                                                doc={"contents": t, **({"title": ti} if ti else {})})
                                   for i, (d, t, ti) in enumerate(docs)]) for q, docs in TEXTS.items()]
    rl.DataWriter(reqs).write_in_jsonl_format(str(path))


def test_rank_llm_requests_in_results_out_same_ranking_as_trec(model_dir, tmp_path, capsys):
    _rank_llm_requests(tmp_path / "req.jsonl")
    assert main(["rerank", "--model", model_dir, "--requests", str(tmp_path / "req.jsonl"), "--top-k", "5",
                 "--out", str(tmp_path / "res.jsonl")]) == 0
    results = rl.read_requests_from_file(str(tmp_path / "res.jsonl"))  # rank_llm's own reader
    assert [r.query.qid for r in results] == list(TEXTS)
    for r in results:
        docs = TEXTS[r.query.qid]
        ids = [c.docid for c in r.candidates]
        assert sorted(ids[:5]) == sorted(d for d, _, _ in docs[:5]) and ids[5:] == [d for d, _, _ in docs[5:]]
        scores = [c.score for c in r.candidates]
        assert all(a > b for a, b in zip(scores, scores[1:]))
        by_id = {d: (t, ti) for d, t, ti in docs}
        for c in r.candidates:  # docs handed back unchanged
            assert c.doc["contents"] == by_id[c.docid][0] and c.doc.get("title") == by_id[c.docid][1]
    # the same texts through the TREC path rank the same way (titles as lrt's "title: text")
    (tmp_path / "run.trec").write_text("".join(f"{q} Q0 {d} {i + 1} {10 - i} bm25\n" for q, docs in TEXTS.items()
                                               for i, (d, _, _) in enumerate(docs)))
    (tmp_path / "topics.tsv").write_text("".join(f"{q}\tfox {q}\n" for q in TEXTS))
    (tmp_path / "corpus.jsonl").write_text("".join(
        json.dumps({"docid": d, "text": t, **({"title": ti} if ti else {})}) + "\n"
        for docs in TEXTS.values() for d, t, ti in docs))
    assert main(["rerank", "--model", model_dir, "--run", str(tmp_path / "run.trec"), "--queries",
                 str(tmp_path / "topics.tsv"), "--corpus", str(tmp_path / "corpus.jsonl"), "--top-k", "5",
                 "--out", str(tmp_path / "out.trec")]) == 0
    trec = read_run(tmp_path / "out.trec")
    assert {r.query.qid: [c.docid for c in r.candidates] for r in results} == \
        {q: [d for d, _ in v] for q, v in trec.items()}


def test_lrt_requests_load_in_rank_llm_and_back(tmp_path):
    reqs = [(q, f"fox {q}", [(Candidate(d, t, ti), 10.0 - i) for i, (d, t, ti) in enumerate(docs)])
            for q, docs in TEXTS.items()]
    write_requests(tmp_path / "r.jsonl", reqs)
    theirs = rl.read_requests_from_file(str(tmp_path / "r.jsonl"))
    assert [(r.query.qid, [c.docid for c in r.candidates]) for r in theirs] == \
        [(q, [d for d, _, _ in docs]) for q, docs in TEXTS.items()]
    ours = read_requests(tmp_path / "r.jsonl")
    assert [c.candidate for c in ours[0].candidates] == [Candidate(d, t, ti) for d, t, ti in TEXTS["q1"]]


@pytest.mark.parametrize("content,expect", [
    ('{"query": {"qid": 1, "text": "q"}, "candidates": [{"docid": "a", "score": 1, "doc": {}}]}\n',
     r"r\.jsonl:1: candidate 'a' has no passage text"),
    ('{"query": {"qid": 1, "text": "q"}, "candidates": []}\n{"query": {"qid": 1, "text": "q"}, "candidates": []}\n',
     r"r\.jsonl:2: query '1' repeats"),
    ('{"query": "q"}\n', r"r\.jsonl:1: expected \{\"query\""),
    ('{"query": {"qid": 1, "text": "q"}, "candidates": [\n', r"r\.jsonl:1: invalid JSON"),
    ("", r"no requests"),
])
def test_bad_requests_name_file_and_line(tmp_path, content, expect, model_dir, capsys):
    (tmp_path / "r.jsonl").write_text(content)
    with pytest.raises(DataError, match=expect):
        read_requests(tmp_path / "r.jsonl")
    assert main(["rerank", "--model", model_dir, "--requests", str(tmp_path / "r.jsonl"), "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:")
