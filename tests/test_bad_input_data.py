"""Bad data files and rows, through the real CLI: one `error:` line naming file:line, exit code 2.

`lrt validate RECIPE` streams every train and eval row (not only "does the file exist"), and
`lrt train` stops on the same problems before the first step. No case may print a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lrt.cli import main

ROWS = [{"qid": str(q), "query": f"query {q}",
         "candidates": [{"docid": f"d{q}{k}", "text": f"passage {k}"} for k in range(3)],
         "ranking": [f"d{q}{k}" for k in (2, 0, 1)], "relevance": [1, 0, 2]} for q in range(4)]


def _row(i: int = 1, **change) -> dict:
    return {**json.loads(json.dumps(ROWS[i])), **change}


def _cand(i: int, k: int, **change) -> dict:
    row = _row(i)
    row["candidates"][k] = {**row["candidates"][k], **change}
    return row


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet_bytes(tmp: Path) -> bytes:
    from lrt.data.schema import example_from_row, write_examples

    p = write_examples([example_from_row(r) for r in ROWS], tmp / "good.parquet")
    return p.read_bytes()


# (id, file name, content (bytes | "dir" | callable(tmp) -> bytes), which split, text the error must hold,
#  line: the `:N` after the file name, or None when the problem is the whole file)
CASES = [
    ("non_utf8_jsonl", "train.jsonl", jsonl(ROWS[:1]) + b'{"qid": "x\xff\xfe"}\n', "train", "not valid UTF-8", 2),
    ("directory_named_jsonl", "train.jsonl", "dir", "train", "is a directory", None),
    ("directory_named_json", "train.json", "dir", "train", "is a directory", None),
    ("malformed_json", "train.json", b'[\n {"qid": "1",,}\n]', "train", "invalid JSON", 2),
    ("non_utf8_json", "train.json", b'[{"qid": "\xff"}]', "train", "not valid UTF-8", None),
    ("json_not_an_array", "train.json", b'{"qid": "1"}', "train", "expected a JSON array", None),
    ("corrupt_parquet", "train.parquet", b"PAR1 this is not parquet PAR1", "train", "not a readable Parquet", None),
    ("truncated_parquet", "train.parquet", lambda tmp: _parquet_bytes(tmp)[:-40], "train", "not a readable Parquet", None),
    ("directory_named_parquet", "train.parquet", "dir", "train", "directory without .parquet", None),
    ("empty_file", "train.jsonl", b"", "train", "the file is empty", None),
    ("only_blank_lines", "train.jsonl", b"\n\n  \n", "train", "the file is empty", None),
    ("truncated_line", "train.jsonl", jsonl(ROWS[:1]) + b'{"qid": "9", "cand', "train", "truncated", 2),
    ("relevance_nan", "train.jsonl", jsonl([ROWS[0]]) + b'{"qid": "1", "query": "q", "candidates": [{"docid": "a", '
     b'"text": "t"}, {"docid": "b", "text": "u"}], "ranking": ["b", "a"], "relevance": [NaN, 1]}\n',
     "train", "finite", 2),
    ("relevance_inf", "train.jsonl", jsonl([_row(1, relevance=[1, 0, float("inf")])]), "train", "finite", 1),
    ("relevance_neg_inf", "train.jsonl", jsonl([_row(1, relevance=[float("-inf"), 0, 1])]), "train", "finite", 1),
    ("relevance_bool", "train.jsonl", jsonl([_row(1, relevance=[True, 0, 1])]), "train", "`relevance`", 1),
    ("duplicate_qid_train", "train.jsonl", jsonl([ROWS[0], ROWS[1], _row(0)]), "train", "duplicate qid '0'", 3),
    ("duplicate_qid_eval", "eval.jsonl", jsonl([ROWS[2], _row(2, query="again")]), "eval", "duplicate qid '2'", 2),
    ("empty_docid", "train.jsonl", jsonl([_cand(1, 0, docid="")]), "train", "empty `docid`", 1),
    ("blank_docid", "train.jsonl", jsonl([_cand(1, 0, docid="  ")]), "train", "empty `docid`", 1),
    ("bool_docid", "train.jsonl", jsonl([_cand(1, 0, docid=True)]), "train", "string `docid`", 1),
    ("int_title", "train.jsonl", jsonl([_cand(1, 1, title=5)]), "train", "`title` must be a string", 1),
    ("list_title", "train.jsonl", jsonl([_cand(1, 1, title=["a"])]), "train", "`title` must be a string", 1),
    ("unknown_candidate_key", "train.jsonl", jsonl([ROWS[0], _cand(1, 2, txt="typo")]), "train", "['txt']", 2),
    ("unknown_top_level_key", "train.jsonl", jsonl([_row(1, rankin=[])]), "train", "unknown field", 1),
    ("row_not_an_object", "train.jsonl", jsonl([ROWS[0], ["not", "a", "row"]]), "train", "JSON object", 2),
    ("ranking_not_a_permutation", "train.jsonl", jsonl([ROWS[0], _row(1, ranking=["d10", "d11"])]), "train",
     "not a permutation", 2),
    ("ranking_unknown_docid", "eval.jsonl", jsonl([_row(1, ranking=["d10", "d11", "zz"])]), "eval",
     "not a permutation", 1),
    ("too_many_candidates", "train.jsonl", jsonl([{"qid": "1", "query": "q",
     "candidates": [{"docid": str(i), "text": "t"} for i in range(30)], "ranking": [str(i) for i in range(30)]}]),
     "train", "data.window=N", 1),
]


def _recipe(tmp: Path, name: str, content, split: str) -> tuple[Path, Path]:
    """A valid recipe whose train (or eval) data is the bad file."""
    good = tmp / "good.jsonl"
    good.write_bytes(jsonl(ROWS))
    bad = tmp / name
    if content == "dir":
        bad.mkdir()
    else:
        bad.write_bytes(content(tmp) if callable(content) else content)
    recipe = {"model": {"name_or_path": "lrt:assets/tiny-backbone"},
              "data": {"train": str(bad if split == "train" else good),
                       "eval": str(bad if split == "eval" else good), "max_length": 256},
              "prompt": {"preset": "compact"}, "train": {"max_steps": 1, "per_device_batch_size": 1},
              "log": {"progress": False}, "output_dir": str(tmp / "run")}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, bad


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def assert_one_error(rc: int, out: str, *needles: str) -> None:
    assert "Traceback" not in out, out
    assert rc == 2, (rc, out[-2000:])
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out[-2000:]
    for n in needles:
        assert n in out, (n, out[-2000:])


@pytest.mark.parametrize("case, name, content, split, needle, line", CASES, ids=[c[0] for c in CASES])
def test_validate_reports_bad_data_with_file_and_line(tmp_path, capsys, case, name, content, split, needle, line):
    recipe, bad = _recipe(tmp_path, name, content, split)
    rc, out = run_cli(capsys, "validate", str(recipe))
    where = f"{bad}:{line}" if line else str(bad)
    assert_one_error(rc, out, needle, where)


@pytest.mark.parametrize("case", ["duplicate_qid_eval", "relevance_nan", "int_title", "corrupt_parquet"])
def test_train_stops_before_the_first_step(tmp_path, capsys, case):
    _, name, content, split, needle, line = next(c for c in CASES if c[0] == case)
    recipe, bad = _recipe(tmp_path, name, content, split)
    rc, out = run_cli(capsys, "train", str(recipe))
    assert_one_error(rc, out, needle, f"{bad}:{line}" if line else str(bad))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def test_validate_checks_rows_and_counts_skips(tmp_path, capsys):
    recipe, _ = _recipe(tmp_path, "train.jsonl", jsonl(ROWS), "train")
    rc, out = run_cli(capsys, "validate", str(recipe), "--max-unknown-share", "1")  # rows, not words, are checked here
    assert rc == 0 and "data.train: 4 valid rows" in out and "eval data: 4 valid rows" in out, out
    recipe, _ = _recipe(tmp_path, "train.jsonl", jsonl([*ROWS, _row(1, ranking=[])]), "train")
    rc, out = run_cli(capsys, "validate", str(recipe), "data.on_invalid=skip", "--max-unknown-share", "1")
    assert rc == 0 and "data.train: 4 valid rows, 1 skipped" in out, out
    rc, out = run_cli(capsys, "validate", str(recipe), "--no-file-check")  # the row check is part of the file check
    assert rc == 0 and "valid rows" not in out, out
