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


def usage(path: str, mode: str, meta: dict[str, Any]) -> list[str]:
    """Snippets: lrt.Reranker, plain transformers (no lrt at inference), rank_llm."""
    t = meta.get("template", {})
    out = ["### lrt", "```python", "from lrt import Reranker", "",
           f"rr = Reranker.from_pretrained(\"{path}\"" + (", mode=\"generate\"" if mode == "generate" else "") + ")",
           "ranked = rr.rerank(\"how do lobsters breathe\", [(\"d1\", \"Lobsters breathe through gills ...\"),",
           "                                                  (\"d2\", \"The lobster roll is a sandwich ...\")])",
           "print(ranked)  # [(docid, score), ...] best first", "```", "",
           f"or `lrt rerank --model {path} --run bm25.trec --queries topics.tsv --corpus corpus.jsonl --out reranked.trec`.", ""]
    if mode == "pointwise":
        return out + [
            "### Plain transformers / sentence-transformers / vLLM",
            f"`lrt export {path} --to-seq-cls --out DIR` writes a one-output `AutoModelForSequenceClassification` "
            "(score row = W[yes] - W[no]) whose chat template renders a (query, passage) pair in the trained template: "
            "`CrossEncoder(DIR).predict(pairs)` (sentence-transformers >= 6; sigmoid by default, "
            "`activation_fn=torch.nn.Identity()` for logit(yes) - logit(no)), or "
            "`vllm serve DIR --runner pooling --chat-template DIR/chat_template.jinja` for vLLM's score/rerank API.", "",
            "### rank_llm", "rank_llm's listwise prompts do not apply to a pointwise (yes/no) model.", ""]
    scheme = t.get("identifiers", "alpha")
    labels = {"alpha": "[chr(ord('A') + i) for i in range(len(passages))]",
              "numeric": "[str(i + 1) for i in range(len(passages))]",
              "special": "[f'<id_{i + 1}>' for i in range(len(passages))]"}.get(scheme, "...")
    sys_lines = []
    if t.get("system"):
        sys_lines = (["user = t['system'] + '\\n ' + user"] if t.get("system_in_user")
                     else ["msgs = [{'role': 'system', 'content': t['system']}] + msgs"])
    chat = t.get("chat_template", "auto") != "none"
    out += ["### Plain transformers" + (" (first-token scoring)" if mode == "first_token" else " (generation)"),
            "The prompt is the one it was trained with (`lrt_reranker.json`); no lrt needed at inference.", "",
            "```python", "import json, torch", "from huggingface_hub import hf_hub_download",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f"path = \"{path}\"",
            "tok = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForCausalLM.from_pretrained(path, dtype=\"auto\").eval()",
            "meta_file = f\"{path}/lrt_reranker.json\" if __import__('os').path.isdir(path) else hf_hub_download(path, \"lrt_reranker.json\")",
            "t = json.load(open(meta_file))[\"template\"]",
            "query = \"how do lobsters breathe\"",
            "passages = [\"The lobster roll is a sandwich.\", \"Lobsters breathe through gills.\", \"Gills take oxygen from water.\"]",
            f"labels = {labels}",
            "fmt = {'num': len(passages), 'query': query, 'example': f'[{labels[1]}] > [{labels[0]}]'}",
            "user = (t['prefix'].format(**fmt) + ''.join(t['passage'].format(id=l, text=p) for l, p in zip(labels, passages))",
            "        + t['suffix'].format(**fmt))",
            "msgs = [{'role': 'user', 'content': user}]", *sys_lines]
    if chat:
        out.append("prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)")
    else:
        out.append("prompt = '\\n\\n'.join(m['content'] for m in msgs) + '\\n\\n'")
    if meta.get("bos") == "prepended":
        out.append("prompt = tok.bos_token + prompt  # trained with BOS prepended")
    if mode == "first_token":
        out += ["ids = tok(prompt + '[', return_tensors='pt', add_special_tokens=False)",
                "n = ids.input_ids.shape[1]",
                "label_ids = [tok(prompt + '[' + l, add_special_tokens=False).input_ids[n] for l in labels]",
                "with torch.no_grad():",
                "    logits = model(**ids).logits[0, -1]  # the next token is the first-ranked identifier",
                "scores = logits[label_ids].float()",
                "print([passages[i] for i in scores.argsort(descending=True)])", "```", ""]
    else:
        out += ["ids = tok(prompt, return_tensors='pt', add_special_tokens=False)",
                "with torch.no_grad():",
                "    gen = model.generate(**ids, max_new_tokens=8 * len(passages), do_sample=False)",
                "print(tok.decode(gen[0, ids.input_ids.shape[1]:], skip_special_tokens=True))  # e.g. [2] > [1]",
                "```", ""]
    out += ["### rank_llm"]
    serving = meta.get("rank_llm")
    if serving:
        alpha = scheme == "alpha"
        tmpl = "rank_zephyr_alpha_template.yaml" if alpha else "rank_zephyr_template.yaml"
        out += [f"Trained with a rank_llm prompt: {serving}.", "", "```python",
                "from importlib.resources import files",
                "from rank_llm.data import Candidate, Query, Request",
                "from rank_llm.rerank import Reranker",
                "from rank_llm.rerank.listwise import RankListwiseOSLLM", "",
                f"coordinator = RankListwiseOSLLM(model=\"{path}\", "
                f"prompt_template_path=files(\"rank_llm.rerank.prompt_templates\") / \"{tmpl}\",",
                f"                                context_size={meta.get('max_length')}, window_size={meta.get('window')}, "
                f"stride={meta.get('stride')}, use_alpha={alpha}" + (", use_logits=True" if alpha and mode == "first_token" else "") + ")",
                "req = Request(query=Query(text=\"how do lobsters breathe\", qid=\"q1\"),",
                "              candidates=[Candidate(docid=\"d1\", score=1.0, doc={\"contents\": \"Lobsters breathe ...\"})])",
                "print(Reranker(coordinator).rerank_batch([req]))", "```",
                "(rank_llm runs on vLLM with a GPU; this snippet was not run by lrt's tests.)", ""]
    else:
        out += ["This model was trained with lrt's own prompt, not one of rank_llm's templates, so rank_llm would "
                "prompt it differently from training. Train with `prompt.preset=rank_llm` (alpha identifiers, "
                "first-token logits) or `rank_llm_numeric` to serve the result with rank_llm unchanged.", ""]
    return out


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
