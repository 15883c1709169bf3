"""lrt's training step never allocates full-vocabulary logits: proven op by op, not by RSS.

A `TorchDispatchMode` (lrt.bench.guard) records every tensor every aten op allocates during a
whole optimizer step of the real `RerankModule` (forward, autograd backward including the chunked
cross-entropy's custom backward, grad clipping, AdamW). No tensor may hold vocabulary-sized rows
for more positions than the LM-loss chunk, and none may pair the vocabulary dim with a sequence
dim. The positive control shows the same guard catches the naive `model(...).logits` path.
"""
from __future__ import annotations

import pytest
import torch

from lrt.bench.guard import TensorRecorder, max_vocab_rows, vocab_violations
from lrt.bench.train_step import PAD, loss_terms, lrt_step, naive_step, synthetic_rows
from lrt.data.collate import ListwiseCollator
from lrt.testing.tiny import tiny_llama
from lrt.objective.module import RerankModule
from lrt.objective.objective import Objective

V, H, B, T, CHUNK = 1031, 48, 2, 200, 16  # V prime and H, T, CHUNK distinct: no shape coincidences


def _setup(setting: str):
    n_ids = 20  # fullrank's 100 numeric ids need ~500 target tokens; 20 keep the test at T=200
    model = tiny_llama(V, hidden=H, layers=2, heads=4, seed=0)
    batch = ListwiseCollator(PAD)(synthetic_rows(setting, T, B, V, n_ids=n_ids, seed=1))
    objective = Objective(loss_terms(setting, CHUNK))
    return model, batch, objective


def _check(records, max_rows=CHUNK):
    return vocab_violations(records, V, max_rows, seq_dims=(T, B * T))


@pytest.mark.parametrize("setting", ["first", "fullrank"])
def test_lrt_training_step_has_no_full_logits(setting):
    model, batch, objective = _setup(setting)
    assert objective.needs_scores == (setting == "first")  # FIRST: lm + ranknet; fullrank: weighted lm only
    module = RerankModule(model, objective)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    before = model.get_output_embeddings().weight.detach().clone()
    with TensorRecorder() as rec:
        loss = lrt_step(module, objective, opt, batch, max_grad_norm=1.0)
    assert torch.isfinite(torch.tensor(loss))
    assert not torch.equal(before, model.get_output_embeddings().weight.detach())  # the optimizer step ran
    ops = {r.op for r in rec.records}
    assert any("backward" in o for o in ops) and any("_foreach" in o for o in ops)  # autograd + AdamW were seen
    bad = _check(rec.records)
    assert not bad, "full-vocabulary tensors:\n" + "\n".join(f"{r.op} {r.shape}: {why}" for r, why in bad[:10])
    # the LM head projection did run, in chunks of exactly CHUNK rows (M = B * target tokens > CHUNK)
    assert batch["lm_targets"].numel() > CHUNK
    assert max_vocab_rows(rec.records, V) == CHUNK


@pytest.mark.parametrize("setting", ["first", "fullrank"])
def test_guard_flags_the_naive_full_logits_step(setting):
    model, batch, objective = _setup(setting)
    with TensorRecorder() as rec:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (B, T, V)
    assert any(r.shape == (B, T, V) for r, _ in _check(rec.records))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with TensorRecorder() as rec:
        naive_step(model, objective, opt, batch, 1.0, ce="targets")
    assert max_vocab_rows(rec.records, V) >= B * T
    assert _check(rec.records)


def test_lrt_and_naive_steps_agree():
    """The two benchmarked steps optimise the same loss: same value, same (clipped) gradients.

    SGD with lr 1 makes the weight update equal the gradient (AdamW's first step is ~sign(g)).
    """
    for setting in ("first", "fullrank"):
        m1, batch, objective = _setup(setting)
        m2, _, _ = _setup(setting)
        o1 = torch.optim.SGD(m1.parameters(), lr=1.0)
        o2 = torch.optim.SGD(m2.parameters(), lr=1.0)
        l1 = lrt_step(RerankModule(m1, objective), objective, o1, batch, 1.0)
        l2 = naive_step(m2, objective, o2, batch, 1.0, ce="full")
        assert l1 == pytest.approx(l2, rel=1e-5)
        for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
            torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-6, msg=n)
