"""Scores from hidden states x identifier rows equal the full-logits reference; target-only NLL
equals Hugging Face cross-entropy; left == right padding; the FIRST RankNet term equals a loop."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrt.config import LossTerm
from lrt.data.collate import ListwiseCollator, encode_example, identifier_token_ids
from lrt.data.prompts import PromptTemplate
from lrt.scoring import decoder_and_head, hidden_states, identifier_scores, target_nll
from lrt.testing.tiny import random_examples, tiny_llama
from lrt.objective.objective import Objective


@pytest.fixture(scope="module")
def setup(tokenizers):
    tok = tokenizers["chatml"]
    tpl = PromptTemplate.preset("compact")
    model = tiny_llama(len(tok), hidden=32, layers=2, heads=2, seed=3).eval()
    ids = identifier_token_ids(tok, tpl, 6)
    exs = random_examples(3, 6, seed=5)
    exs[1].candidates = exs[1].candidates[:4]
    exs[1].ranking = [d for d in exs[1].ranking if d in {c.docid for c in exs[1].candidates}]
    exs[1].relevance = exs[1].relevance[:4]
    encs = [encode_example(tok, tpl, e, max_length=2048, id_token_ids=ids) for e in exs]
    return tok, model, encs, exs


def _batch(tok, encs, side):
    return ListwiseCollator(tok.pad_token_id, side)(encs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_scores_equal_full_logits(setup, side):
    tok, model, encs, _ = setup
    batch = _batch(tok, encs, side)
    dec, head = decoder_and_head(model)
    with torch.no_grad():
        h = hidden_states(dec, batch)
        s = identifier_scores(h, batch["answer_pos"], batch["cand_ids"], head.weight)
        for b, enc in enumerate(encs):  # reference: plain HF forward of this example alone, full logits
            ids = torch.tensor([enc.input_ids])
            logits = model(input_ids=ids).logits[0, enc.answer_index - 1]
            n = len(enc.ranks)
            ref = logits[torch.tensor(enc.cand_token_ids)]
            torch.testing.assert_close(s[b, :n], ref, atol=1e-5, rtol=1e-5)


def test_left_equals_right_padding(setup):
    tok, model, encs, _ = setup
    dec, head = decoder_and_head(model)
    with torch.no_grad():
        out = []
        for side in ("left", "right"):
            batch = _batch(tok, encs, side)
            h = hidden_states(dec, batch)
            out.append(identifier_scores(h, batch["answer_pos"], batch["cand_ids"], head.weight))
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)


def test_target_nll_equals_hf_cross_entropy(setup):
    tok, model, encs, _ = setup
    batch = _batch(tok, encs, "right")
    dec, head = decoder_and_head(model)
    with torch.no_grad():
        h = hidden_states(dec, batch)
        nll = target_nll(h, batch, head.weight, None, chunk_size=7)
        ref = []
        for enc in encs:
            ids = torch.tensor([enc.input_ids])
            logits = model(input_ids=ids).logits[0]
            ts = enc.target_start
            ref.append(F.cross_entropy(logits[ts - 1:-1], ids[0, ts:], reduction="none"))
    torch.testing.assert_close(nll, torch.cat(ref), atol=1e-5, rtol=1e-5)


def test_first_ranknet_term_matches_double_loop(setup):
    tok, model, encs, exs = setup
    batch = _batch(tok, encs, "right")
    obj = Objective([LossTerm(name="lm"), LossTerm(name="ranknet", weight=10.0, params={"weighting": "first"})])
    dec, head = decoder_and_head(model)
    with torch.no_grad():
        h = hidden_states(dec, batch)
        nums, scores = obj.numerators(h, batch, head.weight, None)
    total = 0.0
    for b, ex in enumerate(exs):
        r = ex.ranks()
        n = len(r)
        s = scores[b, :n].tolist()
        acc, pairs = 0.0, 0
        for i in range(n):
            for j in range(n):
                if r[i] < r[j]:
                    acc += 1.0 / (r[i] + r[j]) * math.log1p(math.exp(-(s[i] - s[j])))
                    pairs += 1
        total += acc / pairs
    assert float(nums["ranknet"]) == pytest.approx(total, rel=1e-5)
    dens = obj.denominators(batch)
    assert dens["ranknet"] == 3 and dens["lm"] == batch["lm_targets"].numel()


def test_liger_kernel_falls_back_to_chunked_path_on_cpu(setup):
    tok, model, encs, _ = setup
    batch = _batch(tok, encs, "right")
    dec, head = decoder_and_head(model)
    plain = Objective([LossTerm(name="lm")])
    liger = Objective([LossTerm(name="lm", params={"kernel": "liger"})])
    with torch.no_grad():
        h = hidden_states(dec, batch)
        a, _ = plain.numerators(h, batch, head.weight, None)
        b, _ = liger.numerators(h, batch, head.weight, None)
    assert torch.equal(a["lm"], b["lm"])


def _bf16_autocast():
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def test_scores_are_fp32_under_bf16_autocast():
    """Issue 10: under `precision: bf16` the identifier einsum ran in bf16 (logits of ~16-20 on a
    0.06 grid, exact ties between candidates). Now: no exact ties on random data, and the scores
    equal an fp64 computation from the same (bf16) hidden states to fp32 rounding."""
    g = torch.Generator().manual_seed(0)
    B, T, H, V, N = 64, 9, 256, 500, 20
    hidden = (torch.randn(B, T, H, generator=g) * 1.1).to(torch.bfloat16)  # what a bf16 decoder returns
    weight = torch.randn(V, H, generator=g)  # fp32 master weights (precision: bf16 autocasts them)
    pos = torch.randint(0, T, (B,), generator=g)
    cand = torch.stack([torch.randperm(V, generator=g)[:N] for _ in range(B)])
    ref = torch.einsum("bh,bnh->bn", hidden[torch.arange(B), pos].double(), weight[cand].double())
    assert ref.abs().mean() > 10  # logits in the range the issue reports
    with _bf16_autocast():
        s = identifier_scores(hidden, pos, cand, weight)
        naive = torch.einsum("bh,bnh->bn", hidden[torch.arange(B), pos].float(), weight[cand].float())
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.double(), ref, rtol=1e-6, atol=1e-4)

    def ties(x):
        return sum(int((row[:, None] == row[None, :]).sum() - row.numel()) // 2 for row in x)

    assert ties(s) == 0
    assert naive.dtype == torch.bfloat16 and ties(naive) > 0  # what the autocast einsum did before


@pytest.mark.parametrize("lora", [False, True])
def test_losses_and_lipo_logprobs_are_fp32_under_bf16_autocast(setup, lora):
    """The whole loss of a step (lm + ranknet + LiPO with its reference log-probs) computed under
    bf16 autocast equals the same computation in fp32 from the same hidden states."""
    from lrt.objective.module import RerankModule
    from lrt.objective.objective import identifier_logprobs

    tok, _, encs, _ = setup
    model = tiny_llama(len(tok), hidden=32, layers=2, heads=2, seed=4)
    with torch.no_grad():  # logits of ~10, as a trained model's (random init gives ~0.01: no rounding to see)
        model.get_output_embeddings().weight.mul_(100.0)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.0))
    obj = Objective([LossTerm(name="lm"), LossTerm(name="ranknet", weight=2.0),
                     LossTerm(name="lipo_lambda", params={"beta": 0.5})])
    dec, head = decoder_and_head(model)
    seen = []  # hooked before RerankModule: the full fine-tuning reference copy carries it too
    dec.register_forward_hook(lambda m, a, o: seen.append(o.last_hidden_state.detach()))
    module = RerankModule(model, obj).eval()
    batch = _batch(tok, encs, "right")
    dens = obj.denominators(batch)
    with torch.no_grad(), _bf16_autocast():
        loss, nums = module(batch, dens, 1.0)
    assert len(seen) == 2
    h_policy, h_ref = seen  # the policy forward, then the reference pass
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in nums.values())
    assert nums["ranknet"] > 0.5  # scores far apart: a real loss value, not log(2) of near-ties
    with torch.no_grad():
        s_ref = identifier_scores(h_ref, batch["answer_pos"], batch["cand_ids"], head.weight)
        ref_lp = identifier_logprobs(h_ref, batch["answer_pos"], s_ref, head.weight)
        want, _ = obj.numerators(h_policy.float(), batch, head.weight, None, ref_lp)
    for k in want:
        torch.testing.assert_close(nums[k], want[k], rtol=1e-5, atol=1e-5, msg=k)
