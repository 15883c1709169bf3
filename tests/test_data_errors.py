"""Bad data rows: one clear error naming file:line, or a counted skip. Nothing dropped silently."""
from __future__ import annotations

import json

import pytest

from lrt.data.schema import load_examples
from lrt.errors import DataError

GOOD = {"qid": "1", "query": "q", "candidates": [{"docid": "a", "text": "x"}, {"docid": "b", "text": "y"}], "ranking": ["b", "a"]}


def write(tmp_path, rows, raw_tail: str = ""):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw_tail)
    return p


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**GOOD, "ranking": ["a", "c"]}, "not a permutation"),
        ({**GOOD, "candidates": [{"docid": "a", "text": "x"}, {"docid": "a", "text": "y"}], "ranking": ["a", "a"]}, "duplicate candidate docid"),
        ({**GOOD, "query": "  "}, "`query` is empty"),
        ({**GOOD, "candidates": [{"docid": "a", "text": ""}, {"docid": "b", "text": "y"}]}, "empty or missing `text`"),
        ({**GOOD, "relevance": [1]}, "`relevance` must be"),
        ({**GOOD, "extra": 1}, "unknown field"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    p = write(tmp_path, [GOOD, bad])
    with pytest.raises(DataError, match=rf"d.jsonl:2: .*{message}"):
        load_examples(p)


def test_too_many_candidates_for_scheme(tmp_path):
    row = {**GOOD, "candidates": [{"docid": str(i), "text": "t"} for i in range(30)], "ranking": [str(i) for i in range(30)]}
    with pytest.raises(DataError, match=r"d.jsonl:1: .*30 candidates but the identifier scheme allows at most 26"):
        load_examples(write(tmp_path, [row]), max_candidates=26)


def test_truncated_jsonl_line(tmp_path):
    p = write(tmp_path, [GOOD], raw_tail='{"qid": "2", "query": "q", "cand')
    with pytest.raises(DataError, match=r"d.jsonl:2: invalid JSON.*truncated"):
        load_examples(p)


def test_skip_counts_every_bad_row(tmp_path):
    p = write(tmp_path, [GOOD, {**GOOD, "ranking": ["a"]}, {**GOOD, "qid": "2"}, {**GOOD, "query": ""}, GOOD],
              raw_tail='{"trunc')
    exs, report = load_examples(p, on_invalid="skip")
    assert len(exs) == 2 and report.skipped == 4 and report.total == 6  # the repeated qid "1" is skipped too
    assert "skipped" in report.summary()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "none.jsonl")


def test_parquet_roundtrip(tmp_path):
    from lrt.data.schema import write_examples

    exs, _ = load_examples(write(tmp_path, [GOOD, {**GOOD, "qid": "2", "relevance": [1, 0]}]))
    write_examples(exs, tmp_path / "x.parquet")
    back, _ = load_examples(tmp_path / "x.parquet")
    assert [e.to_row() for e in back] == [e.to_row() for e in exs]
