"""`lrt validate`'s model checks: can this model read this data, in this prompt, within its limits?

Why: a recipe can be valid as YAML and still train a model that cannot see the data: a tokenizer that
maps most words to `<unk>`, a prompt that needs a chat template the tokenizer lacks, an identifier that
is two tokens, a `data.max_length` beyond the model's positions, passages cut far below what the user
thinks. Each of these used to surface seconds into `lrt train` or never. This loads the tokenizer and
the model *config* (never the weights), encodes a sample of the training lists exactly as training
will, and reports what it found; problems are one `LrtError` naming the key, the figure and the fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrt.config import Recipe, resolve_path
from lrt.data.prompts import identifier_labels, passage_text
from lrt.data.schema import load_examples
from lrt.errors import LrtError

UNKNOWN_WARN = 0.01  # share of <unk> tokens in query/passage text above which lrt warns


@dataclass
class Preflight:
    lines: list[str] = field(default_factory=list)  # what was checked, with its figures
    warnings: list[str] = field(default_factory=list)
    prompt: str | None = None  # one rendered training sequence (for --show-prompt)
    prompt_tokens: int = 0


def position_limit(r: Recipe) -> int | None:
    """The model's `max_position_embeddings` (after `model.config_overrides`), from its config only."""
    from transformers import AutoConfig

    if "max_position_embeddings" in r.model.config_overrides:
        return int(r.model.config_overrides["max_position_embeddings"])
    try:
        cfg = AutoConfig.from_pretrained(resolve_path(r.model.name_or_path), trust_remote_code=r.model.trust_remote_code)
    except Exception:  # noqa: BLE001 - a config that cannot be read is reported by training's own loader
        return None
    limit = getattr(cfg, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def preflight(r: Recipe, sample: int = 64, max_unknown_share: float = 0.2) -> Preflight:
    """Check the model against a sample of `data.train`; raise one LrtError listing every problem."""
    src = resolve_path(r.model.tokenizer or r.model.name_or_path)
    out = Preflight()
    if not os.path.isdir(os.path.expanduser(src)):
        out.lines.append(f"model checks skipped: {src!r} is not a local directory (a hub id is checked when "
                         "`lrt train` downloads it)")
        return out
    train_path = resolve_path(r.data.train)
    if not os.path.exists(train_path):
        out.lines.append(f"model checks skipped: data.train {r.data.train!r} is not a local file yet")
        return out
    from lrt.modeling import load_tokenizer

    exs, _ = load_examples(train_path, on_invalid="skip", split=r.data.split, limit=sample)
    if not exs:
        raise LrtError(f"data.train {r.data.train!r}: no valid row in the first {sample}")
    longest = max(len(e.candidates[: r.data.window] if r.data.window else e.candidates) for e in exs)
    tok = load_tokenizer(r, n_identifiers=r.data.window or longest)
    problems: list[str] = []

    limit = position_limit(r)
    if limit is not None and r.data.max_length > limit:
        problems.append(f"data.max_length={r.data.max_length} exceeds the model's position limit "
                        f"(max_position_embeddings={limit}): set data.max_length<={limit}")
    elif limit is not None:
        out.lines.append(f"positions: data.max_length {r.data.max_length} <= the model's limit {limit}")

    unk = getattr(tok, "unk_token_id", None)
    texts = [e.query for e in exs] + [passage_text(c.text, c.title) for e in exs for c in e.candidates]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    n_tok = sum(len(x) for x in ids)
    share = (sum(t == unk for x in ids for t in x) / n_tok) if unk is not None and n_tok else 0.0
    what = (f"unknown tokens: {_pct(share)} of {n_tok} query/passage tokens in {len(exs)} sampled lists"
            if unk is not None else "unknown tokens: none possible (the tokenizer has no <unk>)")
    if share > max_unknown_share:
        problems.append(f"{_pct(share)} of the data's query/passage tokens are {tok.unk_token!r} for the tokenizer of "
                        f"{src!r}: the model cannot read this text. Use a model whose tokenizer covers it "
                        "(e.g. model.tokenizer=DIR with model.init=from_config for a CPU run), or pass "
                        f"--max-unknown-share {min(1.0, round(share + 0.05, 2))} to accept it")
    elif share > UNKNOWN_WARN:
        out.warnings.append(what + f" (above {_pct(UNKNOWN_WARN)}: the model sees {tok.unk_token!r} there)")
    out.lines.append(what)

    budget = r.prompt.max_passage_tokens
    passage_lens = np.asarray([len(x) for x in ids[len(exs):]] or [0])
    out.lines.append(f"passages: p50 {int(np.percentile(passage_lens, 50))}, p95 {int(np.percentile(passage_lens, 95))} "
                     f"tokens; {_pct(float((passage_lens > budget).mean()))} cut at prompt.max_passage_tokens={budget}")
    if problems:
        raise LrtError("; ".join(problems))
    _encode_sample(r, tok, exs, out)
    return out


def _encode_sample(r: Recipe, tok: Any, exs: list, out: Preflight) -> None:
    """Encode the sampled lists exactly as training does: chat template, identifiers, the length budget."""
    from lrt.families import of_recipe

    family = of_recipe(r)
    if family.pairs:
        from lrt.data.pointwise import encode_group, yes_no_ids

        t = family.template(r)
        yes_no_ids(tok, t)
        groups = [encode_group(tok, t, ex, r.data.max_length, r.data.window) for ex in exs]
        pairs = [p for g in groups for p in g["pairs"]]
        cut = sum(len(p) >= r.data.max_length for p in pairs)
        out.lines.append(f"pairs: {len(pairs)} sampled, tokens p50 {int(np.median([len(p) for p in pairs]))}, "
                         f"max {max(len(p) for p in pairs)} (max_length {r.data.max_length} per pair); "
                         f"{cut} cut to fit; answer words {t.yes!r}/{t.no!r} one token each")
        out.prompt, out.prompt_tokens = tok.decode(pairs[0]), len(pairs[0])
        return
    from lrt.data.collate import encode_example, identifier_token_ids
    from lrt.train.data import prompt_template
    from lrt.objective.objective import Objective

    template = prompt_template(r)
    scores = Objective.from_recipe(r).needs_scores
    n = max(len(e.candidates[: r.data.window] if r.data.window else e.candidates) for e in exs)
    id_ids = identifier_token_ids(tok, template, n) if scores else None
    encoded = [encode_example(tok, template, ex, max_length=r.data.max_length, id_token_ids=id_ids,
                              window=r.data.window) for ex in exs]
    lens = [len(e.input_ids) for e in encoded]
    labels = identifier_labels(template.identifiers, n)
    ident = (f"identifiers {labels[0]}..{labels[-1]} one token each" if id_ids is not None
             else "identifiers not scored (lm-only objective)")
    out.lines.append(f"lists: tokens p50 {int(np.median(lens))}, max {max(lens)} (max_length {r.data.max_length}); "
                     f"{sum(e.truncated for e in encoded)} of {len(encoded)} cut below prompt.max_passage_tokens to "
                     f"fit; chat template {'applied' if template.chat_template == 'auto' and tok.chat_template else 'not used'}; {ident}")
    out.prompt, out.prompt_tokens = tok.decode(encoded[0].input_ids), lens[0]
