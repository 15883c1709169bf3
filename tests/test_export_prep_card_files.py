"""A prep job's `card.json` lists only files that were written (issue 23: it listed `calls/*.parquet` for a
job with `output.call_log: false`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrt.cli import main as lrt_main

BEIR = Path(__file__).resolve().parent / "fixtures" / "e2e" / "beir" / "scifact-mini"


@pytest.mark.parametrize("call_log", [False, True])
def test_card_json_lists_only_written_files(tmp_path, monkeypatch, call_log):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "j.yaml").write_text(
        f"name: beir\nsource: {{kind: trec, run: {BEIR}/bm25.trec, topics: {BEIR}, corpus: {BEIR}, qrels: {BEIR}}}\n"
        f"output: {{dir: out, call_log: {str(call_log).lower()}}}\ncache: {{enabled: false}}\n")
    assert lrt_main(["prep", str(tmp_path / "j.yaml")]) == 0
    files = json.loads((tmp_path / "out" / "card.json").read_text())["files"]
    listed = [files["data"], *files["calls"]]
    assert all((tmp_path / "out" / f).is_file() for f in listed), listed
    assert bool(files["calls"]) == call_log
