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
from typing import Any

import numpy as np
import torch
from torch import nn

from lrt.config import Recipe, dump_recipe
from lrt.data.collate import ListwiseCollator
from lrt.data.schema import ListwiseExample
from lrt.errors import LrtError
from lrt.export import save_adapter
from lrt.modeling import load_model
from lrt.scoring import unwrap
from lrt.train import checkpoint as ckpt
from lrt.train.data import (MicroBatchStream, StepSampler, batch_to, length_grouping, max_identifiers,
                            prepare_data)
from lrt.train.dist import DistEnv
from lrt.train.metrics import MetricsLogger
from lrt.train.module import RerankModule, Zero3EvalView
from lrt.train.objective import Objective
from lrt.train.zero import deepspeed_config, gather_on_rank0, is_partitioned, offloads_optimizer, zero_stage

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


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    final_dir: Path | None = None


class Trainer:
    def __init__(self, recipe: Recipe) -> None:
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
        self._check_run_dir()  # fail fast, before loading data and model
        seed_everything(recipe.train.seed)
        self.objective = Objective.from_recipe(recipe)
        # training rows are read lazily from the tokenised cache (built by rank 0 while the others wait)
        if recipe.pointwise:  # one sequence per candidate (lrt.train.pointwise)
            from lrt.train.pointwise import prepare_pointwise_data

            self.data = prepare_pointwise_data(recipe, self.env, self.objective)
        else:
            self.data = prepare_data(recipe, self.env, self.objective)
        self.template = self.data.template
        self.train_examples, self.eval_examples = self.data.train_examples, self.data.eval_examples
        self.tok, self.id_ids = self.data.tok, self.data.id_ids
        if self.env.is_main:
            self._data_fingerprint()  # of the file this run reads now, not of whatever is there at the first save
        self._judged: tuple[dict[str, dict[str, float]], str] | None = None
        if recipe.eval.qrels and self.eval_examples:  # a qrels file that judges no eval query: before step 1
            self._judged = eval_judgements(self.eval_examples, recipe.eval.qrels)
        rows = self.data.rows
        assert rows is not None
        self.rows = rows
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.collate = ListwiseCollator(pad, recipe.data.padding_side)
        if recipe.pointwise:
            from lrt.data.pointwise import PointwiseCollator

            self.collate = PointwiseCollator(pad, recipe.data.padding_side, recipe.scoring.negatives, recipe.train.seed)
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
        self.module = RerankModule(model, self.objective)
        if recipe.pointwise:
            from lrt.data.pointwise import yes_no_ids
            from lrt.train.pointwise import PointwiseModule

            self.module = PointwiseModule(model, self.objective, *yes_no_ids(self.tok, self.template),
                                          recipe.scoring.pair_batch)
        self.ckpt_root = self.out / "checkpoints"
        self._setup_backend()
        self.set_train_mode()  # from_pretrained returns an eval-mode model
        self.metrics = MetricsLogger(self.out, recipe, enabled=self.env.is_main)
        self.step = 0
        self._saved_step = -1
        self._resumed_at_end = False
        self._preempt: ckpt.Preemption | None = None
        self.best: dict[str, Any] | None = None
        self.eval_history: list[dict[str, Any]] = []
        self._maybe_resume()

    # ---- set-up -----------------------------------------------------------------------------
    def _max_candidates(self) -> int:
        """Identifiers needed: the longest list after the data.window cut (train, eval window)."""
        return max_identifiers(self.r, self.train_examples, self.eval_examples)

    def _setup_backend(self) -> None:
        r = self.r
        if self.ds_cfg is None and r.model.quantization is None:  # k-bit weights were placed by device_map
            self.module.to(self.env.device)
        self.optimizer = build_optimizer(r, self.module, self.ds_cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(r, self.total_steps))
        self.engine = None
        self.ddp = None
        if self.ds_cfg is not None:
            import deepspeed

            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=self.module, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=self.ds_cfg,
            )
        elif self.env.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None
            )

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

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any] | None:
        if not self.eval_examples or (self.id_ids is None and not self.r.pointwise):
            return None
        ckpt.fault("in_eval", self.step)  # test hook: a signal during an evaluation (step 0: at_start, last: at_end)
        from lrt.ranking import ListwiseRanker, PairRanker

        r = self.r
        w = r.eval.window or r.data.window or max(len(e.candidates) for e in self.eval_examples)
        stride = r.eval.stride or max(1, w // 2)
        model = unwrap(self.hf_model)
        if self.zero3:
            model = Zero3EvalView(model)
        if r.pointwise:  # one sequence per (query, candidate), eval.batch_size pairs per forward
            rr = PairRanker(model, self.tok, self.template, max_length=r.data.max_length,  # type: ignore[assignment]
                                   batch_size=r.eval.batch_size, padding_side=r.data.padding_side)
        else:
            rr = ListwiseRanker(model, self.tok, self.template, window=w, stride=stride, max_length=r.data.max_length,
                          batch_size=r.eval.batch_size, padding_side=r.data.padding_side)
        rr.progress_desc = "eval"  # the reranking progress bar's label
        # Every rank takes a slice of the queries and the results are gathered. Under ZeRO-3 each
        # forward is collective (parameters are all-gathered), so ranks must run identical forward
        # sequences: there, every rank reranks every query.
        mine = self.eval_examples if self.zero3 else self.eval_examples[self.env.rank::self.env.world]
        with self.autocast():
            ranked = rr.rerank_many([(e.qid, e.query, e.candidates) for e in mine])
        allr: dict[str, list[str]] = {}
        for part in self.env.gather_objects({q: [d for d, _ in v] for q, v in ranked.items()}):
            allr.update(part)  # type: ignore[arg-type]
        if self._judged is None:  # read once (eval.qrels may be a large file)
            self._judged = eval_judgements(self.eval_examples, r.eval.qrels)
        qrels, kind = self._judged
        initial = {e.qid: [c.docid for c in e.candidates] for e in self.eval_examples}
        key, init_key = metric_keys(kind)
        res = {"step": self.step, key: eval_ndcg(allr, qrels, kind), init_key: eval_ndcg(initial, qrels, kind),
               "eval/queries": sum(q in qrels for q in allr)}
        self.last_rankings = allr
        if getattr(self, "first_rankings", None) is None:
            self.first_rankings = allr  # the run's first evaluation (step 0: the model before training)
        return res

    # ---- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every rank calls this. Files go to a tmp dir; rank 0 adds the state and the manifest,
        renames it and moves `latest` last. A failed write (disk full) is one clear error; the
        previous checkpoint is untouched."""
        root = self.ckpt_root
        tmp = ckpt.tmp_dir(root, self.step)
        err: tuple[int | None, str] | None = None
        if self.env.is_main:
            try:
                root.mkdir(parents=True, exist_ok=True)
                if tmp.exists():
                    import shutil

                    shutil.rmtree(tmp)
                tmp.mkdir(parents=True)
            except OSError as e:
                err = (e.errno, str(e))
        self._check_save(err, tmp)
        try:
            torch.save(ckpt.rng_state(), tmp / f"rng-rank{self.env.rank}.pt")
            if self.engine is not None:
                # fp32 master weights, optimizer partitions and the client LR scheduler; LoRA runs skip
                # the frozen base (a 7B base per checkpoint would be 14 GB of nothing new)
                self.engine.save_checkpoint(str(tmp), tag="ds", save_latest=False, exclude_frozen_parameters=self.is_lora)
            elif self.env.is_main:
                from safetensors.torch import save_file

                save_file(ckpt.trainable_state(self.module.model), str(tmp / "trainable.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.is_lora:
                state = gather_on_rank0(self.hf_model, self.env.is_main)  # collective under ZeRO-3
                if self.env.is_main:
                    save_adapter(self.hf_model, state, tmp / "adapter")
        except Exception as e:  # noqa: BLE001 - torch.save says RuntimeError, safetensors SafetensorError
            err = ckpt.write_error(e, tmp)
        self._check_save(err, tmp)  # also the barrier: every rank's files are written
        path = ckpt.step_dir(root, self.step)
        if self.env.is_main:
            try:
                dump_recipe(self.r, tmp / "recipe.yaml")
                state = {"step": self.step, "world_size": self.env.world, "total_steps": self.total_steps,
                         "best": self.best, "eval_history": self.eval_history, "backend": self._backend_name(),
                         "zero_stage": zero_stage(self.ds_cfg), "lora": self.is_lora,
                         "loaded_partitioned": self.loaded_partitioned, "data_train": self._data_fingerprint(),
                         "group_by_length": self.sampler.group}
                protect = (self.best["checkpoint"],) if self.best and self.best.get("checkpoint") else ()
                path = ckpt.finalize(root, self.step, state, self.r.train.keep_last, protect)
            except OSError as e:
                err = (e.errno, str(e))
        self._check_save(err, tmp)
        self._saved_step = self.step
        return path

    def _check_save(self, err: tuple[int | None, str] | None, tmp: Path) -> None:
        """Collective: if any rank failed to write, every rank raises one clear error (no traceback)."""
        errors = [e for e in self.env.gather_objects(err) if e]
        if not errors:
            return
        if self.env.is_main:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # free the space the partial save took
        import errno as _errno

        code, msg = errors[0]  # type: ignore[misc]
        prev = ckpt.complete_checkpoints(self.ckpt_root)
        what = "the disk is full" if code == _errno.ENOSPC else "a write failed"
        raise ckpt.CheckpointError(
            f"saving the checkpoint of step {self.step} failed: {what} ({msg}). "
            + (f"The previous checkpoint {prev[-1]} is intact: free space (or lower train.keep_last) and "
               "resume with train.resume=auto" if prev else "No earlier checkpoint exists: free space and rerun")
        )

    def _backend_name(self) -> str:
        return "deepspeed" if self.engine is not None else ("ddp" if self.ddp is not None else "single")

    def _check_run_dir(self) -> None:
        """Before any work: a fresh run refuses an output_dir holding an earlier run (whose
        checkpoints it would mix with its own, and which `resume=auto` would later continue)."""
        t = self.r.train
        used = ckpt.previous_run(self.out)
        if self.env.is_main:  # held until the process exits (or `train` returns): one run per output_dir
            self._lock = ckpt.run_lock(self.out).acquire()
        if t.resume == "none" and used and not t.overwrite_output_dir:
            raise LrtError(
                f"output_dir {self.out} already holds a run ({', '.join(used)}): continue it with train.resume=auto, "
                "replace it with train.overwrite_output_dir=true, or choose another output_dir"
            )
        if t.resume != "none":  # fail fast on an incompatible recipe (checked again once verified)
            cands = ckpt.resume_candidates(self.out / "checkpoints", t.resume)
            if cands:
                try:
                    self._check_recipe(cands[0])
                except ckpt.CheckpointError:
                    pass  # a corrupt newest checkpoint: verified, reported and skipped at load
        if t.on_nonfinite == "skip" and self.ds_cfg is not None:
            raise LrtError("train.on_nonfinite=skip is not supported with train.deepspeed (DeepSpeed applies the "
                           "update inside engine.step()): use train.on_nonfinite=stop")

    def _maybe_resume(self) -> None:
        t = self.r.train
        if self.env.is_main:
            used = ckpt.previous_run(self.out)
            if t.resume == "none" and used:  # allowed by train.overwrite_output_dir (see _check_run_dir)
                log.warning("train.overwrite_output_dir: removing the earlier run's %s from %s", ", ".join(used), self.out)
                ckpt.clear_previous_run(self.out)
            if t.resume != "none":
                ckpt.remove_stale_tmp(self.ckpt_root)
            (self.out / ckpt.PREEMPTED).unlink(missing_ok=True)
        self.env.barrier()
        candidates = ckpt.resume_candidates(self.ckpt_root, t.resume)
        problems: list[str] = []
        path = None
        for cand in candidates:
            why = self.env.broadcast_object(self._verify_checkpoint(cand) if self.env.is_main else None)
            if why is None:
                why = self._load_checkpoint(cand)
            if why is None:
                path = cand
                break
            problems.append(f"{cand}: {why}")
            if self.env.is_main:
                log.warning("checkpoint %s is unusable: %s; trying the one before it", cand, why)
        if candidates and path is None:
            raise ckpt.CheckpointError(
                f"no usable checkpoint to resume from ({len(candidates)} tried): " + " | ".join(problems)
                + ". Remove the broken ones, or start over with train.resume=none train.overwrite_output_dir=true"
            )
        if path is not None and problems and self.env.is_main:
            log.warning("resuming from %s, an older checkpoint (newer ones are unusable, see above)", path)
        if self.env.is_main and t.resume != "none":
            # no checkpoint (e.g. preempted during eval.at_start): everything is run again, step 0 included
            dropped = ckpt.truncate_metrics(self.out / "metrics.jsonl", self.step if path is not None else -1)
            if dropped:
                log.info("metrics.jsonl: dropped %d records after step %d (they are trained again)", dropped, self.step)
        if path is not None and self.env.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def _verify_checkpoint(self, path: Path) -> str | None:
        """Rank 0: the manifest, then the recipe (an incompatible recipe is an error, not a fallback)."""
        why = ckpt.verify(path)
        if why is None and (path / "ds").is_dir():
            try:
                ckpt.vet_pickles(path / "ds")
            except ckpt.CheckpointError as e:
                why = str(e)
        if why is not None:
            return why
        self._check_recipe(path)
        return None

    def _check_recipe(self, path: Path) -> None:
        import yaml

        self._check_data(path)
        from lrt.config import Recipe

        try:
            saved = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            log.warning("%s: cannot read recipe.yaml (%s): the recipe is not compared", path, e)
            return
        try:  # fill defaults the way this lrt version does, so new keys are not reported as changes
            saved = Recipe.model_validate(saved).model_dump(mode="json")
        except Exception:  # noqa: BLE001 - an older schema: compare the raw file
            pass
        state = ckpt.read_state(path)
        world = (int(state.get("world_size") or 1), self.env.world)
        changes = ckpt.recipe_changes(saved, self.r.model_dump(mode="json"), world)
        grouped = state.get("group_by_length")
        if grouped is None and isinstance(saved, dict):  # a checkpoint of an older lrt: its default (micro-batch > 1)
            g = (saved.get("data") or {}).get("group_by_length")
            grouped = g if g is not None else (saved.get("train") or {}).get("per_device_batch_size", 1) > 1
        if grouped is not None and bool(grouped) != length_grouping(self.r, self.env.world) and not any(
                c.startswith("data.group_by_length") for c in changes):
            changes.append(f"length grouping (data.group_by_length, default on when the global batch > 1): "
                           f"{bool(grouped)} -> {length_grouping(self.r, self.env.world)}; set "
                           f"data.group_by_length={str(bool(grouped)).lower()} to continue as it trained")
        if changes:
            raise LrtError(
                f"train.resume: {path} was trained with a different recipe; resuming would silently continue it "
                f"under new settings. Changed: {'; '.join(changes)}. Revert them, or start a new run in another "
                "output_dir (or train.resume=none train.overwrite_output_dir=true). Only max_steps/epochs, "
                "save/log/eval/log settings and output_dir may change on resume"
            )

    def _data_fingerprint(self) -> str | None:
        """The contents of data.train (a local file or directory; None for a `datasets` source), stored
        in every checkpoint so `train.resume` notices a training file changed under it."""
        if getattr(self, "_data_fp", "unset") == "unset":
            from lrt.config import resolve_path
            from lrt.data.cache import source_fingerprint

            src = resolve_path(self.r.data.train)
            self._data_fp = source_fingerprint(src, self.r.data.split) if Path(src).exists() else None
        return self._data_fp

    def _check_data(self, path: Path) -> None:
        """A resumed run continues the data order of the checkpoint (step number = data position):
        on a changed training file it would silently train on other lists than it says."""
        saved = ckpt.read_state(path).get("data_train")
        if not saved or self.r.train.allow_data_change:
            return
        now = self._data_fingerprint()
        if now is not None and now != saved:
            raise LrtError(
                f"train.resume: data.train {self.r.data.train} changed since {path} was written (its contents "
                "differ from the file that run trained on), so the resumed steps would not be the lists the "
                "checkpoint's data position refers to. Restore the original file, start a new run in another "
                "output_dir, or set train.allow_data_change=true to resume on the new file anyway"
            )

    def _load_checkpoint(self, path: Path) -> str | None:
        """Every rank: load `path`; None on success, else what went wrong (the same on every rank)."""
        why: str | None = None
        try:
            self._load_checkpoint_files(path)
        except LrtError as e:
            if not isinstance(e, ckpt.CheckpointError):
                raise
            why = str(e)
        except Exception as e:  # noqa: BLE001 - a corrupt file fails in many ways; report, then fall back
            why = ckpt._first_line(e)
        whys = [w for w in self.env.gather_objects(why) if w]
        return str(whys[0]) if whys else None

    def _load_checkpoint_files(self, path: Path) -> None:
        state = ckpt.read_state(path)
        saved_world = state.get("world_size")
        if (state.get("backend") == "deepspeed") != (self.engine is not None):
            raise LrtError(
                f"{path} was written by the {state.get('backend')} backend but this run uses {self._backend_name()}: "
                "resume with the same train.deepspeed setting (or export it with `lrt export` and start a new run)"
            )
        if self.engine is not None:
            src = path
            if saved_world != self.env.world:
                # ZeRO partitions are per rank: DeepSpeed's universal checkpoint re-partitions them
                if self.env.is_main:
                    log.warning("%s was written by %s processes, this run has %s: loading it through a DeepSpeed "
                                "universal checkpoint", path, saved_world, self.env.world)
                    src = ckpt.universal_checkpoint(path)
                    ckpt.vet_pickles(src / "ds")  # it may be a leftover of an earlier resume: vet it too
                src = Path(str(self.env.broadcast_object(str(src))))
                self.engine._config.load_universal_checkpoint = True  # read by engine.load_checkpoint
            try:
                load_path, _ = self.engine.load_checkpoint(str(src), tag="ds", load_module_strict=not self.is_lora)
            finally:
                self.engine._config.load_universal_checkpoint = False  # later saves stay ordinary ZeRO checkpoints
            if load_path is None:
                raise ckpt.CheckpointError("DeepSpeed could not load the checkpoint (tag 'ds')")
            bad = ckpt.nonfinite((n, getattr(p, "ds_tensor", p)) for n, p in self.module.named_parameters()
                                 if p.requires_grad)
            if bad:
                raise ckpt.CheckpointError(f"the loaded weights hold NaN/Inf values in {bad[:3]}")
        else:
            if saved_world != self.env.world:
                log.warning("resuming a %s-process checkpoint on %s processes (same global batch, checked above)",
                            saved_world, self.env.world)
            from safetensors.torch import load_file

            ckpt.load_trainable_state(self.module.model, load_file(str(path / "trainable.safetensors")))
            opt = ckpt.safe_load(path / "optimizer.pt")
            bad = ckpt.nonfinite(opt.get("state", {}).items()) if isinstance(opt, dict) else []
            if bad:
                raise ckpt.CheckpointError(f"optimizer.pt holds NaN/Inf values in {bad[:3]}")
            self.optimizer.load_state_dict(opt)
            self.scheduler.load_state_dict(ckpt.safe_load(path / "scheduler.pt"))
        # the LR of the next step from the schedule of *this* run (train.max_steps may have grown; the
        # optimizer's saved LR belongs to the old schedule); the same float when nothing changed
        for g, base, f in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            g["lr"] = base * f(self.scheduler.last_epoch)
        rng = path / f"rng-rank{self.env.rank}.pt"
        if rng.exists():
            ckpt.set_rng_state(ckpt.safe_load(rng))
        self.step = int(state["step"])
        self._saved_step = self.step
        self._resumed_at_end = self.step >= self.total_steps
        self.best = state.get("best")
        self.eval_history = state.get("eval_history", [])

    # ---- main loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        r = self.r
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_recipe(r, self.out / "recipe.resolved.yaml")
            self.print_summary()
        history: list[dict[str, Any]] = []
        bar = self.metrics.progress(self.total_steps, initial=self.step)
        # SIGTERM/SIGUSR1 only set a flag from here until fit returns: each phase (a step, an
        # evaluation, the end-of-run evaluation, the final/ export) finishes, then the run checkpoints
        # and exits 75 (or, when the signal came during the final export, completes and exits 0)
        self._preempt = ckpt.ACTIVE_PREEMPTION = ckpt.Preemption().install()
        if self.step == 0 and r.eval.at_start and (r.eval.every or r.eval.at_end):
            self._run_eval()
            bar.restart_clock()  # rate and ETA of training steps, not of the initial evaluation
            if self._preempt_requested():
                self._stop_preempted(checkpoint=False)  # nothing trained yet: the resumed run starts over
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
            if r.train.save_every and self.step % r.train.save_every == 0 and self._saved_step != self.step:
                self.save_checkpoint()
            if self._preempt_requested():  # every rank stops after the same step
                self._stop_preempted()
        bar.close()
        self.batches.close()  # no DataLoader worker outlives the loop
        if (r.train.save_every or self.is_lora) and self._saved_step != self.step:
            self.save_checkpoint()  # the final state, resumable and exportable (`lrt export RUN_DIR`)
        if self._preempt_requested():
            self._stop_preempted()
        if r.eval.at_end and not self._end_eval_done():
            self._run_eval()
            if self._preempt_requested():
                self._stop_preempted()  # the checkpoint holds this evaluation: the resumed run skips it
        final_dir = None
        if r.train.save_final:
            from lrt.export import export_final

            ckpt.fault("in_final", self.step)  # test hook: a signal while final/ is about to be written
            final_dir = export_final(self, self.out / "final")  # the best checkpoint under eval.select_best
        self.metrics.close()
        if self.env.is_main:
            from lrt.plot import write_run_plots

            write_run_plots(self.out)
        if self._preempt is not None and self._preempt.signal and self.env.is_main:
            log.warning("%s arrived while the run was finishing: the run is complete (final/ written), "
                        "nothing to resume", self._preempt.signal)
        self._release_signals()
        return TrainResult(self.out, self.step, history, self.eval_history, final_dir)

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
        self._release_signals()
        prev = ckpt.complete_checkpoints(self.ckpt_root)
        raise LrtError(
            f"step {self.step}: non-finite {what}; training stopped (train.on_nonfinite=stop) and this state is not "
            "saved; " + (f"the last good checkpoint is {prev[-1]}. " if prev else "no checkpoint was written. ")
            + "Lower train.lr or the loss weights, check the data and the model, then "
            + ("resume with train.resume=auto" if prev else "run again")
            + " (or set train.on_nonfinite=skip to skip such updates)"
        )

    def _preempt_requested(self) -> bool:
        """Collective: did any rank get SIGTERM/SIGUSR1 (every rank then stops at the same point)."""
        return self.env.any(self._preempt is not None and self._preempt.signal is not None)

    def _end_eval_done(self) -> bool:
        """A resumed run whose checkpoint was written after its end-of-run evaluation (preempted
        right after it) does not evaluate that step again."""
        return bool(self.eval_history) and self.eval_history[-1].get("step") == self.step and self._resumed_at_end

    def _stop_preempted(self, checkpoint: bool = True) -> None:
        """SIGTERM/SIGUSR1 arrived: the phase in flight is finished; checkpoint, leave a marker, exit 75.
        Called while the handlers are still installed, so a second signal cannot kill the save."""
        from lrt.errors import Preempted

        sig = self._preempt.signal or "a signal on another rank"
        self.metrics.flush_steps()
        path: Path | None = None
        if checkpoint:
            path = self.save_checkpoint() if self._saved_step != self.step else ckpt.step_dir(self.ckpt_root, self.step)
        if self.env.is_main:
            import json as _json

            (self.out / ckpt.PREEMPTED).write_text(_json.dumps({"step": self.step, "signal": sig,
                                                               "checkpoint": str(path) if path else None}),
                                                   encoding="utf-8")
        self.env.barrier()  # the marker exists before any rank exits (launchers read it)
        self.batches.close()
        self._release_signals()
        what = f"checkpoint {path} written" if path else "nothing trained yet, no checkpoint needed"
        raise Preempted(f"stopped by {sig} after step {self.step}: {what}; "
                        "resume with train.resume=auto (exit code 75 means: requeue me)")

    def release(self) -> None:
        """The signal handlers and the output_dir lock (also freed by the kernel when the process exits)."""
        self._release_signals()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def _release_signals(self) -> None:
        if getattr(self, "_preempt", None) is not None:
            self._preempt.restore()
        ckpt.ACTIVE_PREEMPTION = None

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
                if self._saved_step != self.step:
                    self.save_checkpoint()
        self._report_eval(res, key)

    # ---- console, plots ---------------------------------------------------------------------
    def print_summary(self) -> dict[str, Any]:
        """The start-of-run summary (rank 0): model, parameters, lists, batch, steps, backend."""
        from lrt.train.console import count_params, emit, format_summary, list_stats

        r = self.r
        trainable, total = count_params(self.module.model)
        spe = self.sampler.steps_per_epoch
        s = {
            "model": r.model.name_or_path, "lora_r": r.model.lora.r if r.model.lora else None,
            "trainable_params": trainable, "total_params": total,
            "objective": " + ".join(f"{t.weight:g} x {t.name}" for t in r.loss),
            "lists": list_stats(self.rows, r.data.max_length), "eval_queries": len(self.eval_examples),
            "eval_every": r.eval.every, "global_batch": self.sampler.global_batch,
            "per_device": r.train.per_device_batch_size, "grad_accum": r.train.grad_accum,
            "world_size": self.env.world, "steps": self.total_steps, "steps_per_epoch": spe,
            "epochs": self.total_steps / max(spe, 1), "start_step": self.step, "precision": r.train.precision,
            "dtype": r.model.dtype, "backend": self._backend_name(), "zero_stage": zero_stage(self.ds_cfg),
            "device": str(self.env.device), "trackers": self.metrics.active, "output_dir": str(self.out),
        }
        pad = getattr(self.sampler, "padding_fraction", None)
        if pad is not None and r.train.per_device_batch_size > 1:  # one list per micro-batch pads nothing
            s["padding"] = {"grouped": bool(self.sampler.grouped), "ungrouped": pad(grouped=False),
                            "with_grouping": pad(grouped=True)}
        emit(format_summary(s))
        import json as _json

        (self.out / "run_summary.json").write_text(_json.dumps(s, indent=1), encoding="utf-8")
        return s

    def _report_eval(self, res: dict[str, Any], key: str) -> None:
        """Print the evaluation with the initial order and the best so far; refresh the plots."""
        if not self.env.is_main:
            return
        from lrt.plot import write_run_plots
        from lrt.train.console import emit, format_eval

        best = max((h for h in self.eval_history if isinstance(h.get(key), (int, float))), key=lambda h: h[key],
                   default=None)
        emit(format_eval(res, best))
        write_run_plots(self.out, kinds=("overview",))


# What in-training nDCG@10 is computed against, and the metric name it is logged under:
# "qrels": every judged document (eval.qrels or the rows' `qrels`): exactly trec_eval's nDCG@10;
# "candidates": only the candidates' grades (the ideal DCG ignores judged documents outside the list,
# so it reads higher than trec_eval: DL19 BM25 0.5456 vs 0.5058); "teacher": gains from teacher ranks.
METRIC_SUFFIX = {"qrels": "", "candidates": "_candidates", "teacher": "_teacher"}


def metric_keys(kind: str) -> tuple[str, str]:
    """(model key, initial-order key) for judgements of `kind`, e.g. eval/nDCG@10_candidates."""
    sfx = METRIC_SUFFIX[kind]
    return f"eval/nDCG@10{sfx}", f"eval/initial_nDCG@10{sfx}"


def headline_key(rec: dict[str, Any]) -> str:
    """The nDCG@10 key an evaluation record carries (what select_best, the CLI and cards report)."""
    for kind in METRIC_SUFFIX:
        if metric_keys(kind)[0] in rec:
            return metric_keys(kind)[0]
    raise KeyError(f"no eval/nDCG@10* key in {sorted(rec)}")


def eval_judgements(examples: list[ListwiseExample], qrels_file: str | None = None
                    ) -> tuple[dict[str, dict[str, float]], str]:
    """(qrels, kind): a TREC qrels file, else every row's full `qrels`, else the candidates' grades
    or teacher-rank gains (see METRIC_SUFFIX)."""
    if qrels_file:
        from lrt.config import resolve_path
        from lrt.io.trec import read_qrels

        judged = read_qrels(resolve_path(qrels_file))
        qids = {e.qid for e in examples}
        missing = len(qids - set(judged))
        if missing == len(qids):
            raise LrtError(f"eval.qrels {qrels_file}: none of the {len(qids)} eval query ids is judged there "
                           f"(eval e.g. {sorted(qids)[:3]}, qrels e.g. {list(judged)[:3]}); pair the right files")
        if missing:
            log.warning("eval.qrels %s: %d of %d eval queries have no judgements and are left out (as trec_eval)",
                        qrels_file, missing, len(qids))
        return {q: {d: float(g) for d, g in judged[q].items()} for q in qids if q in judged}, "qrels"
    with_qrels = sum(e.qrels is not None for e in examples)
    if with_qrels == len(examples):
        return {e.qid: {d: float(g) for d, g in e.qrels.items()} for e in examples}, "qrels"  # type: ignore[union-attr]
    if with_qrels:
        log.warning("only %d of %d eval rows carry full `qrels`: evaluating all of them against the candidates' "
                    "grades (eval/nDCG@10_candidates); give eval.qrels for trec_eval's nDCG@10", with_qrels,
                    len(examples))
    kind = "candidates" if all(e.relevance is not None for e in examples) else "teacher"
    return eval_qrels(examples), kind


def eval_ndcg(rankings: dict[str, list[str]], qrels: dict[str, dict[str, float]], kind: str) -> float:
    """nDCG@10 over rankings ∩ qrels: ir_measures/pytrec_eval (trec_eval itself) on full integer
    qrels; the exact float-grade implementation otherwise (synthetic grades need not be integers)."""
    from lrt.evaluate import evaluate, ndcg_at_k

    if kind == "qrels":
        return evaluate(qrels, rankings, ["nDCG@10"])["nDCG@10"]
    return ndcg_at_k(rankings, qrels, 10)


def eval_qrels(examples: list[ListwiseExample]) -> dict[str, dict[str, float]]:
    """Graded relevance of the candidates when the data has it; otherwise teacher-rank gains."""
    out: dict[str, dict[str, float]] = {}
    for e in examples:
        if e.relevance is not None:
            out[e.qid] = {c.docid: float(g) for c, g in zip(e.candidates, e.relevance)}
        else:
            n = len(e.ranking)
            out[e.qid] = {d: float(max(0, min(n, 10) + 1 - i)) for i, d in enumerate(e.ranking, 1)}
    return out


def train(recipe: Recipe) -> TrainResult:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = Trainer(recipe)
    try:
        res = trainer.fit()
    finally:
        trainer.release()  # the SIGTERM/SIGUSR1 handlers and the output_dir lock never outlive the run
    trainer.env.close()  # after a completed run only: a failed rank must not wait on its peers here
    return res
