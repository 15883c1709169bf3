"""Length-grouped batching: less padding, and the StepSampler's guarantees intact (each list once
per epoch, a step's batch a function of the step number only, 1 process x 2A accumulation = 2
processes x A), in the sampler and through the Trainer that `lrt train` runs."""
from __future__ import annotations

import numpy as np
import pytest

from lrt.config import recipe_from_dict
from lrt.train.data import StepSampler
from lrt.train.loop import Trainer


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(800, 4000, size=n)


@pytest.mark.parametrize("per_device,accum,world", [(2, 2, 1), (4, 1, 2), (3, 2, 2)])
def test_grouped_sampler_keeps_epoch_coverage_and_world_invariance(per_device, accum, world):
    n, lens = 1000, _lengths(1000)
    s = StepSampler(n, per_device, accum, world, seed=7, lengths=lens, group=True, group_steps=8)
    spe = s.steps_per_epoch
    for epoch in (0, 1):
        seen = np.concatenate([s.step_indices(epoch * spe + i) for i in range(spe)])
        assert len(set(seen.tolist())) == len(seen) == spe * s.global_batch  # each list at most once per epoch
    # the same run on 1 process with world x accum accumulation steps: identical micro-batches
    one = StepSampler(n, per_device, accum * world, 1, seed=7, lengths=lens, group=True, group_steps=8)
    for step in (0, 5, spe - 1, spe + 3):
        multi = [s.micro_batches(step, r) for r in range(world)]
        flat = [multi[r][m] for m in range(accum) for r in range(world)]  # k = m * world + rank
        assert flat == one.micro_batches(step, 0)
    # resume: a fresh sampler gives step s from the step number alone
    fresh = StepSampler(n, per_device, accum, world, seed=7, lengths=lens, group=True, group_steps=8)
    assert fresh.step_indices(spe + 3) == s.step_indices(spe + 3)
    # micro-batches hold similar lengths: padding drops
    assert s.padding_fraction(grouped=True) < 0.5 * s.padding_fraction(grouped=False)
    assert s.grouped and not StepSampler(n, per_device, accum, world, seed=7, lengths=lens).grouped


def test_ungrouped_sampler_is_unchanged():
    """Grouping off (or batch 1) gives the historical order: old checkpoints resume onto the same data."""
    import torch

    s = StepSampler(100, 2, 2, 1, seed=3, lengths=_lengths(100), group=False)
    g = torch.Generator().manual_seed(3 * 1_000_003 + 0)
    assert s.step_indices(2) == torch.randperm(100, generator=g)[8:12].tolist()


def test_grouped_step_holds_the_same_lists_however_the_global_batch_is_split():
    """4 x 1, 2 x 2, 1 x 4 and 2 processes x 1 x 2: the same lists per step (so the exactly normalised
    loss is the same), each step's lists sorted longest first."""
    lens = _lengths(400, seed=1)
    splits = [(4, 1, 1), (2, 2, 1), (1, 4, 1), (1, 2, 2)]
    ss = [StepSampler(400, pd, a, w, seed=5, lengths=lens, group=True, group_steps=10) for pd, a, w in splits]
    for step in (0, 7, 99, 100, 150):
        ref = ss[0].step_indices(step)
        assert all(x.step_indices(step) == ref for x in ss[1:])
        assert list(lens[ref]) == sorted(lens[ref], reverse=True)


def test_trainer_groups_by_default_above_batch_1_and_reports_padding(tiny_model_dir, tmp_path):
    from lrt.data.schema import write_examples
    from lrt.testing.tiny import random_examples

    exs = random_examples(32, 5, seed=0)
    for i, e in enumerate(exs):  # lists of very different lengths
        e.candidates = e.candidates[: 2 + i % 4]
        e.ranking = [c.docid for c in e.candidates]
        e.relevance = None
    write_examples(exs, tmp_path / "train.jsonl")
    raw = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 512},
           "prompt": {"preset": "compact", "max_passage_tokens": 24},
           "train": {"max_steps": 2, "per_device_batch_size": 4, "grad_accum": 2, "save_final": False},
           "eval": {"at_start": False, "at_end": False}, "log": {"progress": False}, "output_dir": str(tmp_path / "run")}
    t = Trainer(recipe_from_dict(raw, []))
    assert t.sampler.grouped
    before, after = t.sampler.padding_fraction(grouped=False), t.sampler.padding_fraction(grouped=True)
    assert 0 <= after < before
    off = Trainer(recipe_from_dict(raw, ["data.group_by_length=false", f"output_dir={tmp_path / 'run2'}"]))
    assert not off.sampler.grouped

    def measured(tr: Trainer) -> float:  # padding of the batches the training step really gets, one epoch
        bs = [b for s in range(tr.sampler.steps_per_epoch) for b in tr.batches.step(s)]
        return 1 - sum(int(b["attention_mask"].sum()) for b in bs) / sum(b["attention_mask"].numel() for b in bs)

    assert measured(t) == pytest.approx(after) and measured(off) == pytest.approx(before)
    # the default follows the global batch, not the micro-batch: 1 x 2 groups like 4 x 2 (issue 28)
    one = Trainer(recipe_from_dict(raw, ["train.per_device_batch_size=1", f"output_dir={tmp_path / 'run3'}"]))
    assert one.sampler.grouped
    single = Trainer(recipe_from_dict(raw, ["train.per_device_batch_size=1", "train.grad_accum=1",
                                            f"output_dir={tmp_path / 'run4'}"]))
    assert not single.sampler.grouped  # one list per step: nothing to group
