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


def escape_passage(text: str) -> str:
    """Rewrite identifier-like `[X]`/`[12]`/`<id_3>` inside passages so they cannot pose as labels."""
    text = _BRACKET_ID.sub(r"(\1)", text)
    return _SPECIAL_ID.sub(r"(id \1)", text)


def _example(scheme: Scheme) -> str:
    a, b = identifier_labels(scheme, 2)
    return f"[{b}] > [{a}]"


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """Cut `text` to its first `max_tokens` tokens, slicing by character offsets (no decode drift)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    return text[: offsets[max_tokens - 1][1]].rstrip()


def render_messages(
    template: PromptTemplate, query: str, passages: Sequence[str], labels: Sequence[str]
) -> list[dict[str, str]]:
    """Chat messages for one window (passages already truncated and escaped)."""
    num = len(passages)
    fmt = {"num": num, "query": query.strip(), "example": _example(template.identifiers)}
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


def apply_template(tokenizer: Any, template: PromptTemplate, messages: list[dict[str, str]]) -> str:
    """Chat-templated prompt text ending with the generation prompt (BOS included iff the template has it)."""
    if template.chat_template == "none" or not getattr(tokenizer, "chat_template", None):
        if template.chat_template == "auto" and not getattr(tokenizer, "chat_template", None):
            raise LrtError(
                "the tokenizer has no chat template; set prompt.chat_template=none to use plain text "
                "(system and user joined by blank lines) or give a tokenizer with a chat template"
            )
        bos = tokenizer.bos_token or ""
        return bos + "\n\n".join(m["content"] for m in messages) + "\n\n"
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - template errors are user configuration problems
        if messages[0]["role"] == "system":
            raise LrtError(
                f"the chat template rejected a system message ({e}); set prompt.system_in_user=true"
            ) from None
        raise LrtError(f"the chat template failed: {e}") from None


def render_prompt(
    tokenizer: Any, template: PromptTemplate, query: str, passages: Sequence[str], max_passage_tokens: int | None = None
) -> str:
    """Full prompt text for one window: truncate each passage by tokens, escape, template."""
    budget = max_passage_tokens if max_passage_tokens is not None else template.max_passage_tokens
    cut = [escape_passage(truncate_tokens(tokenizer, p, budget)) for p in passages]
    labels = identifier_labels(template.identifiers, len(passages))
    return apply_template(tokenizer, template, render_messages(template, query, cut, labels))


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
