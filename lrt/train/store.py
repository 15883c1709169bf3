"""The run's checkpoint store: atomic saves, the output_dir checks and lock, resume (verify,
recipe and data compatibility, fall back to an older checkpoint), for one Trainer.

Checkpoint format and resume semantics are those of lrt.train.checkpoint (manifest, tmp dir renamed
last, `latest`, RNG of every rank, data position = step number): a kill -9 resume is bit-exact.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lrt.config import dump_recipe
from lrt.errors import LrtError
from lrt.train import checkpoint as ckpt
from lrt.train.adapter import save_adapter
from lrt.train.data import length_grouping
from lrt.train.zero import gather_on_rank0, zero_stage

log = logging.getLogger("lrt")


class RunStore:
    """Every rank holds one; rank 0 writes what only it writes (state, manifest, the lock)."""

    def __init__(self, trainer: Any) -> None:
        self.t = trainer
        self.saved_step = -1  # the step of the newest checkpoint this process wrote or loaded
        self.resumed_at_end = False  # resumed from a checkpoint of the last step (its end eval may be done)
        self.lock: Any = None
        self._data_fp: str | None | object = "unset"

    def release(self) -> None:
        """The output_dir lock (also freed by the kernel when the process exits)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def save(self) -> Path:
        """Every rank calls this. Files go to a tmp dir; rank 0 adds the state and the manifest,
        renames it and moves `latest` last. A failed write (disk full) is one clear error; the
        previous checkpoint is untouched."""
        root = self.t.ckpt_root
        tmp = ckpt.tmp_dir(root, self.t.step)
        err: tuple[int | None, str] | None = None
        if self.t.env.is_main:
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
            torch.save(ckpt.rng_state(), tmp / f"rng-rank{self.t.env.rank}.pt")
            if self.t.engine is not None:
                # fp32 master weights, optimizer partitions and the client LR scheduler; LoRA runs skip
                # the frozen base (a 7B base per checkpoint would be 14 GB of nothing new)
                self.t.engine.save_checkpoint(str(tmp), tag="ds", save_latest=False, exclude_frozen_parameters=self.t.is_lora)
            elif self.t.env.is_main:
                from safetensors.torch import save_file

                save_file(ckpt.trainable_state(self.t.module.model), str(tmp / "trainable.safetensors"))
                torch.save(self.t.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.t.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.t.is_lora:
                state = gather_on_rank0(self.t.hf_model, self.t.env.is_main)  # collective under ZeRO-3
                if self.t.env.is_main:
                    save_adapter(self.t.hf_model, state, tmp / "adapter")
        except Exception as e:  # noqa: BLE001 - torch.save says RuntimeError, safetensors SafetensorError
            err = ckpt.write_error(e, tmp)
        self._check_save(err, tmp)  # also the barrier: every rank's files are written
        path = ckpt.step_dir(root, self.t.step)
        if self.t.env.is_main:
            try:
                dump_recipe(self.t.r, tmp / "recipe.yaml")
                state = {"step": self.t.step, "world_size": self.t.env.world, "total_steps": self.t.total_steps,
                         "best": self.t.best, "eval_history": self.t.eval_history, "backend": self.t._backend_name(),
                         "zero_stage": zero_stage(self.t.ds_cfg), "lora": self.t.is_lora,
                         "loaded_partitioned": self.t.loaded_partitioned, "data_train": self.data_fingerprint(),
                         "group_by_length": self.t.sampler.group}
                protect = (self.t.best["checkpoint"],) if self.t.best and self.t.best.get("checkpoint") else ()
                path = ckpt.finalize(root, self.t.step, state, self.t.r.train.keep_last, protect)
            except OSError as e:
                err = (e.errno, str(e))
        self._check_save(err, tmp)
        self.saved_step = self.t.step
        return path

    def _check_save(self, err: tuple[int | None, str] | None, tmp: Path) -> None:
        """Collective: if any rank failed to write, every rank raises one clear error (no traceback)."""
        errors = [e for e in self.t.env.gather_objects(err) if e]
        if not errors:
            return
        if self.t.env.is_main:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # free the space the partial save took
        import errno as _errno

        code, msg = errors[0]  # type: ignore[misc]
        prev = ckpt.complete_checkpoints(self.t.ckpt_root)
        what = "the disk is full" if code == _errno.ENOSPC else "a write failed"
        raise ckpt.CheckpointError(
            f"saving the checkpoint of step {self.t.step} failed: {what} ({msg}). "
            + (f"The previous checkpoint {prev[-1]} is intact: free space (or lower train.keep_last) and "
               "resume with train.resume=auto" if prev else "No earlier checkpoint exists: free space and rerun")
        )

    def check_run_dir(self) -> None:
        """Before any work: a fresh run refuses an output_dir holding an earlier run (whose
        checkpoints it would mix with its own, and which `resume=auto` would later continue)."""
        t = self.t.r.train
        used = ckpt.previous_run(self.t.out)
        if self.t.env.is_main:  # held until the process exits (or `train` returns): one run per output_dir
            self.lock = ckpt.run_lock(self.t.out).acquire()
        if t.resume == "none" and used and not t.overwrite_output_dir:
            raise LrtError(
                f"output_dir {self.t.out} already holds a run ({', '.join(used)}): continue it with train.resume=auto, "
                "replace it with train.overwrite_output_dir=true, or choose another output_dir"
            )
        if t.resume != "none":  # fail fast on an incompatible recipe (checked again once verified)
            cands = ckpt.resume_candidates(self.t.out / "checkpoints", t.resume)
            if cands:
                try:
                    self._check_recipe(cands[0])
                except ckpt.CheckpointError:
                    pass  # a corrupt newest checkpoint: verified, reported and skipped at load
        if t.on_nonfinite == "skip" and self.t.ds_cfg is not None:
            raise LrtError("train.on_nonfinite=skip is not supported with train.deepspeed (DeepSpeed applies the "
                           "update inside engine.step()): use train.on_nonfinite=stop")

    def resume(self) -> None:
        t = self.t.r.train
        if self.t.env.is_main:
            used = ckpt.previous_run(self.t.out)
            if t.resume == "none" and used:  # allowed by train.overwrite_output_dir (see _check_run_dir)
                log.warning("train.overwrite_output_dir: removing the earlier run's %s from %s", ", ".join(used), self.t.out)
                ckpt.clear_previous_run(self.t.out)
            if t.resume != "none":
                ckpt.remove_stale_tmp(self.t.ckpt_root)
            (self.t.out / ckpt.PREEMPTED).unlink(missing_ok=True)
        self.t.env.barrier()
        candidates = ckpt.resume_candidates(self.t.ckpt_root, t.resume)
        problems: list[str] = []
        path = None
        for cand in candidates:
            why = self.t.env.broadcast_object(self._verify(cand) if self.t.env.is_main else None)
            if why is None:
                why = self._load(cand)
            if why is None:
                path = cand
                break
            problems.append(f"{cand}: {why}")
            if self.t.env.is_main:
                log.warning("checkpoint %s is unusable: %s; trying the one before it", cand, why)
        if candidates and path is None:
            raise ckpt.CheckpointError(
                f"no usable checkpoint to resume from ({len(candidates)} tried): " + " | ".join(problems)
                + ". Remove the broken ones, or start over with train.resume=none train.overwrite_output_dir=true"
            )
        if path is not None and problems and self.t.env.is_main:
            log.warning("resuming from %s, an older checkpoint (newer ones are unusable, see above)", path)
        if self.t.env.is_main and t.resume != "none":
            # no checkpoint (e.g. preempted during eval.at_start): everything is run again, step 0 included
            dropped = ckpt.truncate_metrics(self.t.out / "metrics.jsonl", self.t.step if path is not None else -1)
            if dropped:
                log.info("metrics.jsonl: dropped %d records after step %d (they are trained again)", dropped, self.t.step)
        if path is not None and self.t.env.is_main:
            log.info("resumed from %s at step %d", path, self.t.step)

    def _verify(self, path: Path) -> str | None:
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
        world = (int(state.get("world_size") or 1), self.t.env.world)
        changes = ckpt.recipe_changes(saved, self.t.r.model_dump(mode="json"), world)
        grouped = state.get("group_by_length")
        if grouped is None and isinstance(saved, dict):  # a checkpoint of an older lrt: its default (micro-batch > 1)
            g = (saved.get("data") or {}).get("group_by_length")
            grouped = g if g is not None else (saved.get("train") or {}).get("per_device_batch_size", 1) > 1
        if grouped is not None and bool(grouped) != length_grouping(self.t.r, self.t.env.world) and not any(
                c.startswith("data.group_by_length") for c in changes):
            changes.append(f"length grouping (data.group_by_length, default on when the global batch > 1): "
                           f"{bool(grouped)} -> {length_grouping(self.t.r, self.t.env.world)}; set "
                           f"data.group_by_length={str(bool(grouped)).lower()} to continue as it trained")
        if changes:
            raise LrtError(
                f"train.resume: {path} was trained with a different recipe; resuming would silently continue it "
                f"under new settings. Changed: {'; '.join(changes)}. Revert them, or start a new run in another "
                "output_dir (or train.resume=none train.overwrite_output_dir=true). Only max_steps/epochs, "
                "save/log/eval/log settings and output_dir may change on resume"
            )

    def data_fingerprint(self) -> str | None:
        """The contents of data.train (a local file or directory; None for a `datasets` source), stored
        in every checkpoint so `train.resume` notices a training file changed under it."""
        if self._data_fp == "unset":
            from lrt.config import resolve_path
            from lrt.data.cache import source_fingerprint

            src = resolve_path(self.t.r.data.train)
            self._data_fp = source_fingerprint(src, self.t.r.data.split) if Path(src).exists() else None
        return self._data_fp

    def _check_data(self, path: Path) -> None:
        """A resumed run continues the data order of the checkpoint (step number = data position):
        on a changed training file it would silently train on other lists than it says."""
        saved = ckpt.read_state(path).get("data_train")
        if not saved or self.t.r.train.allow_data_change:
            return
        now = self.data_fingerprint()
        if now is not None and now != saved:
            raise LrtError(
                f"train.resume: data.train {self.t.r.data.train} changed since {path} was written (its contents "
                "differ from the file that run trained on), so the resumed steps would not be the lists the "
                "checkpoint's data position refers to. Restore the original file, start a new run in another "
                "output_dir, or set train.allow_data_change=true to resume on the new file anyway"
            )

    def _load(self, path: Path) -> str | None:
        """Every rank: load `path`; None on success, else what went wrong (the same on every rank)."""
        why: str | None = None
        try:
            self._load_files(path)
        except LrtError as e:
            if not isinstance(e, ckpt.CheckpointError):
                raise
            why = str(e)
        except Exception as e:  # noqa: BLE001 - a corrupt file fails in many ways; report, then fall back
            why = ckpt._first_line(e)
        whys = [w for w in self.t.env.gather_objects(why) if w]
        return str(whys[0]) if whys else None

    def _load_files(self, path: Path) -> None:
        state = ckpt.read_state(path)
        saved_world = state.get("world_size")
        if (state.get("backend") == "deepspeed") != (self.t.engine is not None):
            raise LrtError(
                f"{path} was written by the {state.get('backend')} backend but this run uses {self.t._backend_name()}: "
                "resume with the same train.deepspeed setting (or export it with `lrt export` and start a new run)"
            )
        if self.t.engine is not None:
            src = path
            if saved_world != self.t.env.world:
                # ZeRO partitions are per rank: DeepSpeed's universal checkpoint re-partitions them
                if self.t.env.is_main:
                    log.warning("%s was written by %s processes, this run has %s: loading it through a DeepSpeed "
                                "universal checkpoint", path, saved_world, self.t.env.world)
                    src = ckpt.universal_checkpoint(path)
                    ckpt.vet_pickles(src / "ds")  # it may be a leftover of an earlier resume: vet it too
                src = Path(str(self.t.env.broadcast_object(str(src))))
                self.t.engine._config.load_universal_checkpoint = True  # read by engine.load_checkpoint
            try:
                load_path, _ = self.t.engine.load_checkpoint(str(src), tag="ds", load_module_strict=not self.t.is_lora)
            finally:
                self.t.engine._config.load_universal_checkpoint = False  # later saves stay ordinary ZeRO checkpoints
            if load_path is None:
                raise ckpt.CheckpointError("DeepSpeed could not load the checkpoint (tag 'ds')")
            bad = ckpt.nonfinite((n, getattr(p, "ds_tensor", p)) for n, p in self.t.module.named_parameters()
                                 if p.requires_grad)
            if bad:
                raise ckpt.CheckpointError(f"the loaded weights hold NaN/Inf values in {bad[:3]}")
        else:
            if saved_world != self.t.env.world:
                log.warning("resuming a %s-process checkpoint on %s processes (same global batch, checked above)",
                            saved_world, self.t.env.world)
            from safetensors.torch import load_file

            ckpt.load_trainable_state(self.t.module.model, load_file(str(path / "trainable.safetensors")))
            opt = ckpt.safe_load(path / "optimizer.pt")
            bad = ckpt.nonfinite(opt.get("state", {}).items()) if isinstance(opt, dict) else []
            if bad:
                raise ckpt.CheckpointError(f"optimizer.pt holds NaN/Inf values in {bad[:3]}")
            self.t.optimizer.load_state_dict(opt)
            self.t.scheduler.load_state_dict(ckpt.safe_load(path / "scheduler.pt"))
        # the LR of the next step from the schedule of *this* run (train.max_steps may have grown; the
        # optimizer's saved LR belongs to the old schedule); the same float when nothing changed
        for g, base, f in zip(self.t.optimizer.param_groups, self.t.scheduler.base_lrs, self.t.scheduler.lr_lambdas):
            g["lr"] = base * f(self.t.scheduler.last_epoch)
        rng = path / f"rng-rank{self.t.env.rank}.pt"
        if rng.exists():
            ckpt.set_rng_state(ckpt.safe_load(rng))
        self.t.step = int(state["step"])
        self.saved_step = self.t.step
        self.resumed_at_end = self.t.step >= self.t.total_steps
        self.t.best = state.get("best")
        self.t.eval_history = state.get("eval_history", [])
