"""Export a Hugging Face checkpoint that reranks exactly as trained.

Writes safetensors, the tokenizer, the generation config, `lrt_reranker.json` (prompt template,
identifier scheme, window) and a model card (recipe, data, metrics). LoRA adapters are merged into a
bf16/fp32 *reload* of the base, rebuilt from the recipe on the CPU of rank 0: the same code path for
single-process, DDP, ZeRO-2/3 (whose live weights are partitioned) and QLoRA (whose live base is
quantised; merging there is refused because it would bake the quantisation error into the weights).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrt.config import Recipe
from lrt.errors import LrtError
from lrt.ranking import RerankerMeta

log = logging.getLogger("lrt")

# what a rebuilt export model must not have: no k-bit base, no DeepSpeed, no training-only hooks
EXPORT_OVERRIDES = ["model.gradient_checkpointing=false", "model.neftune_alpha=null", "train.resume=none",
                    "train.deepspeed=null"]


def save_meta(out: Path, r: Recipe, tok: Any = None) -> None:
    from lrt.families import of_recipe

    if tok is None:  # every caller has saved the tokenizer to `out` first
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(out))
    of_recipe(r).export_meta(r, tok).save(out)  # what the family records (lrt_reranker.json)


def model_card(out: Path, r: Recipe, source: str, n_lists: int | None = None, run_dir: Path | None = None,
               **card: Any) -> None:
    """README.md in the Hugging Face format (lrt.card): `step`, `selection`, `eval_history` say
    which weights these are and list their own metrics."""
    from lrt.card import write_card

    write_card(out, r, source, n_lists, run_dir, **card)


def save_adapter(peft_model: nn.Module, state: dict[str, torch.Tensor] | None, out: Path) -> Path:
    """PEFT adapter dir from an explicit (gathered) state dict. Under ZeRO-3 the live LoRA tensors
    are empty partitions, so `save_pretrained()` without a state dict writes an empty adapter: the
    well-known silent failure this guards against (and checks)."""
    from safetensors import safe_open

    peft_model.save_pretrained(str(out), state_dict=state, safe_serialization=True, save_embedding_layers=False)
    f = out / "adapter_model.safetensors"
    with safe_open(str(f), "pt") as fh:
        sizes = [fh.get_slice(k).get_shape() for k in fh.keys()]
    if not sizes or any(0 in s or not s for s in sizes):
        raise RuntimeError(f"{f}: empty LoRA adapter written ({len(sizes)} tensors, shapes {sizes[:3]})")
    return out


def merge_lora(model: Any) -> Any:
    """Merge LoRA weights; refuse when the base is quantised (merging would bake in its error)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False) or any(
        type(m).__name__ in ("Linear4bit", "Linear8bitLt", "Params4bit") for m in base.modules()
    ):
        raise LrtError(
            "refusing to merge LoRA into a quantised (4/8-bit) base: the merged weights would carry the "
            "quantisation error. Use `lrt export RUN_DIR --out DIR [--dtype bfloat16|float32]` (without "
            "--as-trained), which reloads the base unquantised and merges there, or keep the adapter (--adapter-only)."
        )
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def export_recipe(r: Recipe, dtype: str | None = None, as_trained: bool = False) -> Recipe:
    """The recipe to rebuild the trained model on CPU for export: unquantised in `dtype` unless
    `as_trained` (then exactly as trained, incl. a k-bit base)."""
    from lrt.config import recipe_from_dict

    ov = list(EXPORT_OVERRIDES)
    if not as_trained:
        ov.append("model.quantization=null")
        ov.append(f"model.dtype={dtype or _unquantised_dtype(r)}")
        ov.append("model.attn_implementation=sdpa")
    return recipe_from_dict(r.model_dump(mode="json"), ov, "export", check_files=False)


def _unquantised_dtype(r: Recipe) -> str:
    return r.model.quantization.compute_dtype if r.model.quantization else r.model.dtype


def rebuild(r: Recipe, tok: Any, trainable: dict[str, torch.Tensor]) -> nn.Module:
    """Fresh CPU model from the recipe (base weights from `name_or_path`) + the trained tensors."""
    from lrt.modeling import load_model
    from lrt.train import checkpoint as ckpt
    from lrt.train.zero import hf_zero3_suspended

    with hf_zero3_suspended():
        model = load_model(r, tok)
    ckpt.load_trainable_state(model, trainable)
    return model.eval()


def write_export(model: nn.Module, tok: Any, r: Recipe, out: Path, source: str, n_lists: int | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None, run_dir: Path | None = None, **card: Any) -> Path:
    """Weights (safetensors; plus generation_config.json), tokenizer, lrt_reranker.json, model card."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
    tok.save_pretrained(str(out))
    save_meta(out, r, tok)
    model_card(out, r, source, n_lists, run_dir, **card)
    return out


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
        from lrt.export_dir import record

        record(out, "adapter-only" if lora and r.model.quantization is not None else "full")
    env.barrier()
    return out


def load_checkpoint_tensors(cp: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint, keyed like `model.named_parameters()`: lrt's own
    `trainable.safetensors`, or a DeepSpeed ZeRO-2/3 tag consolidated to fp32 (zero_to_fp32)."""
    from safetensors.torch import load_file

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if (cp / "trainable.safetensors").exists():
        return load_file(str(cp / "trainable.safetensors"))
    if not (cp / "ds").is_dir():
        raise LrtError(f"{cp}: neither trainable.safetensors nor a DeepSpeed 'ds' tag: not an lrt checkpoint")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from lrt.train.checkpoint import vet_pickles

    vet_pickles(cp / "ds")  # zero_to_fp32 unpickles with weights_only=False: refuse code first
    lora = hasattr(model, "peft_config")
    state = get_fp32_state_dict_from_zero_checkpoint(str(cp), tag="ds", exclude_frozen_parameters=lora)
    # the engine wrapped RerankModule, whose attribute `model` is the HF/PEFT model
    state = {k.removeprefix("model."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k in trainable}


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: str | None = None, dtype: str = "float32",
    adapter_only: bool = False, as_trained: bool = False, selection: str | None = None, usage_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """`lrt export RUN_DIR --out DIR`: rebuild the model from the run's resolved recipe (unquantised,
    in `dtype`), load the trained tensors of a checkpoint (default: newest complete), merge LoRA,
    and write a plain Hugging Face reranker checkpoint. `as_trained` rebuilds exactly as trained
    (QLoRA: 4-bit), where merging is refused with an explanation. The checkpoint is verified against
    its manifest as resume does; `out` is written whole or not at all (lrt.export_dir)."""
    from lrt.config import load_recipe
    from lrt.export_dir import check_destination, staged

    run_dir, out = Path(run_dir), Path(out)
    recipe_file = run_dir / "recipe.resolved.yaml"
    if not recipe_file.exists():
        raise LrtError(f"{run_dir}: not an lrt run directory (no recipe.resolved.yaml)")
    kind = "adapter-only" if adapter_only else "full"
    check_destination(out, kind, overwrite, protect=(run_dir / "checkpoints", recipe_file))
    trained = load_recipe(recipe_file, ["train.resume=none", "train.deepspeed=null"], check_files=False)
    r = export_recipe(trained, dtype, as_trained)
    cp = verified_checkpoint(run_dir, checkpoint)
    with staged(out, kind) as tmp:
        _export_checkpoint(run_dir, cp, r, tmp, checkpoint, as_trained, adapter_only, dtype, selection, usage_path)
    return out


def verified_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """The checkpoint to export, checked exactly as resume checks it (`checkpoint.verify`: every file
    against the manifest; DeepSpeed pickles vetted): `--checkpoint` must be one of this run's; by
    default the newest complete one that verifies (newer broken ones are skipped with a warning)."""
    from lrt.train import checkpoint as ckpt

    root = run_dir / "checkpoints"
    if checkpoint:
        p = Path(checkpoint)
        if p.exists() and Path(os.path.realpath(p)).parent != Path(os.path.realpath(root)):
            raise LrtError(f"--checkpoint {checkpoint}: not a checkpoint of {run_dir} (it is not in {root}); its "
                           f"weights would be exported under this run's recipe and card: export its own run "
                           f"(`lrt export {p.parent.parent} --checkpoint {checkpoint} --out DIR`)")
    candidates = ckpt.resume_candidates(root, checkpoint or "auto")
    if not candidates:
        raise LrtError(f"{run_dir}: no complete checkpoint to export (train with train.save_every, or use {run_dir}/final)")
    problems = []
    for cp in candidates:
        why = ckpt.verify(cp)
        if why is None and (cp / "ds").is_dir():
            try:
                ckpt.vet_pickles(cp / "ds")
            except ckpt.CheckpointError as e:
                why = str(e)
        if why is None:
            if problems:
                log.warning("exporting %s, an older checkpoint: %s", cp, " | ".join(problems))
            return cp
        problems.append(f"{cp}: {why}")
    raise LrtError(f"no verified checkpoint to export ({len(candidates)} tried): " + " | ".join(problems)
                   + ". Give another one with --checkpoint, or re-train")


def _export_checkpoint(run_dir: Path, cp: Path, r: Recipe, out: Path, checkpoint: str | None, as_trained: bool,
                       adapter_only: bool, dtype: str, selection: str | None, usage_path: str | None) -> Path:
    from lrt.modeling import load_tokenizer
    from lrt.train import checkpoint as ckpt

    tok = load_tokenizer(r)
    from lrt.modeling import load_model

    model = load_model(r, tok)
    from lrt.train.checkpoint import load_trainable_state

    load_trainable_state(model, load_checkpoint_tensors(cp, model))
    model.eval()
    src = f"checkpoint {cp.name} of {run_dir}"
    state = ckpt.read_state(cp)  # the checkpoint's own step and evaluations, not the run's last ones
    card = {"step": state.get("step"), "eval_history": state.get("eval_history") or None,
            "selection": selection or f"chosen with `lrt export --checkpoint {checkpoint}`" if checkpoint
            else selection or "the newest complete checkpoint", "path": usage_path}
    if adapter_only:
        if not hasattr(model, "peft_config"):
            raise LrtError("--adapter-only needs a LoRA run (this run fine-tuned the full model)")
        from lrt.train.zero import gather_on_rank0

        save_adapter(model, gather_on_rank0(model, True), out)
        tok.save_pretrained(str(out))
        save_meta(out, r)
        model_card(out, r, src + " (adapter only)", run_dir=run_dir, **card)
        return out
    merged = merge_lora(model)
    if not as_trained:
        merged = merged.to(getattr(torch, dtype))
    return write_export(merged, tok, r, out, src, run_dir=run_dir, **card)


def check_repo_id(repo_id: str) -> None:
    """A Hub repo id (`org/name`) the Hub accepts; checked before anything is written or sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise LrtError(f"--push-to-hub {repo_id!r}: not a valid Hub repo id ({str(e).splitlines()[0]}); "
                       "use ORG/NAME (letters, digits, '-', '_', '.')") from None


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Upload an export folder to the Hugging Face Hub (`HfApi.create_repo` + one commit).

    Only the files lrt wrote are uploaded (`lrt.export_dir.upload_list`: regular files, no symlinks,
    no stray `.env`); the card's usage snippets name the repo in the uploaded copy only, so a failed
    push leaves the local export as it was. The token comes from the environment (`HF_TOKEN`) or
    huggingface_hub's own login cache; lrt never writes it anywhere. `HF_ENDPOINT` selects another
    Hub (or a local test server)."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from lrt.card import PLACEHOLDER
    from lrt.export_dir import one_line, upload_list

    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise LrtError(f"{folder}: not an exported model (no config.json); run `lrt export RUN_DIR --out DIR` first")
    names = upload_list(folder)
    if constants.HF_HUB_OFFLINE:
        raise LrtError("offline mode (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) is set: unset it to push to the Hub")
    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise LrtError("no Hugging Face token: set HF_TOKEN to a token with write access (or run `hf auth login`)")
    ops = []
    for n in names:
        data = (folder / n).read_bytes()
        if n == "README.md":
            data = data.decode("utf-8").replace(PLACEHOLDER, repo_id).encode("utf-8")
        ops.append(CommitOperationAdd(path_in_repo=n, path_or_fileobj=data))
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        # private=None (not False) without --private: the Hub's (or the organisation's) default visibility
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id=repo_id, operations=ops, repo_type="model",
                                 commit_message=commit_message or f"lrt export ({folder.name})")
    except (HfHubHTTPError, ValueError, OSError) as e:
        raise LrtError(f"push to {repo_id} failed: {one_line(e).replace(token, '***')}") from None
    log.info("pushed %s to %s (%s)", folder, url, getattr(info, "commit_url", info))
    return str(url)


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
    from lrt.card import headline

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
        export_run(trainer.out, out, str(cp), dtype=_unquantised_dtype(r), selection=why)
        if r.model.lora is not None:
            adapter_dir = out / "adapter"
            export_run(trainer.out, adapter_dir, str(cp), adapter_only=True, selection=why)
            from lrt.export_dir import record

            record(out, "full")  # the list of files lrt wrote now includes adapter/
        log.info("final/: step %s (best evaluation) from %s%s", best.get("step"), cp.name,
                 f", adapter in {adapter_dir}" if adapter_dir else "")
    trainer.env.barrier()
    return out


def export_seq_cls(src: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> Path:
    """A pointwise export as a sequence classifier with ONE output: score.weight = W[yes] - W[no], so
    `AutoModelForSequenceClassification` (sentence-transformers' CrossEncoder, vLLM's score API) gives
    logit(yes) - logit(no) at the last non-pad token, the score lrt trained. The decoder is copied as
    it is; the tokenizer goes along, and the pair template in `lrt_seq_cls.json` (no lrt_reranker.json:
    this directory is not a causal LM, `lrt rerank` reads the pointwise export itself)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from lrt.data.pointwise import PointwiseTemplate, yes_no_ids
    from lrt.ranking import load_export_tokenizer

    from lrt.export_dir import check_destination, check_weights, staged

    src, out = Path(src), Path(out)
    check_destination(out, "seq-cls", overwrite, protect=(src,))
    meta = RerankerMeta.load(src)
    if meta.mode != "pointwise":
        raise LrtError(f"{src}: a {meta.mode} export; --to-seq-cls converts pointwise (yes/no) models only")
    tok = load_export_tokenizer(src)
    yes, no = yes_no_ids(tok, PointwiseTemplate.from_dict(meta.template))
    check_weights(src)
    lm = _load_merged_lm(src, getattr(torch, dtype) if dtype else None)
    head = lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise LrtError(f"{src}: the LM head has a bias; a one-row classifier without bias cannot carry it")
    cfg = copy.deepcopy(lm.config)
    cfg.num_labels, cfg.architectures, cfg.tie_word_embeddings = 1, None, False
    cfg.id2label, cfg.label2id = {0: "yes_minus_no"}, {"yes_minus_no": 0}
    if cfg.pad_token_id is None:  # the classifier reads the last non-pad token
        cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    seq = AutoModelForSequenceClassification.from_config(cfg, dtype=lm.dtype)
    if not isinstance(getattr(seq, "score", None), nn.Linear):
        raise LrtError(f"{type(seq).__name__} has no `score` head: --to-seq-cls supports decoder LMs such as Qwen, Llama")
    getattr(seq, seq.base_model_prefix).load_state_dict(getattr(lm, lm.base_model_prefix).state_dict())
    with torch.no_grad():
        seq.score.weight.copy_((head.weight[yes] - head.weight[no])[None, :])
    # vLLM without --chat-template scores `query + document` as one text, not a tokenizer text pair
    seq.config.use_sep_token = False
    # the pair template as the chat template: sentence-transformers (>= 6) renders a (query, document) pair
    # through it, vLLM's score API with `--chat-template DIR/chat_template.jinja`; the classifier's length
    # is the trained one (sentence-transformers truncates to it and keeps the suffix)
    tok.chat_template = score_chat_template(PointwiseTemplate.from_dict(meta.template))
    tok.model_max_length = meta.max_length
    with staged(out, "seq-cls") as tmp:
        seq.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "lrt_seq_cls.json").write_text(json.dumps({"source": str(src), "score": "logit(yes) - logit(no)",
                                                          "template": meta.template}, indent=2), encoding="utf-8")
    return out


def _load_merged_lm(src: Path, dtype: torch.dtype | None) -> nn.Module:
    """The causal LM of an export; a LoRA adapter dir (RUN/final/adapter, `--adapter-only`) is merged
    into an unquantised load of its base first, so the classifier carries the trained weights."""
    from transformers import AutoModelForCausalLM

    if not (src / "adapter_config.json").exists():
        return AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype)
    from peft import AutoPeftModelForCausalLM

    try:
        peft_model = AutoPeftModelForCausalLM.from_pretrained(str(src), dtype=dtype)
    except (OSError, ValueError) as e:
        base = json.loads((src / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        raise LrtError(f"{src}: the adapter's base model {base!r} cannot be loaded ({str(e).splitlines()[0]}); "
                       "convert the merged export (RUN/final) instead") from None
    return merge_lora(peft_model)


def score_chat_template(t: Any) -> str:
    """A Jinja chat template that renders `prefix + body + suffix` of a PointwiseTemplate from the
    `query` and `document` messages of a pair (the roles sentence-transformers and vLLM's score API
    use); a `system` message, if any, replaces the instruction. Literals are JSON strings, which
    Jinja reads as string literals, so no template text is interpreted."""
    import string

    lit = lambda s: "{{- " + json.dumps(s, ensure_ascii=False) + " -}}"  # noqa: E731
    fields = {"instruction": "instruction", "query": "query", "doc": "document"}
    out = ['{%- macro text(role) -%}{%- set c = messages | selectattr("role", "eq", role) | map(attribute="content") '
           '| first -%}{%- if c is string -%}{{- c -}}{%- elif c -%}{%- for p in c if p.type == "text" -%}'
           '{{- p.text -}}{%- endfor -%}{%- endif -%}{%- endmacro -%}',
           '{%- set instruction = text("system") or ' + json.dumps(t.instruction, ensure_ascii=False) + " -%}",
           *(["{{- bos_token -}}"] if getattr(t, "bos", False) else []), lit(t.prefix)]
    for literal, name, spec, conv in string.Formatter().parse(t.body):
        if literal:
            out.append(lit(literal))
        if name is not None:
            if name not in fields or spec or conv:
                raise LrtError(f"pair template body field {{{name}}} cannot be rendered as a chat template "
                               "(use {instruction}, {query}, {doc})")
            out.append("{{- instruction -}}" if name == "instruction" else '{{- text("' + fields[name] + '") -}}')
    out.append(lit(t.suffix))
    return "\n".join(out) + "\n"
