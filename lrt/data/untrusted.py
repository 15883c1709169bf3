"""Queries and passages are encoded as text, never as control tokens (prompt injection).

A passage that contains `<|im_end|><|im_start|>assistant`, `[INST]` or `</s>` would otherwise be
encoded as the tokenizer's real special tokens: the model would see the user turn end inside a
passage. The template's own control tokens must stay special. So rendering records where user text
lies in the rendered string (`PromptText.untrusted`, char spans), and `encode_text`, THE encoder of
rendered text (listwise prompts, pointwise bodies, training, teachers, reranking), re-encodes every
stretch between two template control tokens that holds an injected one with
`split_special_tokens=True`. Text with no control-token string in its user parts (the normal case)
takes the plain path and is encoded bitwise as before; an injected stretch is encoded as standalone
text (a SentencePiece tokenizer may then start it with its word-boundary piece).
"""
from __future__ import annotations

import re
import secrets
from typing import Any, Callable, Mapping, Sequence

from lrt.errors import LrtError

Span = tuple[int, int]


class PromptText(str):
    """Rendered text that remembers the char spans of user text in it; `+ str` keeps them."""

    untrusted: tuple[Span, ...] = ()

    def __new__(cls, text: str, untrusted: Sequence[Span] = ()) -> "PromptText":
        obj = super().__new__(cls, text)
        obj.untrusted = tuple((int(a), int(b)) for a, b in untrusted)
        return obj

    def __add__(self, other: str) -> "PromptText":  # type: ignore[override]
        if not isinstance(other, str):
            return NotImplemented
        more = tuple((a + len(self), b + len(self)) for a, b in getattr(other, "untrusted", ()))
        return PromptText(str.__add__(self, other), self.untrusted + more)


_MARKUP = re.compile(r"<[^\s<>]+>|\[[^\s\[\]]+\]")


def control_tokens(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's control tokens by text: its special added tokens (chat markers, BOS/EOS, ...) and
    added tokens that look like markup (`<think>`, `[REFERENCE_DOC_1]`), special or not; not `<unk>`,
    which stands for unknown text itself, nor plain added words."""
    unk = getattr(tokenizer, "unk_token_id", None)
    out = {}
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        content = str(getattr(t, "content", t))
        if i != unk and content and (getattr(t, "special", False) or _MARKUP.fullmatch(content)):
            out[content] = int(i)
    return out


def holds_control(text: str, controls: Sequence[str]) -> bool:
    """Whether `text` contains the string of one of the control tokens `controls`."""
    return bool(text) and any(s and s in text for s in controls)


def fill(tokenizer: Any, build: Callable[[Mapping[str, str]], str], user: Mapping[str, str]) -> PromptText:
    """`build(values)` with the user strings in `user`, as `PromptText` marking where they landed.

    Only user strings that hold a control-token string need marking: those are rendered as unique
    sentinels first (through the chat template), then substituted, so the spans are exact."""
    controls = list(control_tokens(tokenizer))
    risky = {k: v for k, v in user.items() if holds_control(v, controls)}
    if not risky:
        return PromptText(build(user))
    nonce = secrets.token_hex(6)
    keys = list(risky)
    sentinel = {k: f"\ue000{nonce}:{i}\ue001" for i, k in enumerate(keys)}
    rendered = build({**user, **sentinel})
    pattern = re.compile("\ue000" + nonce + r":(\d+)\ue001")
    out: list[str] = []
    spans: list[Span] = []
    seen: set[int] = set()
    pos = last = 0
    for m in pattern.finditer(rendered):
        plain = rendered[last:m.start()]
        out.append(plain)
        pos += len(plain)
        k = int(m.group(1))
        seen.add(k)
        val = risky[keys[k]]
        out.append(val)
        spans.append((pos, pos + len(val)))
        pos += len(val)
        last = m.end()
    out.append(rendered[last:])
    if len(seen) != len(keys):
        raise LrtError("the chat template rewrites message content, so lrt cannot keep the control tokens in this "
                       f"query or passage ({', '.join(s for s in controls if any(s in v for v in risky.values()))}) as "
                       "text: remove them from the data or use a template that inserts content verbatim")
    return PromptText("".join(out), spans)


def _overlaps(s: int, e: int, spans: Sequence[Span]) -> bool:
    return any(a < e and s < b for a, b in spans)


def encode_text(tokenizer: Any, text: str, offsets: bool = False) -> dict[str, list]:
    """Token ids (and offsets) of rendered text without added BOS/EOS; user spans of a `PromptText`
    are encoded as text: no control-token id ever comes from a query or passage."""
    spans = getattr(text, "untrusted", ())
    plain = str(text)
    enc = tokenizer(plain, add_special_tokens=False, return_offsets_mapping=offsets or bool(spans))
    ids = [int(i) for i in enc["input_ids"]]
    offs = [tuple(o) for o in enc["offset_mapping"]] if offsets or spans else []
    if spans:
        ctrl = set(control_tokens(tokenizer).values())
        bad = {k for k, i in enumerate(ids) if i in ctrl and _overlaps(*offs[k], spans)}
        if bad:
            ids, offs = _reencode(tokenizer, plain, ids, offs, ctrl, bad, spans)
            left = [k for k, i in enumerate(ids) if i in ctrl and _overlaps(*offs[k], spans)]
            if left:
                raise LrtError(f"this tokenizer ({type(tokenizer).__name__}) cannot encode control tokens inside a query "
                               f"or passage as text ({plain[offs[left[0]][0]:offs[left[0]][1]]!r}): use a fast "
                               "(tokenizers) tokenizer, or remove them from the data")
    out: dict[str, list] = {"input_ids": ids}
    if offsets:
        out["offset_mapping"] = offs
    return out


def _reencode(tokenizer: Any, text: str, ids: list[int], offs: list[Span], ctrl: set[int],
              bad: set[int], spans: Sequence[Span]) -> tuple[list[int], list[Span]]:
    """Re-encode, as text, each stretch between two template control tokens that holds an injected one."""
    keep = [k for k, i in enumerate(ids) if i in ctrl and k not in bad]
    bounds = [-1, *keep, len(ids)]
    new_ids: list[int] = []
    new_offs: list[Span] = []
    for p, q in zip(bounds, bounds[1:]):
        if p >= 0:
            new_ids.append(ids[p])
            new_offs.append(offs[p])
        inner = range(p + 1, q)
        if not any(k in bad for k in inner):
            new_ids.extend(ids[k] for k in inner)
            new_offs.extend(offs[k] for k in inner)
            continue
        g0 = offs[p][1] if p >= 0 else 0
        g1 = offs[q][0] if q < len(ids) else len(text)
        gi, go = _as_text(tokenizer, text, g0, g1, ctrl, spans)
        new_ids += gi
        new_offs += go
    return new_ids, new_offs


def _as_text(tokenizer: Any, text: str, g0: int, g1: int, ctrl: set[int], spans: Sequence[Span],
             depth: int = 0) -> tuple[list[int], list[Span]]:
    """`text[g0:g1]` with `split_special_tokens=True`; an added token that still matches inside user text
    (a non-special one, which that flag leaves alone) is cut after its first character and both halves
    encoded, so its string can no longer match."""
    enc = tokenizer(text[g0:g1], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offs = [(a + g0, b + g0) for a, b in enc["offset_mapping"]]
    for i, (a, b) in zip(ids, offs):
        if i in ctrl and _overlaps(a, b, spans):
            if b - a <= 1 or depth > 64:
                raise LrtError(f"this tokenizer ({type(tokenizer).__name__}) cannot encode the control token "
                               f"{text[a:b]!r} inside a query or passage as text: remove it from the data")
            li, lo = _as_text(tokenizer, text, g0, a + 1, ctrl, spans, depth + 1)
            ri, ro = _as_text(tokenizer, text, a + 1, g1, ctrl, spans, depth + 1)
            return li + ri, lo + ro
    return ids, offs


def user_text_ids(tokenizer: Any, text: str) -> list[int]:
    """Control-token ids that `encode_text` puts inside user spans (for checks: must be empty)."""
    enc = encode_text(tokenizer, text, offsets=True)
    ctrl = set(control_tokens(tokenizer).values())
    spans = getattr(text, "untrusted", ())
    return [i for i, o in zip(enc["input_ids"], enc["offset_mapping"]) if i in ctrl and _overlaps(*o, spans)]
