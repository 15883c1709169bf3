"""The model card's usage snippets: lrt.Reranker, plain transformers (no lrt at inference), rank_llm."""
from __future__ import annotations

from typing import Any


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
