"""The training loop: one process, torchrun/DDP or DeepSpeed, from one recipe.

Own loop rather than a `transformers.Trainer` subclass (see README "Architecture"): the loss needs
hidden states instead of logits, its normalisation is computed over the whole optimizer step
before any backward (exact under accumulation and data parallelism), and checkpoints must be
atomic and resume bit-exactly (RNG of every rank, data position = step number).

Backends: 1 process; torchrun + DDP; DeepSpeed ZeRO-2/3 (optionally offloaded). DeepSpeed gets lrt's
own torch AdamW and LambdaLR, so every backend runs the same update and schedule; `engine.step()` is
called after every micro-batch and DeepSpeed steps the client scheduler at accumulation boundaries
only (asserted every step: the anchors' LR curve was wrong under DS). For ZeRO-3 the HfDeepSpeedConfig
exists before `from_pretrained`, so a 7B model loads partitioned (asserted too).
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lrt.config import Recipe, dump_recipe
from lrt.errors import LrtError
from lrt.modeling import load_model
from lrt.scoring import unwrap
from lrt.train import checkpoint as ckpt
from lrt.train.data import MicroBatchStream, StepSampler, TrainData, batch_to, length_grouping, prepare_data
from lrt.train.dist import DistEnv
from lrt.train.evaluation import Evaluator, headline_key
from lrt.train.metrics import MetricsLogger
from lrt.train.preemption import PreemptionGuard
from lrt.train.store import RunStore
from lrt.families import of_recipe
from lrt.objective.module import Zero3EvalView
from lrt.objective.objective import Objective
from lrt.train.zero import deepspeed_config, is_partitioned, offloads_optimizer, zero_stage

log = logging.getLogger("lrt")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(r: Recipe, total_steps: int):
    """Linear warmup, then cosine / linear decay to `min_lr_ratio`, or constant."""
    warm, floor, kind = r.train.warmup_steps, r.train.min_lr_ratio, r.train.schedule

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return floor + (1 - floor) * decay

    return f


def build_optimizer(r: Recipe, model: nn.Module, ds_cfg: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (no decay on norms/biases). Under ZeRO-Offload on GPU,
    DeepSpeedCPUAdam (same update, run on the CPU copy); on CPU, torch AdamW everywhere."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": r.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]  # ZeRO drops empty groups (LoRA has no 1-D params): keep LambdaLR aligned
    kw = dict(lr=r.train.lr, betas=r.train.betas, eps=r.train.eps)
    if ds_cfg is not None and offloads_optimizer(ds_cfg) and torch.cuda.is_available():
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kw)
    if r.train.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    # fused AdamW: one kernel over all tensors, ~4x faster steps on CPU and no [V, H] temporaries
    # (measured by lrt bench train-step); DeepSpeed wraps the optimizer itself, so keep it plain there
    fused = ds_cfg is None and all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, fused=fused or None, **kw)


def setup_backend(r: Recipe, module: nn.Module, ds_cfg: dict[str, Any] | None, env: DistEnv, total_steps: int
                  ) -> tuple[Any, Any, Any, Any]:
    """(optimizer, scheduler, DeepSpeed engine or None, DDP wrapper or None): lrt's AdamW and LambdaLR on
    every backend (DeepSpeed gets them as client optimizer and scheduler)."""
    optimizer = build_optimizer(r, module, ds_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(r, total_steps))
    engine = ddp = None
    if ds_cfg is not None:
        import deepspeed

        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg,
        )
    elif env.world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            module, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    return optimizer, scheduler, engine, ddp


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    final_dir: Path | None = None


def prepare_family_data(r: Recipe, env: Any, objective: Any, family: Any) -> TrainData:
    """The training data of `family`: pair groups encoded in memory, or listwise rows from the cache."""
    if family.pairs:
        from lrt.train.pointwise import prepare_pointwise_data

        return prepare_pointwise_data(r, env, objective)
    return prepare_data(r, env, objective)


class Trainer:
    """Trains one recipe: data, model, backend, the optimizer step and the loop. Its parts are their own
    modules: the checkpoint store (`store`), preemption (`preemption`), in-training evaluation
    (`evaluator`) and the console (lrt.train.console). `fit` returns the run; exporting RUN/final and
    writing plots is the workflow's (lrt.workflows.run), which `on_eval` lets refresh plots after each
    evaluation."""

    def __init__(self, recipe: Recipe, on_eval: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_eval = on_eval  # called on rank 0 after every evaluation (the workflow's plot refresh)
        try:
            self._init(recipe)
        except BaseException:
            self.release()  # the output_dir lock of a run that failed to start (in-process callers go on)
            raise

    def _init(self, recipe: Recipe) -> None:
        self.r = recipe
        self.out = Path(recipe.output_dir)
        self.ds_cfg = deepspeed_config(recipe) if recipe.train.deepspeed else None
        self.env = DistEnv.setup(use_deepspeed=self.ds_cfg is not None)
        self.store = RunStore(self)
        self.preemption = PreemptionGuard(self)
        self.store.check_run_dir()  # fail fast, before loading data and model
        seed_everything(recipe.train.seed)
        self.objective = Objective.from_recipe(recipe)
        self.family = of_recipe(recipe)  # how rows become inputs, the module, the eval ranker (lrt.families)
        # listwise rows are read lazily from the tokenised cache (built by rank 0 while the others wait)
        self.data = prepare_family_data(recipe, self.env, self.objective, self.family)
        self.template = self.data.template
        self.train_examples, self.eval_examples = self.data.train_examples, self.data.eval_examples
        self.tok, self.id_ids = self.data.tok, self.data.id_ids
        if self.env.is_main:
            self.store.data_fingerprint()  # of the file this run reads now, not of whatever is there at the first save
        self.evaluator = Evaluator(self)  # reads eval.qrels now: a file that judges no eval query fails before step 1
        rows = self.data.rows
        assert rows is not None
        self.rows = rows
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.collate = self.family.collator(recipe, pad)
        self.sampler = StepSampler(len(rows), recipe.train.per_device_batch_size, recipe.train.grad_accum,
                                   self.env.world, recipe.train.seed, lengths=self.data.lengths,
                                   group=length_grouping(recipe, self.env.world))
        self.batches = MicroBatchStream(rows, self.sampler, self.collate, self.env.rank, 0, recipe.data.num_workers,
                                        pin_memory=self.env.device.type == "cuda")
        spe = self.sampler.steps_per_epoch
        if spe == 0:
            raise LrtError(
                f"{len(rows)} training lists are fewer than one global batch ({self.sampler.global_batch}): "
                "lower train.per_device_batch_size / train.grad_accum or add data"
            )
        self.total_steps = recipe.train.max_steps or max(1, math.ceil(recipe.train.epochs * spe))
        self.batches.total = self.total_steps
        self.zero3 = zero_stage(self.ds_cfg) == 3
        self._ds_keepalive = None
        if self.zero3:
            from transformers.integrations import HfDeepSpeedConfig

            # Must exist (and stay referenced: transformers keeps a weakref) BEFORE from_pretrained,
            # so a 7B model loads straight into zero.Init partitions instead of whole on every rank.
            self._ds_keepalive = HfDeepSpeedConfig(self.ds_cfg)
        model = load_model(recipe, self.tok)
        self.loaded_partitioned = is_partitioned(model)
        if self.zero3 and not self.loaded_partitioned:
            raise LrtError("ZeRO-3: the model did not load partitioned (HfDeepSpeedConfig was not active)")
        self.is_lora = recipe.model.lora is not None
        self.module = self.family.training_module(model, self.objective, recipe, self.tok, self.template)
        self.ckpt_root = self.out / "checkpoints"
        self._setup_backend()
        self.set_train_mode()  # from_pretrained returns an eval-mode model
        self.metrics = MetricsLogger(self.out, recipe, enabled=self.env.is_main)
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.store.resume()

    # ---- set-up -----------------------------------------------------------------------------
    def _setup_backend(self) -> None:
        if self.ds_cfg is None and self.r.model.quantization is None:  # k-bit weights were placed by device_map
            self.module.to(self.env.device)
        self.optimizer, self.scheduler, self.engine, self.ddp = setup_backend(
            self.r, self.module, self.ds_cfg, self.env, self.total_steps)

    @property
    def hf_model(self) -> nn.Module:
        return self.module.model

    def autocast(self):
        if self.r.train.precision == "bf16" and self.ds_cfg is None:
            return torch.autocast(device_type=self.env.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ---- one optimizer step ---------------------------------------------------------------
    def set_train_mode(self) -> None:
        """Training mode on every module the step runs: NEFTune noise, LoRA/model dropout and
        gradient checkpointing all key on `module.training` (transformers checkpoints a layer only
        when it is training). Evaluation switches to eval mode and back; the frozen LiPO reference is
        not a submodule and stays in eval mode."""
        runner = self.engine if self.engine is not None else (self.ddp if self.ddp is not None else self.module)
        runner.train()

    def train_step(self) -> dict[str, Any]:
        self.set_train_mode()  # every step, whatever ran before it (evaluation, a user callback)
        lr = self.optimizer.param_groups[0]["lr"]  # the LR this step's update uses
        sched_before = self.scheduler.last_epoch
        micro = self.batches.step(self.step)  # collated inline, or ahead of time by data.num_workers processes
        per_micro = [self.objective.denominators(b) for b in micro]
        keys = list(per_micro[0])
        local = [sum(d[k] for d in per_micro) for k in keys]
        dens = dict(zip(keys, self.env.all_reduce_sum(local)))
        scale = float(self.env.world)  # DDP / DeepSpeed average gradients over ranks; we want the global sum
        sums = {k: 0.0 for k in keys}
        for m, batch in enumerate(micro):
            batch = batch_to(batch, self.env.device)
            last = m == len(micro) - 1
            if self.engine is not None:
                with self.autocast():
                    loss, nums = self.engine(batch, dens, scale)
                self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already the global mean
                self.engine.step()  # a no-op except at the accumulation boundary
            else:
                runner = self.ddp or self.module
                sync = nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
                with sync:
                    with self.autocast():
                        loss, nums = runner(batch, dens, scale)
                    loss.backward()
            for k in keys:
                sums[k] += float(nums[k])
        grad_norm = None
        if self.engine is None:
            if self.r.train.max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.r.train.max_grad_norm))
            if self._update_is_finite(grad_norm):  # a NaN/Inf update is never applied (train.on_nonfinite)
                self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            gn = self.engine.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else None
        if self.scheduler.last_epoch != sched_before + 1:
            # DeepSpeed steps the client scheduler itself, at accumulation boundaries only; a
            # schedule stepped per micro-batch (or never) would silently bend the LR curve.
            raise RuntimeError(f"LR scheduler advanced {self.scheduler.last_epoch - sched_before} times in one optimizer step")
        glob = self.env.all_reduce_sum([sums[k] for k in keys])
        terms = {k: glob[i] / max(dens[k], 1e-12) for i, k in enumerate(keys)}
        total = sum(t.weight * terms["lm" if t.kind == "lm" else t.name] for t in self.objective.terms)
        self.step += 1
        n_lists = self.env.all_reduce_sum([float(sum(b["ranks"].shape[0] for b in micro))])[0]
        rec = {"step": self.step, "loss": total, **{f"loss/{k}": v for k, v in terms.items()}, "lr": lr,
               "lists": int(n_lists)}
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        return rec

    def _backend_name(self) -> str:
        return "deepspeed" if self.engine is not None else ("ddp" if self.ddp is not None else "single")

    # ---- evaluation, checkpoints: their own modules ----------------------------------------
    def evaluate(self) -> dict[str, Any] | None:
        """Rerank the eval lists with the live model (lrt.train.evaluation)."""
        ckpt.fault("in_eval", self.step)  # test hook: a signal during an evaluation (step 0: at_start, last: at_end)
        model = unwrap(self.hf_model)
        return self.evaluator.evaluate(Zero3EvalView(model) if self.zero3 else model)

    @property
    def last_rankings(self) -> dict[str, list[str]] | None:
        return self.evaluator.last_rankings

    @property
    def first_rankings(self) -> dict[str, list[str]] | None:
        return self.evaluator.first_rankings  # the run's first evaluation (step 0: the model before training)

    def save_checkpoint(self) -> Path:
        """Every rank calls this (lrt.train.store): atomic, resumable, exportable."""
        return self.store.save()

    def _run_eval(self) -> None:
        res = self.evaluate()
        if res is None:
            return
        self.eval_history.append(res)
        self.metrics.log(res)
        key = headline_key(res)  # trec_eval nDCG@10 with full qrels, else the candidates'/teacher's
        if self.r.eval.select_best and (self.best is None or res[key] > self.best.get(key, -math.inf)):
            self.best = dict(res)
            if self.r.train.save_every:
                self.best["checkpoint"] = ckpt.step_dir(self.ckpt_root, self.step).name
                if self.store.saved_step != self.step:
                    self.save_checkpoint()
        if self.env.is_main:
            from lrt.train.console import report_eval

            report_eval(res, self.eval_history)
            if self.on_eval is not None:
                self.on_eval(res)

    # ---- main loop -------------------------------------------------------------------------
    def fit(self, after: Callable[[TrainResult], None] | None = None) -> TrainResult:
        """Train to the last step (evaluating and checkpointing as the recipe says) and return the run.
        `after(result)` runs once training is done, still under the preemption guard: the workflow's
        final export is a phase a signal lets finish (lrt.workflows.run)."""
        r = self.r
        if self.env.is_main:
            from lrt.train.console import print_summary

            self.out.mkdir(parents=True, exist_ok=True)
            dump_recipe(r, self.out / "recipe.resolved.yaml")
            print_summary(self)
        history: list[dict[str, Any]] = []
        bar = self.metrics.progress(self.total_steps, initial=self.step)
        # SIGTERM/SIGUSR1 only set a flag from here until the run is finished: each phase (a step, an
        # evaluation, the end-of-run evaluation, the workflow's final/ export) finishes, then the run
        # checkpoints and exits 75 (or, when the signal came during the final export, completes and exits 0)
        self.preemption.install()
        if self.step == 0 and r.eval.at_start and (r.eval.every or r.eval.at_end):
            self._run_eval()
            bar.restart_clock()  # rate and ETA of training steps, not of the initial evaluation
            self.preemption.stop_if_requested(checkpoint=False)  # nothing trained yet: the resumed run starts over
        t0 = time.perf_counter()
        while self.step < self.total_steps:
            rec = self.train_step()
            rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
            history.append(rec)
            self._check_finite(rec)  # train.on_nonfinite: stop before anything is saved, or go on (skipped)
            self.metrics.add_step(rec)
            if self.step % r.train.log_every == 0 or self.step == self.total_steps:
                mean = self.metrics.flush_steps()  # the mean over the interval, not one sampled step
                if mean is not None:
                    bar.set_postfix(loss=f"{mean.get('loss', math.nan):.4f}", lr=f"{rec['lr']:.2e}")
            ckpt.fault("after_step", self.step)
            bar.update(1)
            if r.eval.every and self.step % r.eval.every == 0 and self.step != self.total_steps:
                self._run_eval()
            if r.train.save_every and self.step % r.train.save_every == 0 and self.store.saved_step != self.step:
                self.save_checkpoint()
            self.preemption.stop_if_requested()  # every rank stops after the same step
        bar.close()
        self.batches.close()  # no DataLoader worker outlives the loop
        if (r.train.save_every or self.is_lora) and self.store.saved_step != self.step:
            self.save_checkpoint()  # the final state, resumable and exportable (`lrt export RUN_DIR`)
        self.preemption.stop_if_requested()
        if r.eval.at_end and not self._end_eval_done():
            self._run_eval()
            self.preemption.stop_if_requested()  # the checkpoint holds this evaluation: the resumed run skips it
        res = TrainResult(self.out, self.step, history, self.eval_history)
        if after is not None:
            after(res)
        self._finish()
        return res

    def _finish(self) -> None:
        """The run is complete: metrics closed, a signal that came while finishing reported, handlers restored."""
        self.metrics.close()
        sig = self.preemption.late_signal()
        if sig and self.env.is_main:
            log.warning("%s arrived while the run was finishing: the run is complete (final/ written), "
                        "nothing to resume", sig)
        self.preemption.restore()

    def _update_is_finite(self, grad_norm: float | None) -> bool:
        """False when this step's gradients hold NaN/Inf (then the optimizer step is skipped)."""
        if grad_norm is not None:
            return math.isfinite(grad_norm)
        return all(bool(torch.isfinite(p.grad).all()) for p in self.module.parameters() if p.grad is not None)

    def _check_finite(self, rec: dict[str, Any]) -> None:
        bad = {k: v for k, v in rec.items() if (k in ("loss", "grad_norm") or k.startswith("loss/"))
               and isinstance(v, float) and not math.isfinite(v)}
        if not bad:
            return
        what = ", ".join(f"{k}={v}" for k, v in bad.items())
        if self.r.train.on_nonfinite == "skip":
            if self.env.is_main:
                log.warning("step %d: non-finite %s: update skipped (train.on_nonfinite=skip)", self.step, what)
            return
        self.metrics.flush_steps()  # the steps before it, then the diverged step itself (NaN -> null)
        self.metrics.log(rec)
        self.preemption.restore()
        prev = ckpt.complete_checkpoints(self.ckpt_root)
        raise LrtError(
            f"step {self.step}: non-finite {what}; training stopped (train.on_nonfinite=stop) and this state is not "
            "saved; " + (f"the last good checkpoint is {prev[-1]}. " if prev else "no checkpoint was written. ")
            + "Lower train.lr or the loss weights, check the data and the model, then "
            + ("resume with train.resume=auto" if prev else "run again")
            + " (or set train.on_nonfinite=skip to skip such updates)"
        )

    def _end_eval_done(self) -> bool:
        """A resumed run whose checkpoint was written after its end-of-run evaluation (preempted
        right after it) does not evaluate that step again."""
        return bool(self.eval_history) and self.eval_history[-1].get("step") == self.step and self.store.resumed_at_end

    def release(self) -> None:
        """The signal handlers and the output_dir lock (also freed by the kernel when the process exits)."""
        if getattr(self, "preemption", None) is not None:
            self.preemption.restore()
        if getattr(self, "store", None) is not None:
            self.store.release()
