"""`RUN/final/` at the end of training: the live model (every rank calls in; ZeRO-3 gathers
collectively, rank 0 writes) or, under `eval.select_best`, the best checkpoint re-exported."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lrt.export.model import export_recipe, merge_lora, rebuild, save_meta, unquantised_dtype, write_export
from lrt.export.run import export_run
from lrt.train.adapter import save_adapter

log = logging.getLogger("lrt")


def export_trained(trainer: Any, out: Path, selection: str | None = None) -> Path:
    """End of training. Every rank calls this (ZeRO-3 gathers collectively); rank 0 writes.

    Full fine-tuning: the gathered weights are saved as they are. LoRA: `out/adapter/` (PEFT
    format) and, unless the base is quantised, the merged model in `out/`. QLoRA: adapter only,
    with NOT_MERGED.txt pointing to `lrt export` (which reloads the base unquantised)."""
    from lrt.scoring import unwrap
    from lrt.train.zero import gather_on_rank0

    env, r, model = trainer.env, trainer.r, trainer.hf_model
    lora = r.model.lora is not None
    if lora:
        state = gather_on_rank0(model, env.is_main)
    elif trainer.zero3:
        base = unwrap(model)
        state = gather_on_rank0(base, env.is_main, only_trainable=False)
        if state is not None:  # persistent buffers are never partitioned
            keys = set(base.state_dict())
            state.update({n: b.detach().cpu() for n, b in base.named_buffers() if n in keys})
    else:
        state = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        n = len(trainer.train_examples)
        src = f"end of training (step {trainer.step})"
        card = {"step": trainer.step, "eval_history": list(trainer.eval_history), "selection": selection}
        if lora:
            assert state is not None
            adapter = save_adapter(model, state, out / "adapter")
            trainer.tok.save_pretrained(str(adapter))
            save_meta(adapter, r)
            if r.model.quantization is not None:
                (out / "NOT_MERGED.txt").write_text(
                    "QLoRA: adapter only (merging into the 4-bit base would bake in its quantisation error).\n"
                    f"Run `lrt export {r.output_dir} --out DIR [--dtype bfloat16]` to merge into an unquantised reload.\n",
                    encoding="utf-8",
                )
            else:
                merged = merge_lora(rebuild(export_recipe(r), trainer.tok, state))
                write_export(merged, trainer.tok, r, out, src, n, **card)
        else:
            write_export(unwrap(model), trainer.tok, r, out, src, n, state_dict=state, **card)
        from lrt.export.dir import record

        record(out, "adapter-only" if lora and r.model.quantization is not None else "full")
    env.barrier()
    return out



def export_final(trainer: Any, out: Path) -> Path:
    """`final/` at the end of training: the best evaluated checkpoint under `eval.select_best`,
    else the last step. Every rank calls this; the best checkpoint is rebuilt on rank 0's CPU
    (the same path as `lrt export --checkpoint`), the live model is exported collectively."""
    from lrt.train import checkpoint as ckpt

    r, best = trainer.r, trainer.best
    if not r.eval.select_best:
        return export_trained(trainer, out)
    if not best:
        return export_trained(trainer, out, "eval.select_best is set but no evaluation ran: the last step")
    from lrt.export.card import headline

    key, _ = headline(best)
    n = len(trainer.eval_history)
    why = (f"eval.select_best: the best {key.removeprefix('eval/') if key else 'nDCG@10'} "
           f"({best.get(key, float('nan')):.4f}) of {n} evaluation(s), at step {best.get('step')}")
    if best.get("step") == trainer.step:
        return export_trained(trainer, out, why + " (the last step)")
    cp = ckpt.step_dir(trainer.ckpt_root, int(best["step"])) if best.get("checkpoint") else None
    if cp is None or not cp.is_dir():
        log.warning("eval.select_best: the best step %s was not checkpointed (set train.save_every); final/ is the last step",
                    best.get("step"))
        return export_trained(trainer, out, f"the last step: the best evaluation (step {best.get('step')}) was not "
                              "checkpointed (eval.select_best needs train.save_every to keep it)")
    if trainer.env.is_main:
        import shutil

        if out.exists():
            shutil.rmtree(out)
        adapter_dir = None
        export_run(trainer.out, out, str(cp), dtype=unquantised_dtype(r), selection=why)
        if r.model.lora is not None:
            adapter_dir = out / "adapter"
            export_run(trainer.out, adapter_dir, str(cp), adapter_only=True, selection=why)
            from lrt.export.dir import record

            record(out, "full")  # the list of files lrt wrote now includes adapter/
        log.info("final/: step %s (best evaluation) from %s%s", best.get("step"), cp.name,
                 f", adapter in {adapter_dir}" if adapter_dir else "")
    trainer.env.barrier()
    return out
