"""Small CLI promises: `lrt --version`, every subcommand's --help, BrokenPipe-safe output, `lrt bench
losses` from an installed package (no source tree), prep's progress bar, skip summaries by kind."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lrt
from lrt.cli import BENCH
from lrt.cli import COMMANDS, main as lrt_main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "lrt" / "resources" / "data" / "fullrank"


def _lrt(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrt.cli", *args], capture_output=True, text=True, timeout=600, **kw)


def test_version(capsys):
    assert lrt_main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"lrt {lrt.__version__}" == f"lrt {importlib.metadata.version('lrt')}"
    assert lrt_main(["-V"]) == 0


HELP_TARGETS = [[c] for c in COMMANDS] + [["bench", b] for b in BENCH] + [["prep", "merge"]]


@pytest.mark.parametrize("cmd", HELP_TARGETS, ids=" ".join)
def test_every_subcommand_help_works(cmd, capsys):
    try:
        rc = lrt_main([*cmd, "--help"])
    except SystemExit as e:  # argparse's --help exits 0
        rc = e.code
    captured = capsys.readouterr()
    assert rc in (0, None), captured.err
    assert f"lrt {' '.join(cmd)}" in captured.out.replace("`", "") and not captured.err.strip()


def test_broken_pipe_is_quiet():
    """`lrt eval ... | head`: the reader is gone before lrt writes; no traceback, exit 141 like SIGPIPE."""
    p = subprocess.Popen([sys.executable, "-m", "lrt.cli", "eval", "--qrels", str(DATA / "qrels.dl19-passage.txt"),
                          "--run", str(DATA / "dl19-bm25_top100.txt"), "--per-query"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # like `head -1` having exited
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_bench_losses_runs_from_an_installed_package(tmp_path):
    """Only the package (no scripts/, no tests/) on the path: the benchmark still runs."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "lrt", site / "lrt", ignore=shutil.ignore_patterns("__pycache__", "data", "data_prep"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import lrt; print(lrt.__file__)"], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(site / "lrt" / "__init__.py")
    p = _lrt(["bench", "losses", "--b", "2", "--n", "6", "--reps", "1"], env=env, cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr[-2000:]  # 1 = some loss under 10x at this toy size: still a result
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    from lrt.losses import RANKING_LOSSES

    assert [r["loss"] for r in rows] == list(RANKING_LOSSES)
    assert all(r["rel_diff_vs_loop"] < 1e-4 and r["speedup"] > 0 for r in rows)


def test_prep_progress_bar_instead_of_step_lines(tmp_path):
    out = tmp_path / "prep"
    env = {**os.environ, "LRT_PROGRESS_INTERVAL": "0"}
    p = _lrt(["prep", str(REPO / "data_prep" / "demo-offline.yaml"), "source.limit=3", f"output.dir={out}"], env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stderr.splitlines()
    assert not any(": step " in x for x in lines)  # the 45 per-window-step INFO lines are gone
    bar = [x for x in lines if "prep " in x and " window/s" in x]
    assert bar and "prep 135/135 (100%)" in bar[-1]  # 3 queries x 45 windows (freeze_prefix, w=20, s=10, N=100)
    assert "\r" not in p.stderr


def test_skip_summary_grouped_by_kind(tmp_path):
    rows = []
    for i in range(3):
        rows.append({"qid": f"ok{i}", "query": "q", "candidates": [{"docid": "a", "text": "x"}, {"docid": "b", "text": "y"}],
                     "ranking": ["b", "a"]})
    for i in range(2):
        rows.append({"qid": f"e{i}", "query": "q", "candidates": [{"docid": "a", "text": "x"}, {"docid": f"b{i}", "text": ""}],
                     "ranking": [f"b{i}", "a"]})
    for i in range(3):
        rows.append({"qid": f"d{i}", "query": "q", "candidates": [{"docid": "a", "text": "x"}, {"docid": "a", "text": "y"}],
                     "ranking": ["a"]})
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    job = {"name": "skips", "source": {"kind": "canonical", "path": str(src), "on_invalid": "skip"},
           "output": {"dir": str(tmp_path / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    p = _lrt(["prep", str(tmp_path / "job.yaml")])
    assert p.returncode == 0, p.stderr[-2000:]
    err = p.stderr
    assert "8 rows, 5 skipped, by kind:" in err
    kinds = [x.strip() for x in err.splitlines() if x.strip()[:1].isdigit() and " x " in x]
    counts = {k.split(" x ", 1)[1]: int(k.split(" x ", 1)[0]) for k in kinds}
    assert counts.get("candidates[i] has empty or missing `text`") == 2, err
    assert sum(counts.values()) >= 5 and len(counts) <= 4  # grouped: not one entry per distinct message
