"""A pointwise model trained by `lrt train`, served outside lrt: sentence-transformers' CrossEncoder loads the
`lrt export --to-seq-cls` conversion and gives the scores of `lrt rerank --mode pointwise` (the docs/pointwise.md
snippet, run as written); the config fields and the score template vLLM's score API reads."""
from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch

from test_pointwise_train import pw_model, pw_recipe  # noqa: F401  (fixtures: the tiny model and its recipe)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(pw_recipe, tmp_path_factory):  # noqa: F811
    """`lrt train` (4 steps, pointwise) -> RUN/final -> `lrt export RUN/final --to-seq-cls --out seq`."""
    from lrt.cli import main

    d = tmp_path_factory.mktemp("pwserve")
    assert main(["train", str(pw_recipe), f"output_dir={d / 'run'}"]) == 0
    assert main(["export", str(d / "run/final"), "--to-seq-cls", "--out", str(d / "seq")]) == 0
    return d


def readme_snippet() -> str:
    text = (REPO / "docs/pointwise.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- tested: tests/test_pointwise_serving.py -->\n( *)```python\n(.*?)\n *```", text, re.S)
    assert m, "docs/pointwise.md: the CrossEncoder snippet (marked for tests/test_pointwise_serving.py) is missing"
    return textwrap.dedent(m.group(2))


def _rerank_inputs(d: Path, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """TREC run + TSV topics/corpus holding exactly these (query, passage) pairs."""
    qids = {q: f"q{i}" for i, q in enumerate(dict.fromkeys(q for q, _ in pairs))}
    (d / "topics.tsv").write_text("".join(f"{qid}\t{q}\n" for q, qid in qids.items()))
    (d / "corpus.tsv").write_text("".join(f"d{i}\t{p}\n" for i, (_, p) in enumerate(pairs)))
    (d / "run.trec").write_text("".join(f"{qids[q]} Q0 d{i} {i + 1} {10 - i}.0 bm25\n" for i, (q, _) in enumerate(pairs)))
    return {"run": str(d / "run.trec"), "queries": str(d / "topics.tsv"), "corpus": str(d / "corpus.tsv"),
            "out": str(d / "out.trec")}


def test_cross_encoder_gives_the_lrt_rerank_scores(served, tmp_path, capsys):
    from lrt.cli import main
    from lrt.rerank import Reranker, monotone_scores

    ns: dict = {}
    exec(compile(readme_snippet().replace('"SEQ_DIR"', repr(str(served / "seq"))), "docs/pointwise.md", "exec"), ns)  # noqa: S102
    pairs, scores, probs = ns["pairs"], [float(x) for x in ns["scores"]], [float(x) for x in ns["probs"]]
    assert len(pairs) == len(scores) == 3
    # the lrt pointwise scorer of the causal-LM export: the same numbers (fp32)
    want = Reranker.from_pretrained(str(served / "run/final"), device="cpu").score_pairs(pairs)
    assert scores == pytest.approx(want, abs=1e-5)
    assert max(want) - min(want) > 1e-3  # the pairs get different scores: the comparison can tell them apart
    # CrossEncoder's default activation for one output is the sigmoid: P(yes) of a Qwen3-Reranker
    assert probs == pytest.approx([1 / (1 + math.exp(-s)) for s in want], abs=1e-6)
    # `lrt rerank --mode pointwise` on the same pairs: its order and its (tie-free) scores
    f = _rerank_inputs(tmp_path, pairs)
    assert main(["rerank", "--model", str(served / "run/final"), "--mode", "pointwise", "--run", f["run"], "--queries",
                 f["queries"], "--corpus", f["corpus"], "--out", f["out"], "--device", "cpu"]) == 0
    rows = [line.split() for line in Path(f["out"]).read_text().splitlines()]
    got = [(int(r[2][1:]), float(r[4])) for r in rows]
    order = sorted(range(3), key=lambda i: (-scores[i], i))
    assert [i for i, _ in got] == order
    assert [s for _, s in got] == pytest.approx(monotone_scores([scores[i] for i in order]), abs=2e-6)


def test_cross_encoder_prompt_is_the_instruction(served):
    """`predict(..., prompt=...)` becomes a system message, which the template uses as the instruction."""
    from sentence_transformers import CrossEncoder

    from lrt.rerank import RerankerMeta
    from lrt.rerank import PointwiseReranker

    pairs = [("quick fox", "the fox passage"), ("lazy dog", "a passage about the lazy dog")]
    lrt = PointwiseReranker.from_pretrained(str(served / "run/final"), device="cpu")
    ce = CrossEncoder(str(served / "seq"), device="cpu", activation_fn=torch.nn.Identity())
    assert ce.predict(pairs).tolist() == pytest.approx(lrt.score_pairs(pairs), abs=1e-5)
    lrt.template = lrt.template.with_(instruction="Find passages about animals")
    assert lrt.template.instruction != RerankerMeta.load(served / "run/final").template["instruction"]
    assert ce.predict(pairs, prompt="Find passages about animals").tolist() == pytest.approx(lrt.score_pairs(pairs), abs=1e-5)


def test_seq_cls_export_has_what_vllm_reads(served):
    """vLLM's pooling runner: a *ForSequenceClassification architecture, one label, `use_sep_token: false`
    (no --chat-template: query + document as one text); with `--chat-template DIR/chat_template.jinja` it
    renders [{role: query}, {role: document}] through the template and tokenizes the text: the trained ids."""
    from transformers import AutoTokenizer

    from lrt.data.pointwise import PointwiseTemplate, encode_pair, pair_text

    seq = served / "seq"
    cfg = json.loads((seq / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and len(cfg["id2label"]) == 1
    assert cfg["use_sep_token"] is False and not cfg["tie_word_embeddings"]
    meta = json.loads((seq / "lrt_seq_cls.json").read_text())
    t = PointwiseTemplate.from_dict(meta["template"])
    tok = AutoTokenizer.from_pretrained(str(seq))
    assert tok.model_max_length == 256  # the recipe's data.max_length
    template = (seq / "chat_template.jinja").read_text()
    for q, p in [("quick fox", "the fox passage"), ('a "q" {query}', "{{ x }} {%raw%}\n<b>")]:
        text = tok.apply_chat_template([{"role": "query", "content": q}, {"role": "document", "content": p}],
                                       chat_template=template, tokenize=False)
        assert text == pair_text(t, q, p)
        assert tok(text)["input_ids"] == encode_pair(tok, t, q, p, 256)


def test_lora_pointwise_run_exports_the_trained_adapter(pw_recipe, pw_model, tmp_path, capsys):  # noqa: F811
    """`lrt train` with model.lora and scoring.mode=pointwise; RUN/final (merged), RUN/final/adapter,
    `lrt export RUN` (from the checkpoint) and `--to-seq-cls` of both final and its adapter all give the
    scores of the base + trained adapter, which differ from the base model's."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM

    from lrt.cli import main
    from lrt.rerank import PointwiseReranker

    out = tmp_path / "run"
    assert main(["train", str(pw_recipe), f"output_dir={out}", "model.lora={r: 8, alpha: 16, dropout: 0.0}",
                 "train.lr=2e-2"]) == 0
    final = out / "final"
    adapter = load_file(str(final / "adapter/adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained
    merged = PointwiseReranker.from_pretrained(str(final), device="cpu")
    assert not any("lora" in n for n, _ in merged.model.named_parameters())
    pairs = [("quick fox", "the fox passage"), ("lazy dog", "a passage about the lazy dog"), ("rank", "some text")]
    want = merged.score_pairs(pairs)

    def with_model(model):
        return PointwiseReranker(model.eval(), merged.tok, merged.template, max_length=256).score_pairs(pairs)

    base = AutoModelForCausalLM.from_pretrained(pw_model, dtype=torch.float32)
    assert max(abs(a - b) for a, b in zip(with_model(base), want)) > 1e-3  # the adapter matters
    fresh = AutoModelForCausalLM.from_pretrained(pw_model, dtype=torch.float32)
    assert with_model(PeftModel.from_pretrained(fresh, final / "adapter")) == pytest.approx(want, abs=1e-5)
    assert main(["export", str(out), "--out", str(tmp_path / "exp")]) == 0  # merged again from the last checkpoint
    assert PointwiseReranker.from_pretrained(str(tmp_path / "exp"), device="cpu").score_pairs(pairs) == pytest.approx(want, abs=1e-5)
    for src in (final, final / "adapter"):  # the adapter dir is merged into its base first
        seq = tmp_path / f"seq-{src.name}"
        assert main(["export", str(src), "--to-seq-cls", "--out", str(seq)]) == 0
        ce = CrossEncoder(str(seq), device="cpu", activation_fn=torch.nn.Identity())
        assert ce.predict(pairs).tolist() == pytest.approx(want, abs=1e-5), src
    # an adapter whose base is gone: one error line naming it, exit code 2
    import shutil

    moved = shutil.copytree(final / "adapter", tmp_path / "moved")
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["export", str(moved), "--to-seq-cls", "--out", str(tmp_path / "seq-x")]) == 2
    err = capsys.readouterr().err
    assert "no-such-base" in err and "cannot be loaded" in err and "Traceback" not in err


def _ds_run(pw_recipe, out: Path, ds: str, *extra: str) -> None:  # noqa: F811
    import sys

    from _scale_helpers import run

    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrt.cli",
         "train", str(pw_recipe), f"output_dir={out}", "train.grad_accum=1", "train.max_steps=2",
         f"train.deepspeed={ds}", *extra], timeout=240)


def _same_steps(two: Path, one: Path) -> None:
    from _scale_helpers import last_per_step, metrics

    got, want = last_per_step(metrics(two)), metrics(one)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for g, w in zip(got, want):
        for k in ("loss", "loss/softmax_ce", "loss/bce"):
            assert g[k] == pytest.approx(w[k], rel=1e-5), (g["step"], k)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4)
        assert g["lists"] == w["lists"] == 2


@pytest.fixture(scope="module")
def one_process(pw_recipe, tiny_data, tmp_path_factory):  # noqa: F811
    """The reference: one plain process, 2 lists accumulated per step, evaluated at the end."""
    from lrt.cli import main

    d = tmp_path_factory.mktemp("one")
    assert main(["train", str(pw_recipe), f"output_dir={d}", "train.max_steps=2", f"data.eval={tiny_data / 'eval.jsonl'}",
                 "eval.at_end=true"]) == 0
    return d


@pytest.mark.slow
def test_zero2_two_processes_equal_one(pw_recipe, one_process, tmp_path):  # noqa: F811
    """DeepSpeed ZeRO-2, 2 CPU processes x 1 list: the losses and grad norms of the plain process."""
    _ds_run(pw_recipe, tmp_path / "z2", "lrt:resources/launch/ds_zero2.json", "train.save_final=false")
    _same_steps(tmp_path / "z2", one_process)


@pytest.mark.slow
def test_zero3_two_processes_equal_one(pw_recipe, one_process, tiny_data, tmp_path):  # noqa: F811
    """ZeRO-3 with every parameter partitioned (persistence threshold 0, so the LM head too: its yes/no
    rows are read outside its forward): same steps, the same in-training evaluation (every rank reranks
    under ZeRO-3), and the gathered final/ scores like the plain run's."""
    from lrt.rerank import PointwiseReranker

    cfg = json.loads((REPO / "lrt/resources/launch/ds_zero3.json").read_text())
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "z3.json").write_text(json.dumps(cfg))
    z3 = tmp_path / "z3"
    _ds_run(pw_recipe, z3, str(tmp_path / "z3.json"), f"data.eval={tiny_data / 'eval.jsonl'}", "eval.at_end=true",
            "train.save_every=2")
    _same_steps(z3, one_process)
    state = json.loads((z3 / "checkpoints/step-0000002/trainer_state.json").read_text())
    assert state["zero_stage"] == 3 and state["loaded_partitioned"]

    def evals(d: Path) -> list[dict]:
        return [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "eval/nDCG@10_candidates" in r]

    (got,), (want,) = evals(z3), evals(one_process)
    assert got["eval/queries"] == want["eval/queries"] == 6
    assert got["eval/nDCG@10_candidates"] == pytest.approx(want["eval/nDCG@10_candidates"], abs=1e-9)
    pairs = [("quick fox", "the fox passage"), ("lazy dog", "a passage about the lazy dog"), ("rank", "some text")]
    a = PointwiseReranker.from_pretrained(str(z3 / "final"), device="cpu").score_pairs(pairs)
    b = PointwiseReranker.from_pretrained(str(one_process / "final"), device="cpu").score_pairs(pairs)
    assert a == pytest.approx(b, abs=1e-5)
