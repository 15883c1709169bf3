"""Pointwise models after training: `lrt rerank --mode pointwise` and the sequence-classifier export."""
from __future__ import annotations

import torch
import pytest

from test_pointwise import save_pointwise_model
from test_rerank_cli import write_inputs


@pytest.fixture(scope="module")
def pw_export(tmp_path_factory):
    from lrt.data.pointwise import PointwiseTemplate
    from lrt.rerank import RerankerMeta

    d = save_pointwise_model(tmp_path_factory.mktemp("pwx") / "model", seed=5)
    t = PointwiseTemplate.preset("qwen3_reranker", max_passage_tokens=24)
    RerankerMeta(template=t.to_dict(), window=8, stride=1, max_length=256, bos="none", mode="pointwise").save(d)
    return d


def _hf_scores(model_dir, pairs):
    """Plain transformers: one unpadded forward per pair, logit(yes) - logit(no) at the last token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lrt.data.pointwise import PointwiseTemplate, encode_pair
    from lrt.rerank import RerankerMeta

    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    t = PointwiseTemplate.from_dict(RerankerMeta.load(model_dir).template)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out = []
    with torch.no_grad():
        for q, p in pairs:
            logits = lm(input_ids=torch.tensor([encode_pair(tok, t, q, p, 256)])).logits[0, -1]
            out.append(float(logits[yes] - logits[no]))
    return out


def test_lrt_rerank_pointwise(pw_export, tmp_path, capsys):
    from lrt.cli import main

    files = write_inputs(tmp_path)
    assert main(["rerank", "--model", pw_export, "--mode", "pointwise", "--run", files["run"], "--queries",
                 files["queries"], "--corpus", files["corpus"], "--out", files["out"], "--batch-size", "3",
                 "--device", "cpu"]) == 0
    assert "mode pointwise" in capsys.readouterr().out
    rows = [line.split() for line in open(files["out"]).read().splitlines()]
    q1 = [(r[2], float(r[4])) for r in rows if r[0] == "q1"]
    docs = [d for d, _ in q1]
    want = dict(zip(docs, _hf_scores(pw_export, [("quick fox", f"the {d} passage text about a fox") for d in docs])))
    assert docs == sorted(docs, key=lambda d: -want[d])  # the order of the plain-HF scores
    assert q1[0][1] == pytest.approx(want[docs[0]], abs=1e-4)  # the top score is the model's logit difference
    # without --mode: the export's own (pointwise); the Python API likewise
    assert main(["rerank", "--model", pw_export, "--run", files["run"], "--queries", files["queries"], "--corpus",
                 files["corpus"], "--out", str(tmp_path / "d.trec"), "--device", "cpu"]) == 0
    assert open(tmp_path / "d.trec").read() == open(files["out"]).read()
    from lrt.rerank import Reranker
    from lrt.rerank import PointwiseReranker

    assert isinstance(Reranker.from_pretrained(pw_export, device="cpu"), PointwiseReranker)
    # a pointwise export in a listwise mode: one clear error
    assert main(["rerank", "--model", pw_export, "--mode", "first_token", "--run", files["run"], "--queries", files["queries"], "--corpus",
                 files["corpus"], "--out", str(tmp_path / "x.trec"), "--device", "cpu"]) == 2
    assert "use --mode pointwise" in capsys.readouterr().err


@pytest.mark.parametrize("side", ["left", "right"])
def test_seq_cls_export_gives_the_same_scores(pw_export, tmp_path, side):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lrt.cli import main
    from lrt.data.pointwise import PointwiseTemplate, encode_pair, pad_pairs
    from lrt.rerank import RerankerMeta

    out = tmp_path / "seq"
    assert main(["export", pw_export, "--to-seq-cls", "--out", str(out)]) == 0
    pairs = [("quick fox", "the fox passage"), ("lazy dog", "a much longer passage about the lazy dog and a fox"),
             ("rank", "query text document")]
    want = _hf_scores(pw_export, pairs)
    seq = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert seq.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(str(out))
    t = PointwiseTemplate.from_dict(RerankerMeta.load(pw_export).template)
    b = pad_pairs([encode_pair(tok, t, q, p, 256) for q, p in pairs], tok.pad_token_id, side)
    with torch.no_grad():
        got = seq(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-4, rtol=1e-4)
