"""The one prompt renderer shared by training, data-prep teachers and reranking.

Keeping a single renderer means the prompt cannot drift between the data a model is trained on,
the prompts a teacher labels, and the prompts the exported reranker sees (a known anchor bug).
Layout (FIRST / RankGPT): system message, a prefix naming the query, one `[ID] passage` line per
candidate, a suffix; rendered through the tokenizer's chat template; the target is
`[C] > [A] > ...` followed by EOS.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Sequence

from lrt.data.untrusted import PromptText, encode_text, fill
from lrt.errors import LrtError

Scheme = Literal["alpha", "numeric", "special"]

ALPHA_MAX = 26

FIRST_SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query."
)
_SUFFIX = (
    "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. "
    "All the passages should be included and listed using identifiers, in descending order of relevance. "
    "The output format should be [] > [], e.g., {example}, "
    "Only respond with the ranking results, do not say any word or explain."
)
RANK_LLM_SYSTEM = FIRST_SYSTEM.rstrip(".")
_RANK_LLM_SUFFIX = (
    "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. "
    "All the passages should be included and listed using identifiers, in descending order of relevance. "
    "The output format should be [] > [], e.g., {example}, Answer concisely and directly and only respond "
    "with the ranking results, do not say any word or explain."
)
PRESETS: dict[str, dict[str, Any]] = {
    # FIRST / RankZephyr-alpha (first-anchor.md section 2).
    "first_alpha": {
        "system": FIRST_SYSTEM,
        "prefix": "I will provide you with {num} passages, each indicated by a alphabetical identifier []. "
        "Rank the passages based on their relevance to the search query: {query}.\n",
        "suffix": _SUFFIX,
        "identifiers": "alpha",
    },
    # RankZephyr / fullrank numeric identifiers (fullrank-ltr-eval-anchor.md A.2).
    "rankgpt_numeric": {
        "system": FIRST_SYSTEM,
        "prefix": "I will provide you with {num} passages, each indicated by a numerical identifier []. "
        "Rank the passages based on their relevance to the search query: {query}.\n",
        "suffix": _SUFFIX,
        "identifiers": "numeric",
    },
    # rank_llm's FIRST template, byte for byte (rank_llm 0.25 `rerank/prompt_templates/
    # rank_zephyr_alpha_template.yaml`, what `RankListwiseOSLLM(use_alpha=True)` serves): no period
    # after the system text, "an alphabetical", "Answer concisely and directly ...", no newline at the
    # end. Checked against the installed package in tests/test_rank_llm_prompt.py.
    "rank_llm": {
        "system": RANK_LLM_SYSTEM,
        "prefix": "I will provide you with {num} passages, each indicated by an alphabetical identifier []. "
        "Rank the passages based on their relevance to the search query: {query}.\n",
        "suffix": _RANK_LLM_SUFFIX.replace("{example}", "[B] > [A]"),
        "identifiers": "alpha",
        "escape": "rank_llm",
    },
    # rank_llm's numeric template (`rank_zephyr_template.yaml`, use_alpha=False), byte for byte.
    "rank_llm_numeric": {
        "system": RANK_LLM_SYSTEM,
        "prefix": "I will provide you with {num} passages, each indicated by a numerical identifier []. "
        "Rank the passages based on their relevance to the search query: {query}.\n",
        "suffix": _RANK_LLM_SUFFIX.replace("{example}", "[2] > [1]"),
        "identifiers": "numeric",
        "escape": "rank_llm",
    },
    # Compact template for tiny demo models: same structure, far fewer tokens.
    "compact": {
        "system": None,
        "prefix": "Query: {query}\nPassages:\n",
        "suffix": "Query: {query}\nRanking:",
        "identifiers": "alpha",
    },
}


@dataclass(frozen=True)
class PromptTemplate:
    """Everything that decides the exact prompt text; saved with every exported model."""

    system: str | None
    prefix: str
    suffix: str
    identifiers: Scheme = "alpha"
    passage: str = "[{id}] {text}\n"
    max_passage_tokens: int = 300
    chat_template: Literal["auto", "none"] = "auto"
    system_in_user: bool = False  # fold the system text into the user turn (templates without a system role)
    # BOS as the model is served: "auto" puts the tokenizer's BOS token first when the tokenizer adds
    # one to text (HF `tokenizer(text)`, vLLM text prompts) and the rendered prompt does not already
    # start with it (zephyr: yes; Mistral-v0.3, whose template writes <s>: no, never twice);
    # "always" / "never" force it. Applied by `encode_prompt`, the one encoder of rendered prompts.
    bos: Literal["auto", "always", "never"] = "auto"
    # identifier-like text in passages and queries: "lrt" rewrites [X], [12] and <id_k>; "rank_llm"
    # only [12] -> (12), as rank_llm does (the rank_llm presets, so prompts match it byte for byte)
    escape: Literal["lrt", "rank_llm"] = "lrt"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PromptTemplate":
        if name not in PRESETS:
            raise LrtError(f"unknown prompt preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptTemplate":
        return cls(**d)

    def with_(self, **kw: Any) -> "PromptTemplate":
        return replace(self, **kw)


def rank_llm_serving(template: PromptTemplate, window: int, stride: int, max_length: int) -> str | None:
    """How rank_llm serves a model trained with a `rank_llm*` preset under the same prompt, or None."""
    for name in ("rank_llm", "rank_llm_numeric"):
        p = PRESETS[name]
        if all(getattr(template, k) == p[k] for k in ("system", "prefix", "suffix", "identifiers", "escape")) \
                and template.passage == "[{id}] {text}\n" and not template.system_in_user:
            alpha = name == "rank_llm"
            yaml_name = "rank_zephyr_alpha_template.yaml" if alpha else "rank_zephyr_template.yaml"
            return (f"rank_llm (0.25) RankListwiseOSLLM(model=<this dir>, use_alpha={alpha}, use_logits={alpha}, "
                    f"window_size={window}, stride={stride}, context_size={max_length}) renders the same prompt "
                    f"({yaml_name}, byte-identical messages); rank_llm cuts passages to 300*20/window words "
                    f"(lrt: {template.max_passage_tokens} tokens), writes titles as 'Title: t Content: x' and "
                    "collapses whitespace, so only such passages can differ; vLLM adds BOS as lrt's bos=prepended")
    return None


def identifier_labels(scheme: Scheme, n: int) -> list[str]:
    """Labels shown inside the brackets: A..Z, 1..n, or the special tokens <id_1>..<id_n>."""
    if scheme == "alpha":
        if n > ALPHA_MAX:
            raise LrtError(
                f"{n} candidates but alphabetic identifiers stop at {ALPHA_MAX} (Z); "
                "use prompt.identifiers=special (single tokens <id_1>..<id_N>) or numeric"
            )
        return [chr(ord("A") + i) for i in range(n)]
    if scheme == "numeric":
        return [str(i + 1) for i in range(n)]
    if scheme == "special":
        return special_tokens(n)
    raise LrtError(f"unknown identifier scheme {scheme!r}; choose alpha, numeric or special")


def special_tokens(n: int) -> list[str]:
    return [f"<id_{i + 1}>" for i in range(n)]


def max_candidates(scheme: Scheme) -> int | None:
    return ALPHA_MAX if scheme == "alpha" else None


_BRACKET_ID = re.compile(r"\[([A-Za-z]|\d{1,4})\]")
_SPECIAL_ID = re.compile(r"<id_(\d+)>")


_RANK_LLM_NUMBER = re.compile(r"\[(\d+)\]")


def escape_passage(text: str, style: str = "lrt") -> str:
    """Rewrite identifier-like `[X]`/`[12]`/`<id_3>` inside passages (and queries) so they cannot pose
    as labels; `style="rank_llm"` rewrites `[12]` only, exactly as rank_llm's `_replace_number`."""
    if style == "rank_llm":
        return _RANK_LLM_NUMBER.sub(r"(\1)", text)
    text = _BRACKET_ID.sub(r"(\1)", text)
    return _SPECIAL_ID.sub(r"(id \1)", text)


def _example(scheme: Scheme) -> str:
    a, b = identifier_labels(scheme, 2)
    return f"[{b}] > [{a}]"


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """Cut `text` to its first `max_tokens` tokens, slicing by character offsets (no decode drift)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    offsets = enc["offset_mapping"]  # counted as text, as `encode_text` encodes a passage
    if len(offsets) <= max_tokens:
        return text
    return text[: offsets[max_tokens - 1][1]].rstrip()


def render_messages(
    template: PromptTemplate, query: str, passages: Sequence[str], labels: Sequence[str], *, escaped: bool = False
) -> list[dict[str, str]]:
    """Chat messages for one window (passages already truncated and escaped; the query is escaped
    here, like the passages: a `[2]` in a query must not pose as an identifier either)."""
    num = len(passages)
    q = query if escaped else escape_passage(query.strip(), template.escape)
    fmt = {"num": num, "query": q, "example": _example(template.identifiers)}
    body = "".join(template.passage.format(id=lab, text=p) for lab, p in zip(labels, passages))
    user = template.prefix.format(**fmt) + body + template.suffix.format(**fmt)
    msgs: list[dict[str, str]] = []
    if template.system:
        if template.system_in_user:
            user = template.system + "\n " + user
        else:
            msgs.append({"role": "system", "content": template.system})
    msgs.append({"role": "user", "content": user})
    return msgs


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether encoding text with special tokens (what HF pipelines and vLLM do) starts with BOS."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_special) and with_special[0] == bos_id and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos_id]


def needs_bos(tokenizer: Any, template: PromptTemplate, text: str) -> bool:
    """Whether lrt puts BOS before `text` under `template.bos`: never when the text (i.e. the chat
    template) already starts with it, so never twice."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or getattr(tokenizer, "bos_token_id", None) is None or template.bos == "never" or text.startswith(bos):
        return False
    return template.bos == "always" or tokenizer_adds_bos(tokenizer)


def encode_prompt(tokenizer: Any, template: PromptTemplate, text: str, offsets: bool = False) -> dict[str, list]:
    """THE encoder of rendered text (collator, reranker, HF teacher): no special tokens except BOS by
    the policy, inserted as a token (offset (0, 0)) the way `tokenizer(text)` and vLLM add it; a BOS
    *string* in front of the text would tokenize differently on SentencePiece tokenizers (no "▁").
    Queries and passages of a `PromptText` are encoded as text (`lrt.data.untrusted.encode_text`)."""
    out = encode_text(tokenizer, text, offsets=offsets)
    if needs_bos(tokenizer, template, text):
        out["input_ids"].insert(0, int(tokenizer.bos_token_id))
        if offsets:
            out["offset_mapping"].insert(0, (0, 0))
    return out


def encode_prompts_padded(tokenizer: Any, template: PromptTemplate, texts: Sequence[str]) -> Any:
    """A padded batch (tensors, the tokenizer's padding side) of `encode_prompt` rows, for generation."""
    rows = [encode_prompt(tokenizer, template, t)["input_ids"] for t in texts]
    return tokenizer.pad({"input_ids": rows}, return_tensors="pt")


def bos_outcome(tokenizer: Any, template: PromptTemplate) -> Literal["prepended", "template", "none"]:
    """What the policy does with this tokenizer: lrt prepends BOS, the chat template writes it, or no BOS.
    Recorded in `lrt_reranker.json` so serving can check it adds BOS the same way."""
    text = apply_template(tokenizer, template, [{"role": "user", "content": "x"}])
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        return "template"
    return "prepended" if needs_bos(tokenizer, template, text) else "none"


def apply_template(tokenizer: Any, template: PromptTemplate, messages: list[dict[str, str]]) -> str:
    """Chat-templated prompt text ending with the generation prompt (a BOS only where the chat
    template writes one; `encode_prompt` adds the policy's BOS as a token)."""
    if template.chat_template == "none" or not getattr(tokenizer, "chat_template", None):
        if template.chat_template == "auto" and not getattr(tokenizer, "chat_template", None):
            raise LrtError(
                "the tokenizer has no chat template; set prompt.chat_template=none to use plain text "
                "(system and user joined by blank lines) or give a tokenizer with a chat template"
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\n"
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - template errors are user configuration problems
        if messages[0]["role"] == "system":
            raise LrtError(
                f"the chat template rejected a system message ({e}); set prompt.system_in_user=true"
            ) from None
        raise LrtError(f"the chat template failed: {e}") from None


def render_window(
    tokenizer: Any, template: PromptTemplate, query: str, passages: Sequence[str], labels: Sequence[str]
) -> PromptText:
    """Chat-templated prompt text of one window (passages already cut and escaped) that marks where the
    query and the passages lie, so `encode_prompt` encodes control tokens inside them as text."""
    user = {"q": escape_passage(query.strip(), template.escape), **{f"p{i}": p for i, p in enumerate(passages)}}

    def build(v: Any) -> str:
        msgs = render_messages(template, v["q"], [v[f"p{i}"] for i in range(len(passages))], labels, escaped=True)
        return apply_template(tokenizer, template, msgs)

    return fill(tokenizer, build, user)


def render_prompt(
    tokenizer: Any, template: PromptTemplate, query: str, passages: Sequence[str], max_passage_tokens: int | None = None
) -> PromptText:
    """Full prompt text for one window: truncate each passage by tokens, escape, template."""
    budget = max_passage_tokens if max_passage_tokens is not None else template.max_passage_tokens
    cut = [escape_passage(truncate_tokens(tokenizer, p, budget), template.escape) for p in passages]
    return render_window(tokenizer, template, query, cut, identifier_labels(template.identifiers, len(passages)))


def passage_text(text: str, title: str | None) -> str:
    return f"{title}: {text}" if title else text


def render_target(labels_in_rank_order: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """`[C] > [A] > ...` and, per output rank, the char span of the whole bracketed identifier."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, lab in enumerate(labels_in_rank_order):
        if i:
            parts.append(" > ")
            pos += 3
        s = f"[{lab}]"
        spans.append((pos, pos + len(s)))
        parts.append(s)
        pos += len(s)
    return "".join(parts), spans
