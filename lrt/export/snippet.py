"""The model card's usage snippets: lrt.Reranker, plain transformers (no lrt at inference), rank_llm."""
from __future__ import annotations

from typing import Any


def usage(path: str, family: Any, mode: str, meta: dict[str, Any]) -> list[str]:
    """Snippets: lrt.Reranker, plain transformers (no lrt at inference), rank_llm."""
    t = meta.get("template", {})
    out = ["### lrt", "```python", "from lrt import Reranker", "",
           f"rr = Reranker.from_pretrained(\"{path}\"" + (", mode=\"generate\"" if mode == "generate" else "") + ")",
           "ranked = rr.rerank(\"how do lobsters breathe\", [(\"d1\", \"Lobsters breathe through gills ...\"),",
           "                                                  (\"d2\", \"The lobster roll is a sandwich ...\")])",
           "print(ranked)  # [(docid, score), ...] best first", "```", "",
           f"or `lrt rerank --model {path} --run bm25.trec --queries topics.tsv --corpus corpus.jsonl --out reranked.trec`.", ""]
    if family.pairs:  # one (query, passage) sequence: the sequence-classifier conversion serves it
        return out + [
            "### Plain transformers / sentence-transformers / vLLM",
            f"`lrt export {path} --to-seq-cls --out DIR` writes a one-output `AutoModelForSequenceClassification` "
            "(score row = W[yes] - W[no]) whose chat template renders a (query, passage) pair in the trained template: "
            "`CrossEncoder(DIR).predict(pairs)` (sentence-transformers >= 6; sigmoid by default, "
            "`activation_fn=torch.nn.Identity()` for logit(yes) - logit(no)), or "
            "`vllm serve DIR --runner pooling --chat-template DIR/chat_template.jinja` for vLLM's score/rerank API.", "",
            "### rank_llm", "rank_llm's listwise prompts do not apply to a pointwise (yes/no) model.", ""]
    scheme = t.get("identifiers", "alpha")
    out += ["### Plain transformers" + (" (first-token scoring)" if mode == "first_token" else " (generation)"),
            "The prompt is the one it was trained with and the one `lrt.Reranker` builds, token for token "
            "(`lrt_reranker.json`: the template, the per-passage budget, max_length); no lrt needed at inference. "
            f"It ranks one window: lrt slides windows of {meta.get('window')} (stride {meta.get('stride')}) over "
            "longer lists.", "",
            "```python", *plain_prompt_code(path, t, meta, scheme), *TAILS[mode], "```", ""]
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


LABELS = {"alpha": "[chr(ord('A') + i) for i in range(len(passages))]",
          "numeric": "[str(i + 1) for i in range(len(passages))]",
          "special": "[f'<id_{i + 1}>' for i in range(len(passages))]"}
ESCAPES = {  # lrt.data.prompts.escape_passage
    "lrt": ["    s = re.sub(r'\\[([A-Za-z]|\\d{1,4})\\]', r'(\\1)', s)",
            "    return re.sub(r'<id_(\\d+)>', r'(id \\1)', s)"],
    "rank_llm": ["    return re.sub(r'\\[(\\d+)\\]', r'(\\1)', s)"],
}
# lrt.data.untrusted: the query and passages are marked in the rendered prompt; a control token that lands
# in them is re-encoded as text (the stretch between the template's own control tokens, split_special_tokens)
RENDER_AND_ENCODE = """

controls = {str(a.content): i for i, a in tok.added_tokens_decoder.items() if i != tok.unk_token_id and str(a.content)
            and (a.special or re.fullmatch(r'<[^\\s<>]+>|\\[[^\\s\\[\\]]+\\]', str(a.content)))}
ctrl = set(controls.values())


def render(q, ps):  # the prompt, and the character spans of the query/passages holding a control-token string
    user = [q, *ps]
    risky = {i for i, s in enumerate(user) if any(c in s for c in controls)}
    if not risky:
        return chat(q, ps), []
    nonce = secrets.token_hex(6)
    marked = [f'\\ue000{nonce}:{i}\\ue001' if i in risky else s for i, s in enumerate(user)]
    rendered = chat(marked[0], marked[1:])
    text, spans, last = '', [], 0
    for m in re.finditer('\\ue000' + nonce + r':(\\d+)\\ue001', rendered):
        text += rendered[last:m.start()]
        spans.append((len(text), len(text) + len(user[int(m.group(1))])))
        text, last = text + user[int(m.group(1))], m.end()
    return text + rendered[last:], spans


def encode(text, spans):  # token ids and offsets; no control token ever comes from the query or a passage
    inside = lambda a, b: any(s < b and a < e for s, e in spans)

    def as_text(g0, g1):  # text[g0:g1] as text; an added token that is not special is cut after its first character
        enc = tok(text[g0:g1], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        offs = [(a + g0, b + g0) for a, b in enc['offset_mapping']]
        for i, (a, b) in zip(enc['input_ids'], offs):
            if i in ctrl and inside(a, b):
                (i1, o1), (i2, o2) = as_text(g0, a + 1), as_text(a + 1, g1)
                return i1 + i2, o1 + o2
        return list(enc['input_ids']), offs

    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc['input_ids']), [tuple(o) for o in enc['offset_mapping']]
    bad = {k for k, i in enumerate(ids) if i in ctrl and inside(*offs[k])}
    if bad:
        keep = [k for k, i in enumerate(ids) if i in ctrl and k not in bad]
        new_ids, new_offs = [], []
        for p, q in zip([-1, *keep], [*keep, len(ids)]):
            if p >= 0:
                new_ids, new_offs = new_ids + [ids[p]], new_offs + [offs[p]]
            if bad.isdisjoint(range(p + 1, q)):
                new_ids, new_offs = new_ids + ids[p + 1:q], new_offs + offs[p + 1:q]
            else:
                i2, o2 = as_text(offs[p][1] if p >= 0 else 0, offs[q][0] if q < len(ids) else len(text))
                new_ids, new_offs = new_ids + i2, new_offs + o2
        ids, offs = new_ids, new_offs
@BOS@    return ids, offs


q = escape(query.strip())
answer = ' > '.join(f'[{l}]' for l in labels) + (tok.eos_token or '')  # the budget makes room for a full answer
budget = t['max_passage_tokens']
while True:  # every passage cut to `budget` tokens; all cut shorter until prompt + answer fit max_length
    prompt, spans = render(q, [escape(cut(p, budget)) for p in passages])
    ids, offs = encode(prompt + answer, spans)
    if len(ids) <= meta['max_length']:
        break
    if budget <= 8:
        raise ValueError(f"{len(ids)} tokens exceed max_length {meta['max_length']} with passages cut to 8 tokens")
    budget = max(8, budget - max(1, -(-(len(ids) - meta['max_length']) // len(passages))))
"""
BOS = ("    if not text.startswith(tok.bos_token):  # trained with BOS prepended, as a token\n"
       "        ids, offs = [tok.bos_token_id] + ids, [(0, 0)] + offs\n")
TAILS = {
    "first_token": [
        "pos, label_ids = len(prompt), []  # each identifier is one token; its id is read off the tokenized answer",
        "for l in labels:",
        "    label_ids.append(ids[offs.index((pos + 1, pos + 1 + len(l)))])",
        "    pos += len(l) + 5  # '[l] > '",
        "input_ids = ids[:offs.index((len(prompt) + 1, len(prompt) + 1 + len(labels[0])))]  # the prompt and '['",
        "with torch.no_grad():",
        "    logits = model(input_ids=torch.tensor([input_ids], device=model.device)).logits[0, -1].float()",
        "scores = logits[label_ids]  # the next token is the first-ranked identifier",
        "print([passages[i] for i in sorted(range(len(passages)), key=lambda i: -float(scores[i]))])",
    ],
    "generate": [
        "input_ids = ids[:next(k for k, (a, b) in enumerate(offs) if b > len(prompt) and b > a)]  # the prompt",
        "with torch.no_grad():",
        "    gen = model.generate(torch.tensor([input_ids], device=model.device), do_sample=False,",
        "                         max_new_tokens=len(ids) - len(input_ids) + 16)",
        "print(tok.decode(gen[0, len(input_ids):], skip_special_tokens=True))  # e.g. [B] > [A] > [C]",
    ],
}


def plain_prompt_code(path: str, t: dict[str, Any], meta: dict[str, Any], scheme: str) -> list[str]:
    """The snippet up to the encoded prompt: lrt's renderer (lrt.data.prompts, lrt.data.untrusted) written
    out for this export's template, so the card's code builds the same tokens as `lrt.Reranker`."""
    user_lines = ["    fmt = {'num': len(ps), 'query': q, 'example': f'[{labels[1]}] > [{labels[0]}]'}",
                  "    user = (t['prefix'].format(**fmt) + ''.join(t['passage'].format(id=l, text=p) "
                  "for l, p in zip(labels, ps))",
                  "            + t['suffix'].format(**fmt))"]
    msgs = "[{'role': 'user', 'content': user}]"
    if t.get("system") and t.get("system_in_user"):
        user_lines.append("    user = t['system'] + '\\n ' + user")
    elif t.get("system"):
        msgs = "[{'role': 'system', 'content': t['system']}, {'role': 'user', 'content': user}]"
    if t.get("chat_template", "auto") != "none":
        user_lines.append(f"    return tok.apply_chat_template({msgs}, tokenize=False, add_generation_prompt=True)")
    else:
        user_lines.append(f"    return '\\n\\n'.join(m['content'] for m in {msgs}) + '\\n\\n'")
    code = RENDER_AND_ENCODE.replace("@BOS@", BOS if meta.get("bos") == "prepended" else "")
    return ["import json, os, re, secrets, torch", "from huggingface_hub import hf_hub_download",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f"path = \"{path}\"",
            "tok = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForCausalLM.from_pretrained(path, dtype=\"auto\").eval()",
            "meta = json.load(open(f'{path}/lrt_reranker.json' if os.path.isdir(path) "
            "else hf_hub_download(path, 'lrt_reranker.json')))",
            "t = meta['template']",
            "query = \"how do lobsters breathe\"",
            "passages = [\"The lobster roll is a sandwich.\", \"Lobsters breathe through gills.\", "
            "\"Gills take oxygen from water.\"]",
            f"labels = {LABELS.get(scheme, LABELS['alpha'])}", "", "",
            f"def escape(s):  # identifier-like text ([B], [12], <id_3>) must not pose as an identifier "
            f"({t.get('escape', 'lrt')} style)", *ESCAPES[t.get("escape", "lrt")], "", "",
            "def cut(s, budget):  # the first `budget` tokens, sliced at a character offset (a passage with a "
            "title is f'{title}: {text}')",
            "    offs = tok(s, add_special_tokens=False, return_offsets_mapping=True, "
            "split_special_tokens=True)['offset_mapping']",
            "    return s if len(offs) <= budget else s[:offs[budget - 1][1]].rstrip()", "", "",
            "def chat(q, ps):  # the chat-templated prompt of one window",
            *user_lines, *code.splitlines()]
