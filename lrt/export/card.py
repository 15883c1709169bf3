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
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from lrt.config import Recipe
from lrt.export.snippet import usage

log = logging.getLogger("lrt")

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
    """(nDCG@10 key, judgement suffix) of an evaluation record: the one headline key the trainer,
    select_best and the console use (lrt.train.evaluation.headline_keys)."""
    from lrt.train.evaluation import headline_keys

    key, _ = headline_keys(rec)
    return (key, key.removeprefix("eval/nDCG@10")) if key else (None, "")


def trained_mode(r: Recipe) -> tuple[str, str]:
    """(lrt.Reranker mode to use, one sentence on what the objective trained): the family says it."""
    from lrt.families import of_recipe

    return of_recipe(r).card_mode(r)


def initialisation(r: Recipe) -> tuple[str, list[str]]:
    """(how the card's first sentence names the start point, the Training section's lines): the weights
    actually started from (pretrained `name_or_path`, or random weights built from its config with
    `model.init: from_config`), the config overrides and the tokenizer actually used."""
    m = r.model
    tok = m.tokenizer or m.name_or_path
    over = f" with config overrides {json.dumps(m.config_overrides, sort_keys=True)}" if m.config_overrides else ""
    lora = f" + LoRA r={m.lora.r}" if m.lora else ""
    quant = f" (QLoRA {m.quantization.bits}-bit {m.quantization.quant_type})" if m.quantization else ""
    tok_line = f"- tokenizer: `{tok}`" + ("" if m.tokenizer else " (the model's own)")
    if m.init == "from_config":
        return (f"trained with lrt from randomly initialised weights (`model.init: from_config`: the architecture of "
                f"`{m.name_or_path}`{over}, none of its pretrained weights) with the tokenizer of `{tok}`",
                [f"- initialisation: random weights (`model.init: from_config`), architecture of `{m.name_or_path}`{over}"
                 + lora, tok_line])
    first = f"fine-tuned with lrt from `{m.name_or_path}`" + (f" (pretrained weights{over})" if over else "")
    if m.tokenizer:
        first += f" with the tokenizer of `{m.tokenizer}`"
    base = f"- base model: `{m.name_or_path}`" + (f" (pretrained weights{over})" if over else "") + lora + quant
    return first, [base, tok_line]


def passage_stats(run_dir: Path) -> dict[str, Any] | None:
    """The per-passage truncation the run recorded (`run_summary.json` `passages`), or None: the card
    reports only what the run measured."""
    f = Path(run_dir) / "run_summary.json"
    try:
        s = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); the model card omits the passage statistics", f, e)
        return None
    ps = s.get("passages") if isinstance(s, dict) else None
    return ps if isinstance(ps, dict) and ps else None


def passage_line(ps: dict[str, Any], r: Recipe) -> str | None:
    """`- passages: 22000 (all); tokens per passage p50 61, p95 140; 57.8% cut at prompt.max_passage_tokens=48`,
    with only the figures the run recorded."""
    parts = []
    n, sampled = ps.get("passages"), ps.get("sampled")
    if n is not None:
        parts.append(f"{n} training passages" + ("" if sampled is None else " (all)" if sampled == n
                                                 else f" ({sampled} sampled)"))
    toks = [f"p{q} {ps[f'tokens_p{q}']}" for q in (50, 95) if ps.get(f"tokens_p{q}") is not None]
    if toks:
        parts.append("tokens per passage " + ", ".join(toks))
    if isinstance(ps.get("cut_share"), (int, float)):
        parts.append(f"{100 * ps['cut_share']:.1f}% cut at prompt.max_passage_tokens="
                     f"{ps.get('max_passage_tokens', r.prompt.max_passage_tokens)}")
    return "- passages: " + "; ".join(parts) if parts else None


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
    from lrt.families import of_recipe

    family = of_recipe(r)
    mode, mode_text = family.card_mode(r)
    name = run_dir.name
    # a model built from a config (random weights) is not a fine-tune of the Hub model it borrows the shape of
    base = _hub_id(r.model.name_or_path) if r.model.init == "pretrained" else None
    start, init_lines = initialisation(r)
    datasets = [d for d in dict.fromkeys(filter(None, (_hub_id(r.data.train), _hub_id(r.eval.data or r.data.eval))))]
    tags = family.card_tags(mode)
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
                "task": {"type": "text-ranking", "name": f"{family.card_kind.capitalize()} passage reranking"}, "dataset": ds, "metrics": metrics}]}]
    w = meta.get("window") or r.eval.window or r.data.window
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {name}", "",
             f"A {family.card_kind} reranker {start}" + (f" (LoRA r={r.model.lora.r}, merged)" if r.model.lora else "")
             + ".", "",
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
    ps = passage_stats(run_dir)
    lines += ["## Training", "", *init_lines,
              f"- training data: `{r.data.train}`" + (f" ({n_lists} lists)" if n_lists is not None else ""),
              *filter(None, [passage_line(ps, r) if ps else None]),
              "- objective: " + " + ".join(f"{t.weight:g} x {t.name}" + (f" {json.dumps(t.params)}" if t.params else "")
                                           for t in r.loss),
              f"- prompt: preset `{r.prompt.preset}`, identifiers `{r.identifier_scheme()}`, window {w}, "
              f"max_length {r.data.max_length}",
              f"- optimisation: lr {r.train.lr:g} ({r.train.schedule}, warmup {r.train.warmup_steps}), "
              f"batch {r.train.per_device_batch_size} per device x {r.train.grad_accum} accumulation, {r.train.precision}",
              f"- training loss at step {at.get('step')} (mean over the last logging interval): {json.dumps(loss)}"
              if at else "- no training records", ""]
    lines += ["## Usage", ""] + usage(path, family, mode, meta)
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
