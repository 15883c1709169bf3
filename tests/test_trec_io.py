"""TREC run/qrels/topics/corpus I/O: trec_eval ordering, tie-free writing, and clear DataErrors."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from lrt.errors import DataError, LrtError
from lrt.io import read_corpus, read_qrels, read_run, read_topics, trec_order, write_run

DATA = Path(__file__).resolve().parents[1] / "lrt" / "resources" / "data" / "fullrank"


@pytest.fixture(scope="module")
def data() -> Path:
    """The real public data shipped in the repo (lrt/resources/data/fullrank); absence is a failure."""
    if not (DATA / "qrels.dl19-passage.txt").is_file():
        pytest.fail(f"shipped data missing: {DATA}")
    return DATA


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_read_real_run_and_qrels(data: Path) -> None:
    run = read_run(data / "dl19-bm25_top100.txt")
    assert len(run) == 43 and all(len(v) == 100 for v in run.values())
    for pairs in run.values():
        assert pairs == trec_order(pairs)
    qrels = read_qrels(data / "qrels.dl19-passage.txt")
    assert len(qrels) == 43 and sum(map(len, qrels.values())) == 9260
    assert {r for d in qrels.values() for r in d.values()} == {0, 1, 2, 3}


def test_tied_scores_follow_trec_eval_docid_descending(tmp_path: Path) -> None:
    # trec_eval: score desc, then strcmp docid desc ("9" > "10"); the rank column is ignored.
    p = _write(tmp_path, "ties.run", "# a comment\n"
               "q1 Q0 10 1 1.0 t\nq1 Q0 9 2 1.0 t\nq1 Q0 a 3 1.0 t\n"
               "q1 Q0 b 4 1.0 t\nq1 Q0 2 5 1.0 t\nq1 Q0 z 6 0.5 t\nq1 Q0 top 7 3 t\n\n")
    assert [d for d, _ in read_run(p)["q1"]] == ["top", "b", "a", "9", "2", "10", "z"]


def test_write_run_unique_decreasing_scores_and_round_trip(tmp_path: Path) -> None:
    rankings = {"q2": ["d3", "d1", "d2"], "q1": ["x", "10", "9"]}
    out = tmp_path / "sub" / "r.run"
    write_run(out, rankings, tag="lrt")
    lines = [ln.split() for ln in out.read_text().splitlines()]
    for qid, docs in rankings.items():
        rows = [r for r in lines if r[0] == qid]
        assert [r[2] for r in rows] == docs and [int(r[3]) for r in rows] == [1, 2, 3]
        scores = [float(r[4]) for r in rows]
        assert all(a > b for a, b in zip(scores, scores[1:])) and len(set(scores)) == len(scores)
    back = read_run(out)
    assert {q: [d for d, _ in v] for q, v in back.items()} == rankings
    write_run(out, {"q1": ["only"]}, tag="lrt")  # atomic replace: no leftovers, file readable
    assert os.listdir(out.parent) == ["r.run"] and out.read_text() == "q1 Q0 only 1 1.0 lrt\n"
    assert out.stat().st_mode & 0o044


@pytest.mark.parametrize("rankings,tag,needle", [
    ({"q": ["a", "a"]}, "t", "repeats a docid"),
    ({"q": ["a b"]}, "t", "'a b'"),
    ({"q": ["a"]}, "my tag", "run tag"),
])
def test_write_run_rejects_bad_ids(tmp_path: Path, rankings: dict, tag: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        write_run(tmp_path / "bad.run", rankings, tag=tag)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text,needle", [
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0\n", r"bad\.run:2: expected 6 columns"),
    ("q1 Q0 d1 1 high t\n", r"bad\.run:1: score 'high' is not a finite number"),
    ("q1 Q0 d1 1 nan t\n", r"bad\.run:1: score 'nan'"),
    ("q1 Q0 d1 1 2.0 t\nq2 Q0 d1 1 2.0 t\nq1 Q0 d1 3 1.0 t\n",
     r"bad\.run:3: duplicate docid 'd1' for query 'q1' \(first at line 1\)"),
    ("", r"bad\.run: run is empty"),
    ("# only a comment\n\n", r"bad\.run: run is empty"),
])
def test_read_run_errors_name_file_and_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        read_run(_write(tmp_path, "bad.run", text))


def test_missing_file_is_user_error(tmp_path: Path) -> None:
    for reader in (read_run, read_qrels, read_topics, read_corpus):
        with pytest.raises(LrtError, match=r"nope\.txt: file not found"):
            reader(tmp_path / "nope.txt")


@pytest.mark.parametrize("text,needle", [
    ("q1 0 d1 1\nq1 0 d2\n", r"q\.txt:2: expected 4 columns"),
    ("q1 0 d1 1.5\n", r"q\.txt:1: relevance '1.5' is not an integer"),
    ("q1 0 d1 1\nq1 0 d1 2\n", r"q\.txt:2: duplicate judgement"),
    ("\n", r"q\.txt: qrels file is empty"),
])
def test_read_qrels_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        read_qrels(_write(tmp_path, "q.txt", text))


def test_read_topics_json_and_tsv(data: Path, tmp_path: Path) -> None:
    topics = read_topics(data / "dl19-topics.json")  # shape: {qid: {"title": text}}
    assert len(topics) == 43 and topics["264014"] == "how long is life cycle of flea"
    assert read_topics(_write(tmp_path, "t.json", '{"1": " a b ", "2": {"text": "c"}}')) == \
        {"1": "a b", "2": "c"}
    assert read_topics(_write(tmp_path, "queries.tsv", "1\thello world\n2\tbye\n")) == \
        {"1": "hello world", "2": "bye"}
    assert read_topics(_write(tmp_path, "queries.txt", '{"7": "sniffed json"}')) == {"7": "sniffed json"}


@pytest.mark.parametrize("name,text,needle", [
    ("t.tsv", "1\thi\n2\t  \n", r"t\.tsv:2: query '2' has empty text"),
    ("t.tsv", "1\thi\n1\tagain\n", r"t\.tsv:2: duplicate query id '1'"),
    ("t.tsv", "1\thi\njust-text\n", r"t\.tsv:2: expected 'qid<TAB>text'"),
    ("t.json", '{"1": "a",\n "1": "b"}', r"t\.json: duplicate key '1'"),
    ("t.json", '{"1": "a",\n "2": }', r"t\.json:2: invalid JSON"),
    ("t.json", '{"1": ""}', r"t\.json: query '1' has no text"),
    ("t.json", '["a"]', r"t\.json: expected a JSON object"),
])
def test_read_topics_errors(tmp_path: Path, name: str, text: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        read_topics(_write(tmp_path, name, text))


def test_read_corpus_tsv_jsonl_gz(tmp_path: Path) -> None:
    two = _write(tmp_path, "collection.tsv", "0\tThe first passage.\n1\tSecond one.\n")
    assert read_corpus(two) == {"0": {"text": "The first passage.", "title": None},
                                "1": {"text": "Second one.", "title": None}}
    three = _write(tmp_path, "titled.tsv", "d1\tTitle\tBody text\nd2\t\tNo title\n")
    assert read_corpus(three)["d1"] == {"text": "Body text", "title": "Title"}
    assert read_corpus(three)["d2"]["title"] is None
    rows = [{"docid": "a", "text": "x"}, {"_id": 5, "contents": "y", "title": "T"},
            {"id": "c", "text": ""}]
    jl = _write(tmp_path, "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert read_corpus(jl) == {"a": {"text": "x", "title": None}, "5": {"text": "y", "title": "T"},
                               "c": {"text": "", "title": None}}
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(jl.read_bytes()))
    assert read_corpus(gz) == read_corpus(jl)


@pytest.mark.parametrize("name,text,needle", [
    ("c.tsv", "0\tok\n1\ta\tb\tc\n", r"c\.tsv:2: expected 'docid<TAB>text'"),
    ("c.tsv", "0\tok\n0\tagain\n", r"c\.tsv:2: duplicate docid '0'"),
    ("c.jsonl", '{"docid": "a", "text": "x"}\n{"docid": "b", "te', r"c\.jsonl:2: invalid JSON \(truncated"),
    ("c.jsonl", '{"docid": "a", "text": "x"}\n{"title": "no id", "text": "y"}\n',
     r"c\.jsonl:2: need an id"),
    ("c.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"c\.jsonl:2: duplicate docid"),
    ("c.tsv", "", r"c\.tsv: corpus is empty"),
])
def test_read_corpus_errors(tmp_path: Path, name: str, text: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        read_corpus(_write(tmp_path, name, text))
