"""`lrt prep` on a user's own collection: `kind: beir`, the train/held-out query split, lists without a
relevant candidate, and the errors a researcher meets (one `error:` line naming file:line or the key).

Every case runs the real CLI (`lrt.cli.main`) on small files written here or on the shipped
examples/own-data collection.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lrt.cli import main
from lrt.io.trec import read_qrels, read_run, read_topics

REPO = Path(__file__).resolve().parents[1]
OWN = REPO / "examples" / "own-data"


@pytest.fixture()
def own(tmp_path: Path) -> Path:
    shutil.copytree(OWN, tmp_path / "own", ignore=shutil.ignore_patterns("*.py"))
    return tmp_path / "own"


def job(d: Path, name: str = "job.yaml", **sections) -> Path:
    j = {"name": "byod", "source": {"kind": "beir", "path": "beir", "run": "bm25.trec", "depth": 20},
         "output": {"dir": "out"}, **sections}
    (d / name).write_text(yaml.safe_dump(j))
    return d / name


def prep(capsys, path: Path, *args: str) -> tuple[int, str, str]:
    rc = main(["prep", str(path), *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return rc, out.out, out.err


def error(capsys, path: Path, *args: str) -> str:
    """The one error (a recipe-level one lists its problems under the `error:` line)."""
    rc, _, err = prep(capsys, path, *args)
    lines = [x for x in err.splitlines() if "error:" in x]
    assert rc == 2 and len(lines) == 1, err[-2000:]
    return err[err.index(lines[0]):]


def test_beir_folder_with_split_writes_train_lists_and_held_out_inputs(own, capsys):
    rc, out, _ = prep(capsys, job(own, split={"held_out": 20, "seed": 0}))
    assert rc == 0
    o = own / "out"
    train = {r["qid"]: r for r in pq.read_table(o / "data.parquet").to_pylist()}
    held = (o / "held_out" / "qids.txt").read_text().split()
    assert len(train) == 60 and len(held) == 20 and not set(train) & set(held)
    assert sorted(train) == sorted((o / "train_qids.txt").read_text().split())
    # held-out inputs: the first stage's top 20 of exactly those queries, with their own scores and texts
    bm25, run = read_run(own / "bm25.trec"), read_run(o / "held_out" / "run.trec")
    assert sorted(run) == sorted(held) and all(run[q] == bm25[q][:20] for q in held)
    topics = read_topics(own / "beir" / "queries.jsonl")
    assert read_topics(o / "held_out" / "queries.jsonl") == {q: topics[q] for q in held}
    full = read_qrels(own / "beir" / "qrels" / "test.tsv")
    assert read_qrels(o / "held_out" / "qrels.txt") == {q: full[q] for q in held}
    # training lists: BEIR text/title, graded by the qrels, with the query's full qrels for evaluation
    r = train[sorted(train)[0]]
    assert len(r["candidates"]) == 20 and r["query"] == topics[r["qid"]]
    assert {x["docid"]: x["relevance"] for x in r["qrels"]} == full[r["qid"]]
    card = json.loads((o / "card.json").read_text())
    none = sum(1 for x in train.values() if not any(g > 0 for g in x["relevance"]))
    assert card["counts"]["lists_without_relevant"] == none
    assert card["split"]["train_queries"] == 60 and card["split"]["held_out_queries"] == 20
    assert f"{none} without a relevant candidate" in out and "60 train / 20 held-out queries" in out


def test_split_is_seeded_by_count_or_fraction_and_a_qid_file_reproduces_it(own, capsys):
    def held(path: Path, *args: str) -> list[str]:
        assert prep(capsys, path, *args)[0] == 0
        return (own / "out" / "held_out" / "qids.txt").read_text().split()

    first = held(job(own, split={"held_out": 20, "seed": 0}))
    assert held(job(own, split={"held_out": 0.25, "seed": 0}), "--force") == first  # 0.25 x 80
    other = held(job(own, split={"held_out": 20, "seed": 1}), "--force")
    assert sorted(other) != sorted(first)
    (own / "mine.txt").write_text("# held-out queries\n" + "\n".join(first) + "\n")
    assert sorted(held(job(own, split={"held_out_qids": "mine.txt"}), "--force")) == sorted(first)


def test_trec_files_and_beir_folder_give_the_same_lists(own, capsys):
    assert prep(capsys, job(own, split={"held_out": 10}))[0] == 0
    trec = job(own, "trec.yaml", source={"kind": "trec", "run": "bm25.trec", "topics": "trec/topics.tsv",
                                         "corpus": "trec/corpus.tsv", "qrels": "trec/qrels.txt", "depth": 20},
               split={"held_out": 10}, output={"dir": "out-trec"})
    assert prep(capsys, trec)[0] == 0
    a = pq.read_table(own / "out" / "data.parquet").to_pylist()
    b = pq.read_table(own / "out-trec" / "data.parquet").to_pylist()
    strip = lambda rows: [{**r, "candidates": [(c["docid"], c["text"]) for c in r["candidates"]]} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)  # BEIR's empty titles are None, as a TSV without a title column
    for f in ("run.trec", "queries.jsonl", "qrels.txt"):
        assert (own / "out" / "held_out" / f).read_bytes() == (own / "out-trec" / "held_out" / f).read_bytes()


def test_unjudged_queries_of_a_beir_run_are_left_out_and_counted(own, capsys):
    extra = "".join(f"zz{i} Q0 doc{j} {j} {10 - j}.0 bm25\n" for i in range(3) for j in range(1, 6))
    (own / "bm25.trec").write_text((own / "bm25.trec").read_text() + extra)
    rc, out, _ = prep(capsys, job(own))
    assert rc == 0 and "3 unjudged queries left out" in out
    assert json.loads((own / "out" / "card.json").read_text())["counts"]["unjudged_queries_left_out"] == 3
    assert pq.read_table(own / "out" / "data.parquet").num_rows == 80


@pytest.mark.parametrize("case", ["no_run", "bad_query_line", "bad_corpus_line", "no_qrels", "qrels_header_only"])
def test_beir_mistakes_give_one_error_line(own, capsys, case):
    beir = own / "beir"
    src = {"kind": "beir", "path": "beir", "run": "bm25.trec"}
    if case == "no_run":
        del src["run"]
        expect = "source.run: a BEIR folder has no first-stage run"
    elif case == "bad_query_line":
        lines = (beir / "queries.jsonl").read_text().splitlines()
        lines[6] = '{"_id": "q7", "text": '
        (beir / "queries.jsonl").write_text("\n".join(lines) + "\n")
        expect = f"{beir / 'queries.jsonl'}:7: invalid JSON"
    elif case == "bad_corpus_line":
        lines = (beir / "corpus.jsonl").read_text().splitlines()
        lines[2] = '{"title": "", "text": "no id here"}'
        (beir / "corpus.jsonl").write_text("\n".join(lines) + "\n")
        expect = f"{beir / 'corpus.jsonl'}:3: expected a JSON object with `docid` (or `_id`/`id`)"
    elif case == "no_qrels":
        (beir / "qrels" / "test.tsv").rename(beir / "qrels" / "dev.tsv")
        expect = "has no qrels/test.tsv (found: dev.tsv); give the qrels file to label with"
    else:
        (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
        expect = "qrels file is empty"
    line = error(capsys, job(own, source=src))
    assert expect in line, line
    assert not (own / "out" / "data.parquet").exists()


@pytest.mark.parametrize("split, expect", [
    ({"held_out": 80}, "split.held_out: 80 of 80 queries leaves no training query"),
    ({"held_out": 1.5}, "split.held_out: a fraction must be in (0, 1)"),
    ({"held_out": 5, "held_out_qids": "ids.txt"}, "split: give exactly one of split.held_out"),
    ({}, "split: give exactly one of split.held_out"),
    ({"held_out_qids": "ids.txt"}, "ids.txt:2: qid 'nope' is not a query of the job's run"),
    ({"held_out_qids": "dup.txt"}, "dup.txt:2: qid 'q1' repeats line 1"),
])
def test_split_mistakes_give_one_error_line(own, capsys, split, expect):
    (own / "ids.txt").write_text("q1\nnope\n")
    (own / "dup.txt").write_text("q1\nq1\n")
    line = error(capsys, job(own, split=split))
    assert expect in line, line
    assert not (own / "out" / "held_out").exists()


def test_split_needs_a_run_based_source(tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text("")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "source": {"kind": "canonical", "path": "rows.jsonl"},
                                    "split": {"held_out": 2}, "output": {"dir": "out"}}))
    assert "split: needs a first-stage run" in error(capsys, path)


def test_a_failing_teacher_writes_no_held_out_inputs(own, capsys):
    """An invalid-answer share above labels.max_invalid_fraction fails the whole job: no training
    lists, no held-out files that would look like a finished split."""
    from lrt.testing.tiny import save_tiny_model

    model = save_tiny_model(own / "tiny", "chatml")
    path = job(own, source={"kind": "beir", "path": "beir", "run": "bm25.trec", "depth": 6, "limit": 8},
               teacher={"kind": "hf", "model": str(model), "batch_size": 4, "dtype": "float32"},
               labels={"window": 6, "stride": 3}, prompt={"preset": "compact", "max_passage_tokens": 8},
               split={"held_out": 2})
    line = error(capsys, path)
    assert "answered teacher windows were invalid" in line and "labels.max_invalid_fraction=0.05" in line
    assert not (own / "out" / "held_out").exists() and not (own / "out" / "data.parquet").exists()
