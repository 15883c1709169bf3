"""Sequence-level LiPO (`lipo_k`): K complete rankings per query scored as whole permutation strings.

The brute force is written independently of lrt's answer construction: it renders each ranking's
answer text `[C] > [A] > ...<eos>` itself, tokenizes prompt + answer with the tokenizer, runs a plain
full-logits forward of float64 copies of the policy and the frozen reference, sums the answer
tokens' log-probs, and evaluates the LiPO-λ formula with Python loops.
"""
from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import yaml

from lrt.config import recipe_from_dict
from lrt.data.prompts import render_prompt
from lrt.losses.lipo_k import perturbed_orders, teacher_order
from lrt.objective.lipo_k import answers, list_seeds, prefix_forward, sequence_logprobs
from lrt.train.loop import Trainer

BETA, K = 0.5, 4


def _raw(model_dir, data_dir, out, **params) -> dict:
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 16},
        "loss": [{"name": "lipo_k", "weight": 1.0, "params": {"beta": BETA, "num_rankings": K, **params}}],
        "train": {"max_steps": 3, "per_device_batch_size": 4, "lr": 5e-3, "save_final": False},
        "eval": {"at_end": False, "at_start": False},
        "log": {"progress": False},
        "output_dir": str(out),
    }


def _trainer(tiny_model_dir, tiny_data, tmp_path, **params) -> Trainer:
    t = Trainer(recipe_from_dict(_raw(tiny_model_dir, tiny_data, tmp_path / "run", **params), []))
    with torch.no_grad():  # policy != reference, so every s_k differs
        g = torch.Generator().manual_seed(3)
        for p in t.module.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t


def _answer_logp64(model, tok, prompt: str, labels: list[str]) -> float:
    """log p(answer | prompt) by a plain full-logits forward in float64."""
    answer = " > ".join(f"[{lab}]" for lab in labels) + tok.eos_token
    enc = tok(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    first = next(i for i, (s, _) in enumerate(enc["offset_mapping"]) if s >= len(prompt))
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(first, ids.shape[1]))


def _ndcg64(order: list[int], gains: list[float]) -> float:
    dcg = sum(gains[c] / math.log2(p + 2) for p, c in enumerate(order))
    ideal = sum(g / math.log2(p + 2) for p, g in enumerate(sorted(gains, reverse=True)))
    return dcg / ideal if ideal > 0 else 0.0


def _lipo_lambda64(s: list[float], psi: list[float]) -> float:
    G = [2.0 ** p - 1.0 for p in psi]
    max_dcg = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(G, reverse=True)))
    G = [g / max_dcg for g in G]
    by_s = sorted(range(len(s)), key=lambda i: -s[i])
    tau = {i: p + 1 for p, i in enumerate(by_s)}
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if psi[i] > psi[j] + 1e-9:
                delta = abs(G[i] - G[j]) * abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                total += delta * math.log1p(math.exp(-(s[i] - s[j])))
    return total


def test_lipo_k_equals_float64_bruteforce(tiny_model_dir, tiny_data, tmp_path):
    t = _trainer(tiny_model_dir, tiny_data, tmp_path)
    B = 4
    batch = t.collate([t.rows[i] for i in range(B)])
    dens = t.objective.denominators(batch)
    _, nums = t.module(batch, dens, 1.0)
    orders = perturbed_orders(batch["ranks"], list_seeds(batch, 0), K, "adjacent", 1)
    pol64 = copy.deepcopy(t.module.model).double().eval()
    ref64 = copy.deepcopy(t.module._reference).double().eval()
    expected = 0.0
    for b in range(B):
        ex = t.data.train_examples[b]
        n = len(ex.candidates)
        labels = [chr(65 + i) for i in range(n)]
        prompt = render_prompt(t.tok, t.template, ex.query, [c.text for c in ex.candidates])
        ranks = ex.ranks()
        gains = list(ex.relevance) if ex.relevance is not None else [float(n + 1 - r) for r in ranks]
        s, psi = [], []
        for k in range(K):
            order = [int(c) for c in orders[b, k] if c >= 0]
            assert sorted(order) == list(range(n))
            lab = [labels[c] for c in order]
            s.append(BETA * (_answer_logp64(pol64, t.tok, prompt, lab) - _answer_logp64(ref64, t.tok, prompt, lab)))
            psi.append(_ndcg64(order, gains))
        assert len(set(s)) == K or len({tuple(o.tolist()) for o in orders[b]}) < K  # scores differ per ranking
        expected += _lipo_lambda64(s, psi)
    assert expected > 0
    assert float(nums["lipo_k"]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_perturbations_are_seeded_and_independent_of_the_batch(tiny_model_dir, tiny_data, tmp_path):
    t = _trainer(tiny_model_dir, tiny_data, tmp_path, perturb="random", swaps=2)
    rows = [t.rows[i] for i in range(4)]
    a = t.collate(rows)
    left = copy.copy(t.collate)
    left.side = "left"
    b = left([rows[3], rows[1], rows[2], rows[0]])  # other order, other padding side
    oa = perturbed_orders(a["ranks"], list_seeds(a, 7), 5, "random", 2)
    ob = perturbed_orders(b["ranks"], list_seeds(b, 7), 5, "random", 2)
    assert torch.equal(oa[[3, 1, 2, 0]], ob)
    assert torch.equal(oa, perturbed_orders(a["ranks"], list_seeds(a, 7), 5, "random", 2))
    assert not torch.equal(oa, perturbed_orders(a["ranks"], list_seeds(a, 8), 5, "random", 2))  # the seed matters
    assert torch.equal(oa[:, 0], teacher_order(a["ranks"]))  # k = 0 is the teacher's ranking
    adj = perturbed_orders(a["ranks"], list_seeds(a, 0), 6, "adjacent", 1)
    for row in adj:  # one adjacent swap: exactly two neighbouring ranks exchanged
        for k in range(1, 6):
            diff = (row[k] != row[0]).nonzero().flatten().tolist()
            assert len(diff) == 2 and diff[1] == diff[0] + 1
    # the substituted answers are the answers of those rankings, and the same length as the teacher's
    tok, mask, _ = answers(a, oa)
    assert torch.equal(tok[:, 0][mask], a["lm_targets"])


def test_shared_prompt_cache_equals_repeated_rows(tiny_model_dir, tiny_data, tmp_path):
    """The KV-cache path and the K-full-rows path (used under gradient checkpointing) agree, values
    and gradients; a left-padded batch gives the same log-probs."""
    from lrt.scoring import decoder_and_head

    t = _trainer(tiny_model_dir, tiny_data, tmp_path)
    batch = t.collate([t.rows[i] for i in range(4)])
    orders = perturbed_orders(batch["ranks"], list_seeds(batch, 0), K, "random", 3)
    tokens, mask, start = answers(batch, orders)
    decoder, head = decoder_and_head(t.module.model)
    out = []
    for use_cache in (True, False):
        head.weight.grad = None
        h, cache = prefix_forward(decoder, batch)
        assert cache is not None
        lp = sequence_logprobs(decoder, head.weight, None, batch, h, cache if use_cache else None, tokens, mask,
                               start, 64)
        assert lp.dtype == torch.float32 and lp.shape == (4, K)
        lp.sum().backward()
        out.append((lp.detach(), head.weight.grad.clone()))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)
    left = copy.copy(t.collate)
    left.side = "left"
    lb = left([t.rows[i] for i in range(4)])
    with torch.no_grad():
        h, cache = prefix_forward(decoder, lb)
        lp_left = sequence_logprobs(decoder, head.weight, None, lb, h, cache, *answers(lb, orders), 64)
    torch.testing.assert_close(lp_left, out[0][0], rtol=1e-5, atol=1e-5)


def test_reference_is_frozen_in_eval_mode_and_losses_fp32_under_autocast(tiny_model_dir, tiny_data, tmp_path):
    t = _trainer(tiny_model_dir, tiny_data, tmp_path)
    ref = t.module._reference
    seen: list[bool] = []
    ref.get_decoder().register_forward_pre_hook(lambda m, a: seen.append(m.training))
    pol: list[bool] = []
    t.module.model.get_decoder().register_forward_pre_hook(lambda m, a: pol.append(m.training))
    ref0 = {n: p.detach().clone() for n, p in ref.named_parameters()}
    assert not any(p.requires_grad for p in ref.parameters())
    assert not any("_reference" in n for n, _ in t.module.named_parameters())
    batch = t.collate([t.rows[i] for i in range(4)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nums = t.module(batch, t.objective.denominators(batch), 1.0)
    assert loss.dtype == torch.float32 and nums["lipo_k"].dtype == torch.float32
    from lrt.scoring import decoder_and_head

    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoder, head = decoder_and_head(t.module.model)
        h, cache = prefix_forward(decoder, batch)
        policy, ref_lp, labels = t.module.sequence_inputs(batch, decoder, head, h, cache)["lipo_k"]
    assert policy.dtype == ref_lp.dtype == labels.dtype == torch.float32  # answer log-probs in fp32
    assert policy.requires_grad and not ref_lp.requires_grad
    _, nums32 = t.module(batch, t.objective.denominators(batch), 1.0)
    assert float(nums["lipo_k"]) == pytest.approx(float(nums32["lipo_k"]), rel=0.2)  # bf16 model, fp32 loss
    assert seen and not any(seen)  # every reference forward ran in eval mode
    hist = [t.train_step() for _ in range(3)]
    assert all(math.isfinite(h["loss/lipo_k"]) for h in hist)
    assert pol and all(pol[-2:])  # the policy's forwards (prompt + answers) in train mode
    assert all(torch.equal(ref0[n], p) for n, p in ref.named_parameters())  # the reference never moves


@pytest.mark.parametrize("bad, key", [
    ({"num_rankings": 1}, "num_rankings"), ({"num_rankings": 2.5}, "num_rankings"), ({"beta": 0}, "beta"),
    ({"beta": "x"}, "beta"), ({"source": "policy_samples"}, "source"), ({"perturb": "shuffle"}, "perturb"),
    ({"swaps": 0}, "swaps"), ({"numrankings": 4}, "did you mean 'num_rankings'"), ({"reduction": "sum"}, "reduction"),
])
def test_bad_params_fail_at_recipe_load(bad, key, tiny_model_dir, tiny_data, tmp_path, capsys):
    from test_bad_input_config import assert_clean_error, run_cli

    raw = _raw(tiny_model_dir, tiny_data, tmp_path / "out")
    raw["loss"][0]["params"] = bad
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    rc, out = run_cli(["train", str(recipe)], capsys)
    assert_clean_error(rc, out, "loss[0].params.", key.split()[0] if "mean" not in key else "num_rankings")
    assert key.lower() in out.lower()
    assert not (tmp_path / "out").exists()


def _cli_recipe(path, model_dir, data_dir) -> None:
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_dir / "train.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "loss": [{"name": "lm", "weight": 1.0},
                 {"name": "lipo_k", "weight": 1.0, "params": {"num_rankings": 3, "beta": 0.5, "perturb": "random"}}],
        "train": {"max_steps": 6, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 2,
                  "log_every": 1, "save_every": 2, "keep_last": 2},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": "unused",
    }))


def test_lrt_train_lipo_k_resumes_bitwise_after_sigkill(tiny_model_dir, tiny_data, tmp_path):
    from _scale_helpers import metrics, run, run_until_fault, safetensors_weights

    recipe = tmp_path / "r.yaml"
    _cli_recipe(recipe, tiny_model_dir, tiny_data)
    lrt = [sys.executable, "-m", "lrt.cli", "train", str(recipe)]
    ref, b = tmp_path / "uninterrupted", tmp_path / "killed"
    run(lrt + [f"output_dir={ref}"])
    log = run_until_fault(lrt + [f"output_dir={b}"], "pause:in_save:4")
    assert "LRT_FAULT: pause at in_save of step 4" in log
    assert (b / "checkpoints" / "latest").read_text() == "step-0000002"
    run(lrt + [f"output_dir={b}", "train.resume=auto"])
    keys = ("loss", "loss/lm", "loss/lipo_k", "lr", "grad_norm", "lists")
    recs, full = metrics(b), metrics(ref)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [[r[k] for k in keys] for r in recs] == [[r[k] for k in keys] for r in full]  # bitwise
    assert all(r["loss/lipo_k"] > 0 for r in full)
    wa = safetensors_weights(ref / "final/model.safetensors")
    wb = safetensors_weights(b / "final/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lrt_train_lipo_k_in_train_mode_with_and_without_checkpointing(monkeypatch, tiny_model_dir, tiny_data, tmp_path):
    """Through `lrt train`: every module training at every optimizer step, NEFTune noise in the
    policy's forwards and none in the reference's (frozen copy, or LoRA with adapters disabled and
    no adapter dropout), with the KV-cache path and under gradient checkpointing (no cache: K full
    rows per list)."""
    import test_train_mode as tm

    from lrt.cli import main as cli_main
    from lrt.objective.module import RerankModule

    loss = [{"name": "lipo_k", "weight": 1.0, "params": {"num_rankings": 3, "beta": 0.5}}]
    runs = {}
    for lora, gc in ((False, False), (False, True), (True, False)):
        name = f"k{int(lora)}{int(gc)}"
        extra = {"model__lora": tm.LORA} if lora else {}
        recipe = tm._recipe(tmp_path, tiny_model_dir, tiny_data, name, loss=loss, **extra)
        with tm.probed(monkeypatch) as probe, monkeypatch.context() as mp:
            real = RerankModule.reference_sequence_logprobs

            def ref_phase(self, *a, _real=real, _probe=probe, **kw):
                before, _probe.phase = _probe.phase, "ref"
                try:
                    return _real(self, *a, **kw)
                finally:
                    _probe.phase = before

            mp.setattr(RerankModule, "reference_sequence_logprobs", ref_phase)
            assert cli_main(["train", str(recipe), "eval.every=null", "eval.at_start=false", "eval.at_end=false",
                             "train.max_steps=2", f"model.gradient_checkpointing={str(gc).lower()}"]) == 0
        runs[lora, gc] = probe
        losses = [r["loss/lipo_k"] for r in tm._metrics(tmp_path / name) if "loss" in r]
        assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    for p in runs.values():
        assert len(p.step_modes) == 2 and all(on == total for on, total in p.step_modes), p.step_modes
        assert len(p.noise["train"]) == 2 * 2 * 2 and min(p.noise["train"]) > 0  # prompt + answers forwards, noised
        assert len(p.noise["ref"]) == 2 * 2 * 2 and max(p.noise["ref"]) == 0  # reference: eval mode, no noise
    assert runs[False, True].layer_bodies["train"] == 2 * runs[False, False].layer_bodies["train"]  # recomputed
    assert min(runs[True, False].dropout_zero_frac["train"]) > 0.3  # LoRA dropout on in the policy ...
    assert not runs[True, False].dropout_zero_frac["ref"]  # ... adapters (and their dropout) off in the reference


def test_lipo_k_step_has_no_full_logits():
    """A whole optimizer step with lm + lipo_k (K = 4, policy and frozen reference) allocates no
    vocabulary-sized tensor over more rows than the chunk, and none next to a sequence dim."""
    from lrt.bench.guard import TensorRecorder, vocab_violations
    from lrt.bench.train_step import PAD, lrt_step, synthetic_rows
    from lrt.config import LossTerm
    from lrt.data.collate import ListwiseCollator
    from lrt.testing.tiny import tiny_llama
    from lrt.objective.module import RerankModule
    from lrt.objective.objective import Objective

    V, H, B, T, CHUNK, KK = 1031, 48, 2, 200, 16, 4
    model = tiny_llama(V, hidden=H, layers=2, heads=4, seed=0)
    batch = ListwiseCollator(PAD)(synthetic_rows("first", T, B, V, n_ids=20, seed=1))
    objective = Objective([LossTerm(name="lm", weight=1.0, params={"chunk_size": CHUNK}),
                           LossTerm(name="lipo_k", weight=1.0, params={"num_rankings": KK})])
    module = RerankModule(model, objective)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    A = int(batch["lm_targets"].numel() // B)
    with TensorRecorder() as rec:
        loss = lrt_step(module, objective, opt, batch, max_grad_norm=1.0)
    assert math.isfinite(loss)
    seq = (T, B * T, A, A - 1, B * KK * A, B * KK * (A - 1), T + A - 1)  # any per-position layout
    bad = vocab_violations(rec.records, V, CHUNK, seq_dims=seq)
    assert not bad, "full-vocabulary tensors:\n" + "\n".join(f"{r.op} {r.shape}: {why}" for r, why in bad[:10])
    assert any(r.shape[-1:] == (V,) and r.shape[0] == CHUNK for r in rec.records)  # the chunked projection ran
