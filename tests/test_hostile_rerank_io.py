"""`lrt rerank` / `lrt eval` paths as a hostile user gives them (issue 28), through the real CLI as a
subprocess: an output that is also an input (same path, a symlink or a hard link to it) or the other
output is refused before anything is read or written; FIFOs, dangling symlinks and directories as
inputs give one clear error instead of a hang or a traceback; truncated weights are named."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_hostile_export import assert_refused, lrt, snapshot
from test_pointwise import save_pointwise_model
from test_rerank_cli import write_inputs


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from lrt.data.pointwise import PointwiseTemplate
    from lrt.rerank import RerankerMeta

    d = Path(save_pointwise_model(tmp_path_factory.mktemp("hr") / "model", seed=3))
    t = PointwiseTemplate.preset("qwen3_reranker", max_passage_tokens=24)
    RerankerMeta(template=t.to_dict(), window=8, stride=1, max_length=256, bos="none", mode="pointwise").save(d)
    return d


def _args(files: dict[str, str], **change: str) -> list[str]:
    f = {**files, **change}
    out = ["--run", f["run"], "--queries", f["queries"], "--corpus", f["corpus"], "--out", f["out"], "--device", "cpu"]
    return out + (["--stats", f["stats"]] if "stats" in f else [])


def _link(kind: str, target: str, at: Path) -> str:
    if kind == "symlink":
        at.symlink_to(target)
    else:
        os.link(target, at)
    return str(at)


# (case, how --out / --stats is chosen from the input files, needle)
COLLISIONS = [
    ("--out is --run", lambda f, d: {"out": f["run"]}, "--out {run} is the same file as --run"),
    ("--out is --queries", lambda f, d: {"out": f["queries"]}, "is the same file as --queries"),
    ("--out is --corpus", lambda f, d: {"out": f["corpus"]}, "is the same file as --corpus"),
    ("--out is --stats", lambda f, d: {"stats": f["out"]}, "is the same file as --stats"),
    ("--stats is --run", lambda f, d: {"stats": f["run"]}, "--stats {run} is the same file as --run"),
    ("--out is a symlink to --run", lambda f, d: {"out": _link("symlink", f["run"], d / "o.trec")},
     "is the same file as --run"),
    ("--out is a hard link to --corpus", lambda f, d: {"out": _link("hard", f["corpus"], d / "o.trec")},
     "is the same file as --corpus"),
    ("--out is --run via ..", lambda f, d: {"out": str(d / "sub" / ".." / "run.trec")}, "is the same file as --run"),
    ("--stats is a symlink to --queries", lambda f, d: {"stats": _link("symlink", f["queries"], d / "s.json")},
     "is the same file as --queries"),
]


@pytest.mark.parametrize("case,change,needle", COLLISIONS, ids=[c[0] for c in COLLISIONS])
def test_an_output_that_is_an_input_is_refused(case, change, needle, model, tmp_path):
    files = write_inputs(tmp_path)
    (tmp_path / "sub").mkdir()
    ch = change(files, tmp_path)
    before = snapshot(tmp_path)
    p = lrt("rerank", "--model", model, *_args(files, **ch))
    assert_refused(p, needle.format(**files))
    assert snapshot(tmp_path) == before  # every input byte for byte; nothing written


def _fifo(d: Path) -> str:
    os.mkfifo(d / "fifo")
    return str(d / "fifo")


def _dangling(d: Path) -> str:
    (d / "gone").symlink_to(d / "deleted.tsv")
    return str(d / "gone")


# (case, which input, how it is made, needle)
BAD_INPUTS = [
    ("--run is a FIFO", "run", _fifo, "not a regular file (a FIFO"),
    ("--queries is a FIFO", "queries", _fifo, "not a regular file (a FIFO"),
    ("--corpus is a FIFO", "corpus", _fifo, "not a regular file (a FIFO"),
    ("--run is a dangling symlink", "run", _dangling, "a dangling symlink"),
    ("--corpus is a dangling symlink", "corpus", _dangling, "a dangling symlink"),
    ("--queries is a directory", "queries", lambda d: str(d), "a directory, not a file"),
]


@pytest.mark.parametrize("case,which,make,needle", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_rerank_inputs_that_are_not_files(case, which, make, needle, model, tmp_path):
    files = write_inputs(tmp_path)
    p = lrt("rerank", "--model", model, *_args(files, **{which: make(tmp_path)}), timeout=120)
    assert_refused(p, f"--{which}", needle)
    assert not Path(files["out"]).exists()


def test_rerank_requests_fifo(model, tmp_path):
    p = lrt("rerank", "--model", model, "--requests", _fifo(tmp_path), "--out", tmp_path / "o.jsonl", timeout=120)
    assert_refused(p, "--requests", "a FIFO")


@pytest.mark.parametrize("which", ["qrels", "run"])
@pytest.mark.parametrize("make,needle", [(_fifo, "a FIFO"), (_dangling, "a dangling symlink")], ids=["fifo", "dangling"])
def test_eval_inputs_that_are_not_files(which, make, needle, tmp_path):
    files = write_inputs(tmp_path)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 1\n")
    bad = make(tmp_path)
    args = {"qrels": str(qrels), "run": files["run"], which: bad}
    p = lrt("eval", "--qrels", args["qrels"], "--run", args["run"], timeout=120)
    assert_refused(p, bad, needle)


def test_truncated_weights_are_named_before_reranking(model, tmp_path):
    import shutil

    m = tmp_path / "model"
    shutil.copytree(model, m)
    w = m / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    files = write_inputs(tmp_path)
    assert_refused(lrt("rerank", "--model", m, *_args(files)), str(w), "truncated or corrupt")
    assert not Path(files["out"]).exists()
