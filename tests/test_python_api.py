"""The README's Python API block runs as written (fewer steps): Recipe(...) -> lrt.train -> lrt.Reranker."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_api_block(tmp_path, monkeypatch):
    from lrt.demo.world import make_split, write_jsonl

    block = re.search(r"### Python API\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    assert '"max_steps": 100' in block
    monkeypatch.chdir(tmp_path)
    write_jsonl(make_split(64, 5, 1, query_words=1, passage_len=(4, 6), qid_prefix="t"), tmp_path / "train.jsonl")
    write_jsonl(make_split(16, 5, 2, query_words=1, passage_len=(4, 6), qid_prefix="e"), tmp_path / "eval.jsonl")
    (tmp_path / "my.yaml").write_text("model: {name_or_path: lrt:assets/tiny-backbone}\ndata: {train: train.jsonl}\n"
                                      "output_dir: runs/yaml\n")
    ns: dict = {}
    exec(compile(block.replace('"max_steps": 100', '"max_steps": 2'), "README.md", "exec"), ns)  # noqa: S102
    res = ns["result"]
    assert res.steps == 2 and res.final_dir and (Path(res.final_dir) / "lrt_reranker.json").is_file()
    assert ns["recipe"].train.lr == 1e-5 and ns["recipe"].data.train == str(tmp_path / "train.jsonl")
    assert ns["reranker"] is not None
