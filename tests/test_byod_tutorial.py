"""docs/own-data.md, executed exactly as written: its `bash` blocks run in order in one shell (so `cd`
carries over), its YAML blocks are saved under the name on their first line, through the installed
`lrt` console script, from a temp folder holding a copy of examples/ (as a clone's root would).
Then the files it produced are checked, and the shipped collection against its generator.
"""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "own-data.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```\s*$", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in BLOCK.findall(DOC.read_text(encoding="utf-8"))]


def script(chosen: list[tuple[str, str]]) -> str:
    out = ["set -euo pipefail"]
    for lang, body in chosen:
        if lang == "bash":
            out.append(body)
        elif lang == "yaml":
            first = body.splitlines()[0]
            m = re.fullmatch(r"# save as: (\S+)", first)
            assert m, f"a YAML block of {DOC.name} must start with '# save as: NAME': {first!r}"
            out.append(f"cat > {m.group(1)} <<'LRT_TUTORIAL_EOF'\n{body}LRT_TUTORIAL_EOF")
    return "\n".join(out) + "\n"


def run(cwd: Path, text: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out[-5000:]
    assert p.returncode == 0, f"the tutorial failed ({p.returncode}):\n{out[-5000:]}"
    return p.stdout


@pytest.mark.slow  # about 2 minutes of CPU: prep twice, validate, 150 + 30 training steps, rerank, eval
def test_the_tutorial_runs_as_written(tmp_path):
    chosen = blocks()
    langs = [lang for lang, _ in chosen]
    assert langs.count("bash") >= 6 and langs.count("yaml") == 3, langs
    *steps, cleanup = [b for b in chosen if b[0] in ("bash", "yaml")]
    assert cleanup[0] == "bash" and "rm -rf own" in cleanup[1]
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    out = run(tmp_path, script(steps))

    own = tmp_path / "own"
    held = (own / "data" / "own-beir" / "held_out" / "qids.txt").read_text().split()
    train = pq.read_table(own / "data" / "own-beir" / "data.parquet").column("qid").to_pylist()
    assert len(held) == 20 and len(train) == 60 and not set(held) & set(train)
    assert "same held-out run" in out
    # the summary line the page shows is the one the job prints (paths elided with ...)
    shown = next(body for lang, body in chosen if lang == "text" and body.startswith("own-beir shard")).strip()
    printed = next(line for line in out.splitlines() if line.startswith("own-beir shard"))
    assert re.fullmatch(re.escape(shown).replace(re.escape("..."), ".*"), printed), (shown, printed)
    lines = (own / "reranked.trec").read_text().splitlines()
    assert len(lines) == 20 * 20 and {ln.split()[0] for ln in lines} == set(held)
    assert "against the baseline" in out and re.search(r"reranked\.trec\s+nDCG@10\s+-?\d\.\d{4}\s+\d+\s+\d+\s+\d+", out)
    assert (own / "runs" / "own" / "final" / "lrt_reranker.json").is_file()
    assert (own / "runs" / "own-random" / "final" / "lrt_reranker.json").is_file()

    run(own, script([cleanup]))  # the shell of the steps ended in own/
    assert not own.exists()


def test_the_shipped_collection_is_what_its_generator_writes(tmp_path):
    gen = tmp_path / "gen"
    shutil.copytree(REPO / "examples" / "own-data", gen, ignore=shutil.ignore_patterns("beir", "trec", "*.trec"))
    subprocess.run([sys.executable, str(gen / "make_collection.py")], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    shipped = REPO / "examples" / "own-data"
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file() and p.suffix != ".md"
                   and p.suffix != ".py")
    assert len(files) == 7
    for f in files:
        assert filecmp.cmp(shipped / f, gen / f, shallow=False), f"{f} differs from make_collection.py's output"
    assert sum((shipped / f).stat().st_size for f in files) < 400_000
