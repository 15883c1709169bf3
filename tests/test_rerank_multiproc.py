"""`lrt rerank --nproc-per-node 2`: queries sharded over two torchrun CPU processes (gloo), merged
into one run that is byte-identical to the one-process run (batch size 1, so every window is the
same computation in both), stats summed over the processes."""
from __future__ import annotations

import json
import sys

import pytest

from _scale_helpers import subprocess_env
from lrt.data.prompts import PromptTemplate
from lrt.rerank import RerankerMeta

pytestmark = pytest.mark.slow


def test_two_processes_equal_one(tmp_path, monkeypatch, capfd):
    from lrt.testing.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", "chatml", seed=5)
    RerankerMeta(template=PromptTemplate.preset("compact", max_passage_tokens=8).to_dict(), window=4, stride=2,
                 max_length=512).save(model)
    docs = {f"q{q}": [f"q{q}d{i}" for i in range(6)] for q in range(5)}
    (tmp_path / "run.trec").write_text("".join(f"{q} Q0 {d} {r} {10 - r} bm25\n" for q, ds in docs.items()
                                               for r, d in enumerate(ds, 1)))
    (tmp_path / "topics.tsv").write_text("".join(f"{q}\tquery {q} fox\n" for q in docs))
    (tmp_path / "corpus.tsv").write_text("".join(f"{d}\tpassage {d} about the lazy dog {i}\n"
                                                 for ds in docs.values() for i, d in enumerate(ds)))
    base = [sys.executable, "-m", "lrt.cli", "rerank", "--model", model, "--run", str(tmp_path / "run.trec"),
            "--queries", str(tmp_path / "topics.tsv"), "--corpus", str(tmp_path / "corpus.tsv"), "--top-k", "5",
            "--batch-size", "1", "--device", "cpu"]
    from lrt.cli import main

    assert main([*base[3:], "--out", str(tmp_path / "one.trec"), "--stats", str(tmp_path / "one.json")]) == 0
    # `lrt rerank --nproc-per-node 2` from this process: it relaunches itself under torchrun
    for k, v in subprocess_env().items():
        monkeypatch.setenv(k, v)
    capfd.readouterr()
    assert main([*base[3:], "--out", str(tmp_path / "two.trec"), "--stats", str(tmp_path / "two.json"),
                 "--nproc-per-node", "2"]) == 0
    two = capfd.readouterr()
    assert "2 processes" in two.out and "Traceback" not in two.out + two.err
    assert (tmp_path / "two.trec").read_bytes() == (tmp_path / "one.trec").read_bytes()
    s1, s2 = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert s2["processes"] == 2 and s1["processes"] == 1
    for k in ("queries", "windows", "batches", "prompt_tokens"):
        assert s1[k] == s2[k], k
