"""Jobs as YAML: shipped jobs validate, errors are complete and precise, shards merge, CLI and Slurm."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lrt.errors import ConfigError, LrtError
from lrt.cli.prep import main
from lrt.prep.job import load_job, merge, run_shard

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data_prep" / "demo-offline.yaml"
FULLRANK = REPO / "lrt" / "resources" / "data" / "fullrank"
LABELS = FULLRANK / "msmarco_gpt-4o-2024-08-06_bm25-top100-slidingwindow_9passes.jsonl"


@pytest.fixture(autouse=True)
def _at_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.mark.parametrize("path", sorted((REPO / "data_prep").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_validates(path):
    cfg = load_job(path)  # the openai job's key need not be set to validate
    # relative paths resolve against the job file's folder: outputs land beside data_prep/, not in the package
    assert cfg.name and Path(cfg.output.dir).is_absolute()
    assert Path(cfg.output.dir).parent.name in ("data", "prep") and "data_prep" not in cfg.output.dir


def test_shipped_jobs_cover_the_required_set():
    names = {p.name for p in (REPO / "data_prep").glob("*.yaml")}
    assert {"fullrank-msmarco-openai.yaml", "rankzephyr-import.yaml", "demo-offline.yaml", "dl19-eval.yaml",
            "dl20-eval.yaml", "fullrank-import.yaml"} <= names
    assert load_job(REPO / "data_prep" / "fullrank-msmarco-openai.yaml").teacher.kind == "openai"


def _problems(tmp_path, text: str, overrides=()) -> list[str]:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_job(p, list(overrides))
    return err.value.problems


BASE = """name: t
source: {kind: fullrank, path: x.jsonl, synthetic_text: true}
teacher: {kind: scores, path: x.jsonl, format: fullrank}
output: {dir: out}
"""


def test_all_problems_at_once_with_dotted_paths_and_did_you_mean(tmp_path):
    text = BASE.replace("format: fullrank", "format: fullrank, delay: 1") + "labels: {windw: 20, mode: freeze}\n"
    probs = _problems(tmp_path, text, ["prompt.presett=compact", "labels.stride=0", "oops"])
    joined = "\n".join(probs)
    assert "teacher.delay: unknown key (did you mean 'teacher.delay_s'?)" in joined
    assert "labels.windw: unknown key (did you mean 'labels.window'?)" in joined
    assert "prompt.presett: unknown key (did you mean 'prompt.preset'?)" in joined
    assert "labels.mode: Input should be 'single_pass', 'freeze_prefix' or 'full_repass'" in joined
    assert "labels.stride: Input should be greater than or equal to 1" in joined
    assert "override 'oops': expected KEY=VALUE, e.g. teacher.model=gpt-4o" in joined
    assert len(probs) == 6


def test_kind_typos_strict_types_and_cross_checks(tmp_path):
    assert _problems(tmp_path, BASE.replace("kind: scores", "kind: scoers")) == [
        "teacher.kind: unknown kind 'scoers' (did you mean 'scores'?)"]
    assert _problems(tmp_path, BASE, ["labels.window='20'"]) == [
        "labels.window: Input should be a valid integer (got '20')"]
    probs = _problems(tmp_path, BASE, ["labels.stride=20", "labels.mode=single_pass", "labels.num_passes=3"])
    assert any(p.startswith("labels.stride: must be smaller") for p in probs)
    assert any(p.startswith("labels.num_passes: single_pass") for p in probs)
    probs = _problems(tmp_path, BASE, ["prompt.preset=first_alpha", "labels.window=30"])
    assert probs == ["labels.window: 30 > 26 alphabetic identifiers; set prompt.identifiers=numeric"]
    trec = "name: t\nsource: {kind: trec, run: r.txt}\noutput: {dir: o}\n"
    assert _problems(tmp_path, trec)[0].startswith("teacher.kind: a TREC run without source.qrels")
    assert _problems(tmp_path, BASE.replace("output: {dir: out}\n", "")) == ["output: required key is missing"]
    assert _problems(tmp_path, BASE, ["teacher.path.x=1"])[0].startswith("override 'teacher.path.x=1'")


def test_demo_job_reproduces_final_list_and_shards_merge_to_the_same_rows(tmp_path):
    assert LABELS.is_file(), f"missing shipped data {LABELS}"
    final = {json.loads(x)["qid"]: json.loads(x)["final_list"] for x in LABELS.open()}
    one = tmp_path / "one"
    card = run_shard(load_job(DEMO, ["source.limit=40", f"output.dir={one}"]))
    c = card["counts"]
    assert c["rows_written"] == 40 and c["calls"] == 40 * 45 and c["invalid_responses"] == 0
    assert c["teacher_calls"] + c["cache_hits"] == c["calls"]
    assert card["provenance"]["labels"]["mode"] == "freeze_prefix" and card["provenance"]["teacher"]["kind"] == "scores"
    rows = pq.read_table(one / "data.parquet").to_pylist()
    assert all(r["ranking"] == final[r["qid"]] for r in rows)
    calls = pq.read_table(one / "calls" / "part-00000-of-00001.parquet")
    assert calls.num_rows == 40 * 45 and set(calls.column_names) >= {"docids", "raw", "order", "missing", "cached"}

    two = tmp_path / "two"
    for i in (0, 1):
        part = run_shard(load_job(DEMO, ["source.limit=40", f"output.dir={two}"]), num_shards=2, shard_id=i)
        assert part["counts"]["rows_written"] == 20
    with pytest.raises(LrtError, match="different job"):
        run_shard(load_job(DEMO, ["source.limit=41", f"output.dir={two}"]), num_shards=2, shard_id=0)
    merge(two)
    merged = pq.read_table(two / "data.parquet").to_pylist()
    assert sorted(merged, key=lambda r: r["qid"]) == sorted(rows, key=lambda r: r["qid"])
    assert json.loads((two / "card.json").read_text())["counts"]["calls"] == 40 * 45


def test_merge_refuses_missing_shards(tmp_path):
    run_shard(load_job(DEMO, ["source.limit=6", f"output.dir={tmp_path}"]), num_shards=3, shard_id=1)
    with pytest.raises(LrtError, match=r"shard\(s\) \[0, 2\] of 3 are not finished"):
        merge(tmp_path)


def test_main_exit_codes_and_messages(tmp_path, capsys):
    assert main([str(DEMO), "labels.windw=3"]) == 2
    assert "did you mean 'labels.window'" in capsys.readouterr().err
    assert main([str(DEMO), "--check", "labels.mode=full_repass"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"]["mode"] == "full_repass"
    out = tmp_path / "o"
    assert main([str(DEMO), "source.limit=4", f"output.dir={out}", "--num-shards", "2", "--shard-id", "1"]) == 0
    assert main([str(DEMO), "source.limit=4", f"output.dir={out}", "--num-shards=2", "--shard-id=0"]) == 0
    assert main(["merge", str(out)]) == 0 and (out / "data.parquet").exists()
    assert main(["merge"]) == 2


def test_slurm_array_script_submits_array_then_merge_and_runs_a_shard(tmp_path):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/sbatch.log\necho 4242\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "NUM_SHARDS": "2",
           "LRT_PREP": f"{sys.executable} -m lrt.cli prep", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    args = ["bash", str(REPO / "launch" / "slurm-prep-array.sbatch"), str(DEMO), "source.limit=4", f"output.dir={out}"]
    res = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    log = (tmp_path / "sbatch.log").read_text().splitlines()
    assert "--array=0-1%2" in log[0] and log[0].endswith(f"source.limit=4 output.dir={out}")
    assert "--dependency=afterok:4242" in log[1] and f"merge '{out}'" in log[1]
    task = subprocess.run(args, env={**env, "SLURM_ARRAY_TASK_ID": "1"}, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert task.returncode == 0, task.stderr
    assert (out / "cards" / "part-00001-of-00002.json").exists()


def test_every_shipped_recipe_reads_what_a_shipped_job_writes():
    """Jobs and recipes connect: each recipe's data.train / data.eval is the data.parquet of a shipped job."""
    from lrt.config import load_recipe

    outputs = {load_job(p).output.dir for p in (REPO / "data_prep").glob("*.yaml")}
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        if path.name.startswith("quickstart"):  # their data are generated by `lrt quickstart`
            continue
        r = load_recipe(path, check_files=False)
        for key, val in (("data.train", r.data.train), ("data.eval", r.data.eval)):
            assert Path(val).name == "data.parquet" and str(Path(val).parent) in outputs, f"{path.name} {key}={val}"
        if r.eval.qrels:
            assert Path(resolve(r.eval.qrels)).is_file()


def resolve(p: str) -> str:
    from lrt.config import resolve_path

    return resolve_path(p)
