"""`lrt export EXPORT --to-seq-cls --out DIR`: a pointwise export as a one-output sequence classifier."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrt.errors import LrtError
from lrt.export.model import merge_lora
from lrt.ranking import RerankerMeta


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

    from lrt.export.dir import check_destination, staged
    from lrt.io.weights import check_weights

    src, out = Path(src), Path(out)
    check_destination(out, "seq-cls", overwrite, protect=(src,))
    meta = RerankerMeta.load(src)
    from lrt.families import of_meta

    if not of_meta(meta).pairs:  # the classifier scores one (query, passage) sequence: a pair family's export
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
