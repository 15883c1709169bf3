"""`lrt eval` inputs and in-training evaluation that cannot run: clean errors or a clear warning.

A UTF-8 byte-order mark (Windows editors write one) must not glue itself to the first qid and
silently drop that query; bad run/qrels files give one `error:` line naming file:line, exit 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrt.cli import main

REPO = Path(__file__).resolve().parents[1]
QRELS = "1 0 a 2\n1 0 b 0\n2 0 c 1\n2 0 d 0\n3 0 e 3\n3 0 f 1\n"
RUN = "".join(f"{q} Q0 {d} {r} {10 - r} t\n" for q, docs in (("1", "ba"), ("2", "cd"), ("3", "fe"))
              for r, d in enumerate(docs, 1))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _eval_json(capsys, qrels: Path, run: Path) -> dict:
    rc, out, err = run_cli(capsys, "eval", "--qrels", str(qrels), "--run", str(run), "--json", "--per-query")
    assert rc == 0 and "Traceback" not in out + err, err
    return json.loads(out)["runs"][run.name]


@pytest.mark.parametrize("bom_in", ["run", "qrels", "both"])
def test_a_utf8_bom_does_not_drop_the_first_query(tmp_path, capsys, bom_in):
    plain_q, plain_r = tmp_path / "q.txt", tmp_path / "run.txt"
    plain_q.write_text(QRELS)
    plain_r.write_text(RUN)
    (tmp_path / "bom").mkdir()
    bom_q, bom_r = tmp_path / "bom" / "q.txt", tmp_path / "bom" / "run.txt"
    bom_q.write_bytes((b"\xef\xbb\xbf" if bom_in in ("qrels", "both") else b"") + QRELS.encode())
    bom_r.write_bytes((b"\xef\xbb\xbf" if bom_in in ("run", "both") else b"") + RUN.encode())
    want, got = _eval_json(capsys, plain_q, plain_r), _eval_json(capsys, bom_q, bom_r)
    assert got["queries"] == want["queries"] == 3
    assert set(got["per_query"]) == {"1", "2", "3"}
    assert got["mean"] == want["mean"]


# (id, qrels text or bytes, run text or bytes ("dir": a directory), words the error must hold)
CASES = [
    ("run_is_a_directory", QRELS, "dir", ["run"]),
    ("qrels_missing", None, RUN, ["q.txt", "not found"]),
    ("run_not_utf8", QRELS, RUN.encode() + b"4 Q0 \xff\xfe 1 1 t\n", ["not valid UTF-8"]),
    ("run_five_columns", QRELS, RUN + "4 Q0 x 1 1.0\n", ["run.txt:7", "6 columns"]),
    ("run_score_nan", QRELS, RUN + "4 Q0 x 1 nan t\n", ["run.txt:7", "finite"]),
    ("run_duplicate_doc", QRELS, RUN + "1 Q0 a 3 1.0 t\n", ["run.txt:7", "duplicate docid"]),
    ("run_empty", QRELS, "", ["run.txt", "empty"]),
    ("qrels_rel_not_int", QRELS + "4 0 x high\n", RUN, ["q.txt:7"]),
    ("qrels_three_columns", QRELS + "4 x 1\n", RUN, ["q.txt:7", "4 columns"]),
]


@pytest.mark.parametrize("case, qrels, run, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_eval_inputs_give_one_error_line(tmp_path, capsys, case, qrels, run, needles):
    q, r = tmp_path / "q.txt", tmp_path / "run.txt"
    if qrels is not None:
        q.write_text(qrels)
    if run == "dir":
        r.mkdir()
    elif isinstance(run, bytes):
        r.write_bytes(run)
    else:
        r.write_text(run)
    rc, out, err = run_cli(capsys, "eval", "--qrels", str(q), "--run", str(r))
    assert "Traceback" not in out + err
    assert rc == 2, (rc, out, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in err, (n, err)


@pytest.mark.slow
def test_evaluation_that_cannot_run_is_announced_at_the_start(tmp_path):
    """`eval.every` with identifiers the tokenizer cannot score (numeric ids up to 100 on a tokenizer
    that splits digits: "10" is two tokens): training may go on (the lm loss needs no scores), but say
    so once, up front."""
    from lrt.testing.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", "mistral")
    rows = [{"qid": str(q), "query": f"query {q}",
             "candidates": [{"docid": f"d{q}_{k}", "text": f"p{k}"} for k in range(100)],
             "ranking": [f"d{q}_{k}" for k in range(100)]} for q in range(2)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"model": {"name_or_path": str(model)}, "data": {"train": str(data), "eval": str(data), "max_length": 1536},
              "prompt": {"preset": "compact", "identifiers": "numeric", "max_passage_tokens": 4},
              "loss": [{"name": "lm"}], "train": {"max_steps": 1, "per_device_batch_size": 1, "save_final": False},
              "eval": {"every": 1, "at_start": False, "at_end": False}, "log": {"progress": False},
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "lrt.cli", "train", str(path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    warn = [ln for ln in res.stderr.splitlines() if "evaluation cannot run" in ln]
    assert len(warn) == 1 and "'10'" in warn[0] and "eval.every" in warn[0], res.stderr[-3000:]
    lines = res.stderr.splitlines()
    first_step = next((i for i, ln in enumerate(lines) if "step 1" in ln), len(lines))
    assert lines.index(warn[0]) < first_step  # at the start, not after the run
