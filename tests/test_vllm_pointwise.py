"""The real-vLLM tier, pointwise: `lrt train` (4 steps, pointwise) -> `lrt export --to-seq-cls`, served
by a real vLLM with `--runner pooling --chat-template SEQ/chat_template.jinja`: its `/rerank` and
`/score` answers equal lrt's pointwise scores (`lrt rerank --mode pointwise`). Skipped without the
vLLM virtualenv (`scripts/test_vllm.sh` builds it)."""
from __future__ import annotations

import json
import urllib.request

import pytest

from lrt.testing.vllm_server import VLLMServer, skip_reason
from test_pointwise import pointwise_tokenizer
from test_pointwise_train import pw_recipe  # noqa: F401  (fixture: the recipe; it trains our pw_model below)

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))]

PAIRS = [("quick fox", "the fox passage"), ("quick fox", "a passage about the lazy dog"),
         ("quick fox", "some text on ranking"), ("lazy dog", "the dog sleeps"), ("lazy dog", "a quick brown fox")]


@pytest.fixture(scope="module")
def pw_model(tmp_path_factory) -> str:
    """test_pointwise's tiny model with head_dim 32 (vLLM's CPU attention has no kernel for 16)."""
    from lrt.testing.tiny import tiny_llama

    d = tmp_path_factory.mktemp("pw32") / "model"
    tok = pointwise_tokenizer()
    tiny_llama(len(tok), heads=2, seed=0, tie=False, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def served(pw_recipe, tmp_path_factory):  # noqa: F811
    from lrt.cli import main

    d = tmp_path_factory.mktemp("vllm_pw")
    assert main(["train", str(pw_recipe), f"output_dir={d / 'run'}"]) == 0
    assert main(["export", str(d / "run/final"), "--to-seq-cls", "--out", str(d / "seq")]) == 0
    seq = d / "seq"
    with VLLMServer(seq, "tiny-pw", log=d / "server.log", max_model_len=256,
                    args=["--runner", "pooling", "--chat-template", str(seq / "chat_template.jinja")]) as srv:
        print(f"\n[vllm] pointwise server up in {srv.startup_s:.0f} s")
        yield d, srv


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_rerank_and_score_endpoints_equal_lrt_pointwise_scores(served, tmp_path):
    from lrt.cli import main
    from lrt.rerank import Reranker

    d, srv = served
    want = Reranker.from_pretrained(str(d / "run/final"), device="cpu").score_pairs(PAIRS)
    assert max(want) - min(want) > 1e-3  # different scores: the comparison can tell pairs apart
    root = srv.url[: -len("/v1")]
    for q in dict.fromkeys(q for q, _ in PAIRS):
        idx = [i for i, (qq, _) in enumerate(PAIRS) if qq == q]
        docs = [PAIRS[i][1] for i in idx]
        ans = post(f"{root}/rerank", {"model": srv.name, "query": q, "documents": docs, "use_activation": False})
        got = {r["index"]: r["relevance_score"] for r in ans["results"]}
        assert [got[k] for k in range(len(docs))] == pytest.approx([want[i] for i in idx], abs=1e-4)
        sc = post(f"{root}/score", {"model": srv.name, "text_1": q, "text_2": docs, "use_activation": False})
        assert [x["score"] for x in sorted(sc["data"], key=lambda x: x["index"])] == pytest.approx(
            [want[i] for i in idx], abs=1e-4)
    # and `lrt rerank --mode pointwise` (the CLI the users run) gives these numbers' order
    qids = {q: f"q{i}" for i, q in enumerate(dict.fromkeys(q for q, _ in PAIRS))}
    (tmp_path / "topics.tsv").write_text("".join(f"{qid}\t{q}\n" for q, qid in qids.items()))
    (tmp_path / "corpus.tsv").write_text("".join(f"d{i}\t{p}\n" for i, (_, p) in enumerate(PAIRS)))
    (tmp_path / "run.trec").write_text("".join(f"{qids[q]} Q0 d{i} {i + 1} {10 - i}.0 bm25\n"
                                               for i, (q, _) in enumerate(PAIRS)))
    assert main(["rerank", "--model", str(d / "run/final"), "--mode", "pointwise", "--run", str(tmp_path / "run.trec"),
                 "--queries", str(tmp_path / "topics.tsv"), "--corpus", str(tmp_path / "corpus.tsv"),
                 "--out", str(tmp_path / "out.trec"), "--device", "cpu"]) == 0
    rows = [line.split() for line in (tmp_path / "out.trec").read_text().splitlines()]
    for qid in qids.values():
        mine = [int(r[2][1:]) for r in rows if r[0] == qid]
        assert mine == sorted(mine, key=lambda i: -want[i])
