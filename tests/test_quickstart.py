"""`lrt quickstart` as a user runs it: both modes print the baselines, the paired tests and a verdict
that follows from them (summary.json holds the same numbers)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.workflows.quickstart import MAX_P, MIN_GAIN

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("mode", ["pointwise", "first_token"])
def test_quickstart_prints_paired_tests_and_a_consistent_verdict(tmp_path: Path, mode: str) -> None:
    out = subprocess.run([sys.executable, "-m", "lrt.cli", "quickstart", "--mode", mode, "--max-steps", "3",
                          "--out", str(tmp_path / "qs"), "eval.max_queries=60"],
                         capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert s["mode"] == mode and s["heldout_queries"] == 60
    assert set(s["paired_tests"]) == {"vs_initial_order", "vs_backbone"}
    for name, t in s["paired_tests"].items():
        assert t["queries"] == 60 and 0 < t["p"] <= 1 and t["wins"] + t["losses"] + t["ties"] == 60
        assert f"trained {name.replace('_', ' ')}: {t['mean_diff']:+.4f} over 60 queries" in out.stdout
    # the verdict is exactly the rule applied to the printed tests
    rule = all(t["mean_diff"] >= MIN_GAIN and t["p"] < MAX_P for t in s["paired_tests"].values())
    assert s["learning_to_rank_shown"] == rule
    assert ("ranks better than both" in out.stdout) == rule and ("Not shown" in out.stdout) == (not rule)
    assert f"== lrt quickstart ({mode})" in out.stdout and "ms/query" in out.stdout
    assert (tmp_path / "qs" / "run" / "final" / "lrt_reranker.json").is_file()
    # the queries come from the quickstart half of the vocabulary only: the backbone's lookup
    # pretraining used the other half (lrt/assets/tiny-backbone/README.md)
    from lrt.demo.world import vocabulary_split

    pretrain_half, quick_half = map(set, vocabulary_split())
    data = sorted((tmp_path / "qs" / "data").glob("*.jsonl"))
    queries = [json.loads(line)["query"] for f in data for line in f.read_text().splitlines()]
    assert len(data) == 2 and queries and set(queries) <= quick_half and not set(queries) & pretrain_half
