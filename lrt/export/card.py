"""The model card (README.md) of an exported reranker, in the Hugging Face format.

Why: a checkpoint on the Hub is judged by its card. It must say what the weights are (which step
and why that one), how well they rank and on what, how they were trained (the mode actually
trained, not a blanket "FIRST"), and how to use them with lrt, plain transformers or rank_llm.
YAML metadata (`base_model`, `library_name`, `tags`, `datasets`, `pipeline_tag`, `model-index`)
lets the Hub index it. Metrics are those of the exported step: an export of an older checkpoint
lists that checkpoint's evaluations, never a later step's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from lrt.config import Recipe
from lrt.export.snippet import usage

PLACEHOLDER = "path/to/this/model"
JUDGEMENTS = {
    "": "trec_eval, against the full qrels of each query",
    "_candidates": "against the candidates' own relevance grades: only the listed candidates are judged",
    "_teacher": "with the teacher's ranking as graded gains: agreement with the teacher, no human judgements",
}


def read_metrics(run_dir: Path, upto: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training records, evaluation records) of metrics.jsonl, one per step (the last write wins
    after a resume), only steps <= `upto` when given."""
    train: dict[int, dict[str, Any]] = {}
    ev: dict[int, dict[str, Any]] = {}
    f = Path(run_dir) / "metrics.jsonl"
    if f.exists():
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            s = rec.get("step")
            if not isinstance(s, int) or (upto is not None and s > upto):
                continue
            if "loss" in rec:
                train[s] = rec
            elif any(k.startswith("eval/") for k in rec):
                ev[s] = rec
    return [train[s] for s in sorted(train)], [ev[s] for s in sorted(ev)]


def headline(rec: dict[str, Any]) -> tuple[str | None, str]:
    """(nDCG@10 key, judgement suffix) of an evaluation record."""
    for sfx in ("", "_candidates", "_teacher"):
        if f"eval/nDCG@10{sfx}" in rec:
            return f"eval/nDCG@10{sfx}", sfx
    return None, ""


def trained_mode(r: Recipe) -> tuple[str, str]:
    """(lrt.Reranker mode to use, one sentence on what the objective trained)."""
    scored = [t.name for t in r.loss if t.name != "lm"]  # every non-LM term scores first-token logits
    from lrt.families import of_recipe

    fam = of_recipe(r)
    if fam.pairs:  # the family says it (lrt.families); the listwise text stays here until the card asks it too
        return fam.card_mode(r)
    lm = [t.name for t in r.loss if t.name == "lm"]
    if scored:
        s = (f"first-token scoring (FIRST-style): the logits of the first identifier token after `[` score every "
             f"candidate in one forward pass, trained with {', '.join(scored)}")
        if lm:
            s += "; the language-modelling loss also trains it to generate the whole permutation"
        return "first_token", s + "."
    s = ("listwise generation: it writes the whole permutation (`[B] > [A] > ...`), trained with the "
         "language-modelling loss on the teacher's permutations")
    if r.identifier_scheme() in ("alpha", "special"):
        s += ("; its identifiers are single tokens, so first-token scoring (`mode=\"first_token\"`) also works, "
              "but it was not trained directly")
    return "generate", s + "."


def _hub_id(s: str | None) -> str | None:
    """`org/name` when `s` looks like a Hub id (not a local file or directory)."""
    if not s or s.startswith((".", "/", "~")) or Path(s).exists():
        return None
    s = s.removeprefix("hf://datasets/").removeprefix("hf:")
    return s if re.fullmatch(r"[\w.-]+/[\w.-]+", s) and not re.search(r"\.(jsonl?|parquet|txt|tsv|csv)$", s) else None


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def eval_table(evals: Sequence[dict[str, Any]], exported_step: int | None) -> list[str]:
    if not evals:
        return ["No evaluation was run (set `eval.every` / `eval.at_end` and an eval split)."]
    key, _ = headline(evals[-1])
    if key is None:
        return []
    init = key.replace("eval/", "eval/initial_")
    name = key.removeprefix("eval/")
    rows = [f"| step | {name} | initial order | gain | queries |", "|---:|---:|---:|---:|---:|"]
    for e in evals:
        v, i = e.get(key), e.get(init)
        gain = f"{v - i:+.4f}" if isinstance(v, float) and isinstance(i, float) else ""
        mark = " **(exported)**" if e.get("step") == exported_step else ""
        rows.append(f"| {e.get('step')}{mark} | {_fmt(v)} | {_fmt(i)} | {gain} | {e.get('eval/queries', '')} |")
    return rows


def card_text(r: Recipe, run_dir: Path, source: str, *, step: int | None = None, n_lists: int | None = None,
              selection: str | None = None, eval_history: Sequence[dict[str, Any]] | None = None,
              meta: dict[str, Any] | None = None, path: str = "path/to/this/model") -> str:
    """The card's markdown (YAML metadata first)."""
    meta = meta or {}
    train_recs, evals = read_metrics(run_dir, upto=step)
    if eval_history:  # the checkpoint's own record wins over metrics.jsonl (a later run may have rewritten it)
        by_step = {e["step"]: e for e in evals}
        by_step.update({e["step"]: e for e in eval_history if step is None or e.get("step", 0) <= step})
        evals = [by_step[s] for s in sorted(by_step)]
    at = train_recs[-1] if train_recs else {}
    exported_eval = evals[-1] if evals else None  # at the exported step, else the latest before it
    mode, mode_text = trained_mode(r)
    name = run_dir.name
    base = _hub_id(r.model.name_or_path)
    datasets = [d for d in dict.fromkeys(filter(None, (_hub_id(r.data.train), _hub_id(r.eval.data or r.data.eval))))]
    tags = ["lrt", "reranker", "pointwise-reranking" if mode == "pointwise" else "listwise-reranking", "learning-to-rank"]
    tags += [{"first_token": "first-token-scoring", "generate": "listwise-generation"}[mode]] if mode != "pointwise" else []
    tags += [t.name for t in r.loss if t.name not in tags]
    if r.model.lora:
        tags.append("lora")
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    front.update({"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags})
    if datasets:
        front["datasets"] = datasets
    eval_src = r.eval.data or r.data.eval
    if exported_eval is not None:
        key, sfx = headline(exported_eval)
        if key is not None:
            init = exported_eval.get(key.replace("eval/", "eval/initial_"))
            ds = {"name": f"{Path(eval_src).name if eval_src else 'eval'} ({exported_eval.get('eval/queries', '?')} queries)",
                  "type": _hub_id(eval_src) or "local"}
            at_step = "" if exported_eval.get("step") == step or step is None else f", evaluated at step {exported_eval.get('step')}"
            metrics = [{"type": "ndcg_at_10", "value": round(float(exported_eval[key]), 4),
                        "name": f"nDCG@10 ({JUDGEMENTS[sfx]}{at_step})", "verified": False}]
            if isinstance(init, float):
                metrics.append({"type": "ndcg_at_10", "value": round(init, 4),
                                "name": "nDCG@10 of the initial (first-stage) order, same queries", "verified": False})
            front["model-index"] = [{"name": name, "results": [{
                "task": {"type": "text-ranking", "name": "Listwise passage reranking"}, "dataset": ds, "metrics": metrics}]}]
    w = meta.get("window") or r.eval.window or r.data.window
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {name}", "",
             f"A {'pointwise' if mode == 'pointwise' else 'listwise'} reranker fine-tuned with lrt from `{r.model.name_or_path}`"
             + (f" (LoRA r={r.model.lora.r}, merged)" if r.model.lora else "") + ".", "",
             f"**Reranking mode trained:** {mode_text} Rerank with `mode=\"{mode}\"`.", "",
             "## Which weights", "",
             f"- exported from: {source}" + (f" (step {step})" if step is not None and f"step {step})" not in source else ""),
             f"- why this step: {selection or 'the last step of training'}", ""]
    lines += ["## Evaluation", ""]
    if exported_eval is not None and headline(exported_eval)[0]:
        key, sfx = headline(exported_eval)
        lines += [f"Measured on `{eval_src}` ({exported_eval.get('eval/queries', '?')} queries), sliding window "
                  f"{w}, stride {meta.get('stride') or r.eval.stride or ''}; nDCG@10 {JUDGEMENTS[sfx]}. "
                  "The initial order is the candidates' order in the data (the first stage).", ""]
    lines += eval_table(evals, step if step is not None else (evals[-1].get("step") if evals else None)) + [""]
    loss = {k: round(v, 5) for k, v in at.items() if k.startswith("loss") and isinstance(v, float)}
    lines += ["## Training", "",
              f"- base model: `{r.model.name_or_path}`" + (f" + LoRA r={r.model.lora.r}" if r.model.lora else "")
              + (f" (QLoRA {r.model.quantization.bits}-bit {r.model.quantization.quant_type})" if r.model.quantization else ""),
              f"- training data: `{r.data.train}`" + (f" ({n_lists} lists)" if n_lists is not None else ""),
              "- objective: " + " + ".join(f"{t.weight:g} x {t.name}" + (f" {json.dumps(t.params)}" if t.params else "")
                                           for t in r.loss),
              f"- prompt: preset `{r.prompt.preset}`, identifiers `{r.identifier_scheme()}`, window {w}, "
              f"max_length {r.data.max_length}",
              f"- optimisation: lr {r.train.lr:g} ({r.train.schedule}, warmup {r.train.warmup_steps}), "
              f"batch {r.train.per_device_batch_size} per device x {r.train.grad_accum} accumulation, {r.train.precision}",
              f"- training loss at step {at.get('step')} (mean over the last logging interval): {json.dumps(loss)}"
              if at else "- no training records", ""]
    lines += ["## Usage", ""] + usage(path, mode, meta)
    resolved = run_dir / "recipe.resolved.yaml"
    lines += ["## Training recipe", "", "```yaml",
              (resolved.read_text(encoding="utf-8") if resolved.exists()
               else yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False)).rstrip(), "```", ""]
    return "\n".join(lines)


def write_card(out: Path, r: Recipe, source: str, n_lists: int | None = None, run_dir: Path | None = None, *,
               step: int | None = None, selection: str | None = None,
               eval_history: Sequence[dict[str, Any]] | None = None, path: str | None = None) -> Path:
    """`path`: what the usage snippets load (the Hub repo id when pushing; a placeholder otherwise)."""
    meta_file = out / "lrt_reranker.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
    text = card_text(r, Path(run_dir or r.output_dir), source, step=step, n_lists=n_lists, selection=selection,
                     eval_history=eval_history, meta=meta, path=path or PLACEHOLDER)
    (out / "README.md").write_text(text, encoding="utf-8")
    return out / "README.md"
