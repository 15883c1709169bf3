"""Importers: RankZephyr/FIRST conversations, fullrank + corpus, TREC run + qrels; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrt.errors import DataError
from lrt.prep.conversations import import_conversations, parse_prompt
from lrt.prep.importers import import_fullrank, import_trec, read_passages

HERE = Path(__file__).resolve().parent
ZEPHYR = HERE / "fixtures" / "prep" / "rankzephyr_sample.jsonl"
FULLRANK = HERE.parents[0] / "lrt" / "resources" / "data" / "fullrank"


# ---------------------------------------------------------------- conversations (RankZephyr / FIRST)

def test_conversation_fixture_parses_query_passages_and_ranking():
    imp = import_conversations(str(ZEPHYR))
    ex = {e.query: e for e in imp.examples}
    assert len(imp.examples) == 4 and imp.report.skipped == 0
    flight = ex["how long is the flight from new york to london"]  # from/human/gpt roles, alpha ids
    assert len(flight.candidates) == 5 and flight.candidates[1].text.startswith("London is the capital")
    assert flight.candidates[4].text.endswith("and others (1).")  # escaped [1] stays escaped
    assert [flight.ranks()[i] for i in range(5)] == [1, 4, 2, 5, 3]  # [A] > [C] > [E] > [B] > [D]
    water = ex["what is the boiling point of water at altitude"]  # role keys, numeric ids, "[4] > [1] > [4] > [2]"
    assert [c.docid for c in water.candidates][3] == water.ranking[0]
    assert water.ranking == [water.candidates[i].docid for i in (3, 0, 1, 2)]
    assert imp.counts == {"repaired_targets": 1, "target_duplicates": 1, "target_out_of_range": 0,
                          "target_missing": 1}
    assert len(ex["symptoms of vitamin d deficiency"].candidates) == 3  # positional, variable list size
    assert ex["who painted the mona lisa"].ranks() == [3, 1, 2]  # two turns, no system


def _conv(user: str, target: str = "[B] > [A]") -> str:
    return json.dumps({"conversations": [{"value": "sys"}, {"value": user}, {"value": target}]}) + "\n"


GOOD = ("I will provide you with 2 passages, each indicated by a alphabetical identifier []. Rank the passages "
        "based on their relevance to the search query: q one.\n[A] first passage\n[B] second passage\n"
        "Search Query: q one.\nRank the 2 passages above based on their relevance to the search query.")


@pytest.mark.parametrize("line,match", [
    (_conv(GOOD.replace("[B] second", "[C] second")), "not consecutive"),
    (_conv(GOOD.replace("provide you with 2", "provide you with 3")), "announces"),
    (_conv(GOOD.replace("Search Query", "Query")), "no 'Search Query"),
    (_conv(GOOD.replace("second passage", "")), "empty text"),
    (_conv(GOOD, "I don't know"), "names no passage identifier"),
    (json.dumps({"messages": []}) + "\n", "expected"),
    ('{"conversations": [{"value": "x"}, \n', "malformed JSON"),
])
def test_bad_conversation_rows_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "conv.jsonl"
    path.write_text(_conv(GOOD) + line)
    with pytest.raises(DataError, match=match) as err:
        import_conversations(str(path))
    assert f"{path}:2:" in str(err.value) and "on_invalid=skip" in str(err.value)
    imp = import_conversations(str(path), on_invalid="skip")
    assert len(imp.examples) == 1 and imp.report.skipped == 1 and imp.report.total == 2


def test_truncated_last_line_is_called_out(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text(_conv(GOOD) + _conv(GOOD)[:40])
    with pytest.raises(DataError, match="truncated"):
        import_conversations(str(path))


def test_parse_prompt_numeric_and_query_with_question_mark():
    q, ps = parse_prompt("...\n[1] a\n[2] b\nSearch Query: why?.\nRank the 2 passages above")
    assert q == "why?" and ps == [("1", "a"), ("2", "b")]


# ---------------------------------------------------------------- fullrank + corpus + queries

@pytest.fixture
def fr(tmp_path):
    rows = [{"qid": "1", "initial_list": ["a", "b", "c"], "final_list": ["c", "a", "b"]},
            {"qid": 2, "initial_list": ["b", "d"], "final_list": ["d", "b"]}]
    (tmp_path / "lists.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "corpus.tsv").write_text("a\talpha text\nb\tTitle B\tbeta text\nc\tgamma\nd\tdelta\n")
    (tmp_path / "queries.tsv").write_text("1\tfirst query\n2\tsecond query\n")
    return tmp_path


def _fr(d: Path, **kw):
    return import_fullrank(str(d / "lists.jsonl"), corpus=str(d / "corpus.tsv"), queries=str(d / "queries.tsv"), **kw)


def test_fullrank_join(fr):
    imp = _fr(fr)
    a, b = imp.examples
    assert [c.docid for c in a.candidates] == ["a", "b", "c"] and a.ranking == ["c", "a", "b"]
    assert a.query == "first query" and a.candidates[1].title == "Title B" and a.candidates[1].text == "beta text"
    assert b.qid == "2" and b.ranking == ["d", "b"]
    shards = [_fr(fr, num_shards=2, shard_id=i).examples for i in (0, 1)]
    assert [e.qid for s in shards for e in s] == ["1", "2"]


def _expect(d: Path, fix: str, match: str, where: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        _fr(d)
    msg = str(err.value)
    assert where in msg and fix in msg, msg
    imp = _fr(d, on_invalid="skip")
    assert imp.report.skipped == 1 and [e.qid for e in imp.examples] == ["2"]


def test_fullrank_unknown_docid(fr):
    (fr / "corpus.tsv").write_text("b\tbeta\nc\tgamma\nd\tdelta\n")
    _expect(fr, "add the passage to the corpus", "'a' is not in the corpus", f"{fr / 'lists.jsonl'}:1")


def test_fullrank_empty_text_points_at_the_corpus_line(fr):
    (fr / "corpus.tsv").write_text("a\t  \nb\tbeta\nc\tgamma\nd\tdelta\n")
    _expect(fr, "fill in the passage text", "empty text", f"{fr / 'corpus.tsv'}:1")


def test_fullrank_malformed_line_and_bad_permutation(fr):
    lines = (fr / "lists.jsonl").read_text().splitlines()
    (fr / "lists.jsonl").write_text('{"qid": "1", "initial_list": [\n' + lines[1] + "\n")
    _expect(fr, "fix or delete the line", "malformed JSON", f"{fr / 'lists.jsonl'}:1")
    (fr / "lists.jsonl").write_text(lines[0].replace('"c", "a", "b"', '"c", "a", "a"') + "\n" + lines[1] + "\n")
    _expect(fr, "regenerate the row", "not a permutation", f"{fr / 'lists.jsonl'}:1")


def test_fullrank_missing_query_and_missing_files(fr):
    (fr / "queries.tsv").write_text("2\tsecond query\n")
    _expect(fr, "add the query text", "query '1' is not in", f"{fr / 'lists.jsonl'}:1")
    with pytest.raises(DataError, match="source.corpus is required"):
        import_fullrank(str(fr / "lists.jsonl"), corpus=None, queries=str(fr / "queries.tsv"))
    with pytest.raises(DataError, match="file not found"):
        import_fullrank(str(fr / "nope.jsonl"), corpus=None, queries=None, synthetic=True)
    synth = import_fullrank(str(fr / "lists.jsonl"), corpus=None, queries=None, synthetic=True)
    assert synth.examples[0].candidates[0].text.startswith("passage a:")


def test_corpus_formats_and_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"_id": 7, "title": "T", "text": "seven"}) + "\n" + json.dumps({"id": "8", "contents": "x"}) + "\n")
    assert read_passages(p, {"7", "8"}) == {"7": ("seven", "T", f"{p}:1"), "8": ("x", None, f"{p}:2")}
    p.write_text(json.dumps({"id": "8"}) + "\n")
    with pytest.raises(DataError, match=f"{p}:1: expected a JSON object"):
        read_passages(p, {"8"})
    t = tmp_path / "c.tsv"
    t.write_text("1\tok\n2 no tab here\n")
    with pytest.raises(DataError, match=f"{t}:2: expected `docid<TAB>text`"):
        read_passages(t, {"1"})


# ---------------------------------------------------------------- TREC run + topics (+ qrels)

def _dl19(**kw):
    assert FULLRANK.is_dir(), f"missing shipped data {FULLRANK}"
    return import_trec(str(FULLRANK / "dl19-bm25_top100.txt"), topics=str(FULLRANK / "dl19-topics.json"),
                       corpus=None, synthetic=True, **kw)


def test_trec_with_qrels_ranks_by_grade_then_first_stage_order():
    imp = _dl19(qrels=str(FULLRANK / "qrels.dl19-passage.txt"))
    assert len(imp.examples) == 43 and imp.report.skipped == 0
    for ex in imp.examples:
        grade = dict(zip([c.docid for c in ex.candidates], ex.relevance))
        pos = {c.docid: i for i, c in enumerate(ex.candidates)}
        keys = [(-grade[d], pos[d]) for d in ex.ranking]
        assert keys == sorted(keys) and len(ex.candidates) == 100
    first = imp.examples[0]
    assert first.qid == "264014" and first.query == "how long is life cycle of flea"


def test_trec_without_qrels_keeps_first_stage_order_and_depth():
    imp = _dl19(depth=20, limit=5)
    assert len(imp.examples) == 5
    assert all(len(e.candidates) == 20 and e.ranking == [c.docid for c in e.candidates] for e in imp.examples)


def test_trec_problems_point_at_the_run_line(tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("q1 Q0 a 1 3.0 bm25\nq1 Q0 zz 2 2.0 bm25\nq2 Q0 a 1 1.0 bm25\nq3 Q0 a 1 1.0 bm25\n")
    (tmp_path / "topics.tsv").write_text("q1\tone\nq2\ttwo\n")
    (tmp_path / "corpus.tsv").write_text("a\talpha\n")
    kw = dict(topics=str(tmp_path / "topics.tsv"), corpus=str(tmp_path / "corpus.tsv"))
    with pytest.raises(DataError, match=f"{run}:2: docid 'zz' is not in the corpus"):
        import_trec(str(run), **kw)
    imp = import_trec(str(run), on_invalid="skip", **kw)
    assert [e.qid for e in imp.examples] == ["q2"] and imp.report.skipped == 2
    assert any(f"{run}:4: query 'q3' is not in the topics" in x for x in imp.report.examples)
    (tmp_path / "qrels.txt").write_text("q2 0 a 1\n")
    with pytest.raises(DataError, match="has no judgements"):
        import_trec(str(run), qrels=str(tmp_path / "qrels.txt"), **{**kw, "corpus": None}, synthetic=True)


def test_rankzephyr_job_reads_a_datasets_source_by_name(tmp_path, monkeypatch):
    """`source.path` that is not a file goes through `datasets.load_dataset(name, split=...)`: here a local
    dataset folder named like the hub repo (no network), exactly the call a hub name takes."""
    import pyarrow.parquet as pq

    from lrt.cli import main

    ds = tmp_path / "castorini" / "rank_zephyr_training_data"
    ds.mkdir(parents=True)
    (ds / "train.jsonl").write_bytes(ZEPHYR.read_bytes())
    monkeypatch.chdir(tmp_path)
    job = HERE.parent / "lrt" / "resources" / "data_prep" / "rankzephyr-import.yaml"
    assert main(["prep", str(job), "source.path=castorini/rank_zephyr_training_data", "output.dir=out"]) == 0
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    local = import_conversations(str(ZEPHYR)).examples
    assert sorted(r["query"] for r in rows) == sorted(e.query for e in local) and len(rows) == 4
    # an unknown name offline: one clear error naming source.path, no traceback
    assert main(["prep", str(job), "source.path=nobody/no_such_dataset_xyz", "output.dir=out2"]) == 2
