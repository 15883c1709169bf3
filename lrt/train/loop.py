"""The training loop: one process, torchrun/DDP or DeepSpeed, from one recipe.

Own loop rather than a `transformers.Trainer` subclass (see README "Architecture"): the loss needs
hidden states instead of logits, its normalisation is computed over the whole optimizer step
before any backward (exact under accumulation and data parallelism), and checkpoints must be
atomic and resume bit-exactly (RNG of every rank, data position = step number).
"""
from __future__ import annotations

import json
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

from lrt.config import Recipe, dump_recipe, resolve_path
from lrt.data.collate import ListwiseCollator, identifier_token_ids
from lrt.data.schema import ListwiseExample
from lrt.errors import LrtError
from lrt.modeling import load_model, load_tokenizer
from lrt.scoring import unwrap
from lrt.train import checkpoint as ckpt
from lrt.train.data import StepSampler, batch_to, encode_all, load_split, prompt_template
from lrt.train.dist import DistEnv
from lrt.train.metrics import MetricsLogger
from lrt.train.module import RerankModule, gathered
from lrt.train.objective import Objective

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


def build_optimizer(r: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": r.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=r.train.lr, betas=r.train.betas, eps=r.train.eps)
    if r.train.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


def deepspeed_config(r: Recipe) -> dict[str, Any]:
    """The recipe's DeepSpeed JSON with batch sizes, clipping and precision filled from the recipe."""
    cfg = json.loads(Path(resolve_path(r.train.deepspeed or "")).read_text(encoding="utf-8"))
    cfg["train_micro_batch_size_per_gpu"] = r.train.per_device_batch_size
    cfg["gradient_accumulation_steps"] = r.train.grad_accum
    cfg.pop("train_batch_size", None)
    if r.train.max_grad_norm:
        cfg["gradient_clipping"] = r.train.max_grad_norm
    cfg["bf16"] = {"enabled": r.train.precision == "bf16"}
    cfg.pop("fp16", None)
    cfg.pop("optimizer", None)  # lrt passes its own AdamW and schedule: identical to the non-DS path
    cfg.pop("scheduler", None)
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    final_dir: Path | None = None


class Trainer:
    def __init__(self, recipe: Recipe) -> None:
        self.r = recipe
        self.out = Path(recipe.output_dir)
        self.ds_cfg = deepspeed_config(recipe) if recipe.train.deepspeed else None
        self.env = DistEnv.setup(use_deepspeed=self.ds_cfg is not None)
        seed_everything(recipe.train.seed)
        self.objective = Objective.from_recipe(recipe)
        self.template = prompt_template(recipe)
        self.tok = load_tokenizer(recipe)
        self.id_ids = None
        if self.objective.needs_scores or recipe.eval.every or recipe.eval.at_end:
            n = recipe.data.window or self._max_train_candidates()
            self.id_ids = identifier_token_ids(self.tok, self.template, n) if self._single_token_ok(n) else None
            if self.objective.needs_scores and self.id_ids is None:
                identifier_token_ids(self.tok, self.template, n)  # raises the clear IdentifierError
        self.train_examples = load_split(recipe, recipe.data.train)
        eval_src = recipe.eval.data or recipe.data.eval
        self.eval_examples = load_split(recipe, eval_src) if eval_src else []
        if recipe.eval.max_queries:
            self.eval_examples = self.eval_examples[: recipe.eval.max_queries]
        rows = encode_all(recipe, self.tok, self.template, self.train_examples,
                          self.id_ids if self.objective.needs_scores else None, self.objective.needs_target)
        self.rows = rows
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.collate = ListwiseCollator(pad, recipe.data.padding_side)
        self.sampler = StepSampler(len(rows), recipe.train.per_device_batch_size, recipe.train.grad_accum,
                                   self.env.world, recipe.train.seed)
        spe = self.sampler.steps_per_epoch
        if spe == 0:
            raise LrtError(
                f"{len(rows)} training lists are fewer than one global batch ({self.sampler.global_batch}): "
                "lower train.per_device_batch_size / train.grad_accum or add data"
            )
        self.total_steps = recipe.train.max_steps or max(1, math.ceil(recipe.train.epochs * spe))
        self._ds_keepalive = None
        if self.ds_cfg and self.ds_cfg.get("zero_optimization", {}).get("stage") == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._ds_keepalive = HfDeepSpeedConfig(self.ds_cfg)  # load 7B weights partitioned, not whole per rank
        model = load_model(recipe, self.tok)
        if recipe.train.precision == "bf16" and self.ds_cfg is None and recipe.model.quantization is None:
            model = model.to(torch.bfloat16) if recipe.model.dtype == "bfloat16" else model
        self.module = RerankModule(model, self.objective)
        self.ckpt_root = self.out / "checkpoints"
        self._setup_backend()
        self.metrics = MetricsLogger(self.out, recipe, enabled=self.env.is_main)
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.eval_history: list[dict[str, Any]] = []
        self._maybe_resume()

    # ---- set-up -----------------------------------------------------------------------------
    def _max_train_candidates(self) -> int:
        return 20

    def _single_token_ok(self, n: int) -> bool:
        from lrt.data.collate import IdentifierError

        try:
            identifier_token_ids(self.tok, self.template, n)
            return True
        except IdentifierError:
            return False

    def _setup_backend(self) -> None:
        r = self.r
        if self.ds_cfg is None:
            self.module.to(self.env.device)
        self.optimizer = build_optimizer(r, self.module)
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
    def train_step(self) -> dict[str, Any]:
        micro = [self.collate([self.rows[i] for i in idx]) for idx in self.sampler.micro_batches(self.step, self.env.rank)]
        keys = list(self.objective.denominators(micro[0]).keys())
        local = [sum(self.objective.denominators(b)[k] for b in micro) for k in keys]
        dens = dict(zip(keys, self.env.all_reduce_sum(local)))
        scale = float(self.env.world)  # DDP / DeepSpeed average gradients over ranks; we want the global sum
        sums = {k: 0.0 for k in keys}
        for m, batch in enumerate(micro):
            batch = batch_to(batch, self.env.device)
            last = m == len(micro) - 1
            if self.engine is not None:
                with self.autocast():
                    loss, nums = self.engine(batch, dens, scale)
                self.engine.backward(loss, scale_wrt_gas=False)
                self.engine.step()
            else:
                runner = self.ddp or self.module
                sync = nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
                with sync:
                    with self.autocast():
                        loss, nums = runner(batch, dens, scale)
                    loss.backward()
            for k in keys:
                sums[k] += float(nums[k])
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = None
        if self.engine is None:
            if self.r.train.max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.r.train.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            gn = self.engine.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else None
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
        if not self.eval_examples or self.id_ids is None:
            return None
        from lrt.evaluate import ndcg_at_k
        from lrt.rerank import Reranker

        r = self.r
        w = r.eval.window or r.data.window or max(len(e.candidates) for e in self.eval_examples)
        stride = r.eval.stride or max(1, w // 2)
        model = unwrap(self.engine.module.model if self.engine is not None else self.hf_model)
        rr = Reranker(model, self.tok, self.template, window=w, stride=stride, max_length=r.data.max_length,
                      batch_size=r.eval.batch_size, padding_side=r.data.padding_side)
        # every rank takes a slice of the queries; results are gathered (ZeRO-3 needs all ranks anyway)
        mine = self.eval_examples[self.env.rank::self.env.world]
        with gathered([p for p in [model.get_output_embeddings().weight]]), self.autocast():
            ranked = rr.rerank_many([(e.qid, e.query, e.candidates) for e in mine])
        allr: dict[str, list[str]] = {}
        for part in self.env.gather_objects({q: [d for d, _ in v] for q, v in ranked.items()}):
            allr.update(part)  # type: ignore[arg-type]
        qrels = eval_qrels(self.eval_examples)
        initial = {e.qid: [c.docid for c in e.candidates] for e in self.eval_examples}
        res = {"step": self.step, "eval/nDCG@10": ndcg_at_k(allr, qrels, 10),
               "eval/initial_nDCG@10": ndcg_at_k(initial, qrels, 10), "eval/queries": len(allr)}
        self.last_rankings = allr
        return res

    # ---- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        root = self.ckpt_root
        tmp = ckpt.tmp_dir(root, self.step)
        if self.env.is_main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.env.barrier()
        torch.save(ckpt.rng_state(), tmp / f"rng-rank{self.env.rank}.pt")
        if self.engine is not None:
            self.engine.save_checkpoint(str(tmp), tag="ds", save_latest=False)
        elif self.env.is_main:
            from safetensors.torch import save_file

            save_file(ckpt.trainable_state(self.module.model), str(tmp / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        self.env.barrier()
        path = ckpt.step_dir(root, self.step)
        if self.env.is_main:
            dump_recipe(self.r, tmp / "recipe.yaml")
            state = {"step": self.step, "world_size": self.env.world, "total_steps": self.total_steps,
                     "best": self.best, "eval_history": self.eval_history, "backend": self._backend_name()}
            path = ckpt.finalize(root, self.step, state, self.r.train.keep_last)
        self.env.barrier()
        return path

    def _backend_name(self) -> str:
        return "deepspeed" if self.engine is not None else ("ddp" if self.ddp is not None else "single")

    def _maybe_resume(self) -> None:
        path = ckpt.find_resume(self.ckpt_root, self.r.train.resume)
        if path is None:
            return
        state = ckpt.read_state(path)
        if state.get("world_size") != self.env.world and self.engine is None:
            log.warning("resuming a %s-process checkpoint on %s processes", state.get("world_size"), self.env.world)
        if self.engine is not None:
            self.engine.load_checkpoint(str(path), tag="ds")
        else:
            from safetensors.torch import load_file

            ckpt.load_trainable_state(self.module.model, load_file(str(path / "trainable.safetensors")))
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
            self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng = path / f"rng-rank{self.env.rank}.pt"
        if rng.exists():
            ckpt.set_rng_state(torch.load(rng, weights_only=False))
        self.step = int(state["step"])
        self.best = state.get("best")
        self.eval_history = state.get("eval_history", [])
        if self.env.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    # ---- main loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        r = self.r
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_recipe(r, self.out / "recipe.resolved.yaml")
        history: list[dict[str, Any]] = []
        bar = self.metrics.progress(self.total_steps, initial=self.step)
        if self.step == 0 and r.eval.at_start and (r.eval.every or r.eval.at_end):
            self._run_eval()
        t0 = time.perf_counter()
        while self.step < self.total_steps:
            rec = self.train_step()
            rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
            history.append(rec)
            if self.step % r.train.log_every == 0 or self.step == self.total_steps:
                self.metrics.log(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if r.eval.every and self.step % r.eval.every == 0 and self.step != self.total_steps:
                self._run_eval()
            if r.train.save_every and self.step % r.train.save_every == 0:
                self.save_checkpoint()
        bar.close()
        if r.eval.at_end:
            self._run_eval()
        final_dir = None
        if r.train.save_final:
            from lrt.export import export_trained

            final_dir = export_trained(self, self.out / "final")
        self.metrics.close()
        return TrainResult(self.out, self.step, history, self.eval_history, final_dir)

    def _run_eval(self) -> None:
        res = self.evaluate()
        if res is None:
            return
        self.eval_history.append(res)
        self.metrics.log(res)
        if self.r.eval.select_best and (self.best is None or res["eval/nDCG@10"] > self.best["eval/nDCG@10"]):
            self.best = dict(res)
            if self.r.train.save_every:
                self.best["checkpoint"] = ckpt.step_dir(self.ckpt_root, self.step).name
                self.save_checkpoint()


def eval_qrels(examples: list[ListwiseExample]) -> dict[str, dict[str, float]]:
    """Graded relevance when the data has it; otherwise teacher-rank gains (documented in README)."""
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
    return Trainer(recipe).fit()
