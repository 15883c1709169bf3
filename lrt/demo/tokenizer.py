"""A deterministic word-level fast tokenizer for the demo world, with a ChatML chat template.

Why word-level: every pseudo-word, identifier letter and punctuation mark is exactly one token, so
`[A]` is always `[`, `A`, `]` and the FIRST answer position / identifier logits are unambiguous. It is
built from a fixed word list (no training corpus), so the vocabulary and ids never drift.
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from lrt.demo.world import World

IM_START, IM_END, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|unk|>"
SPECIALS = [PAD, UNK, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Words of the prompt templates (lrt "compact" presets, chat roles) and of backbone pretraining tasks
# (research/pretrain_lookup_backbone.py uses find/is/in/where; the rest stay so that ids never move).
# Anything else maps to <|unk|>.
TEMPLATE_WORDS = [
    "system", "user", "assistant", "Query", "Passages", "Ranking", "Search", "Rank", "passages",
    "query", "id", "copy", "find", "in", "is", "items", "text", "where", "answer", "repeat", "list",
    "doc", "which", "has", "word", "the", "of", "and", "a",
]
# Words of the pointwise template ("compact_pointwise", `lrt quickstart --mode pointwise`). Appended
# AFTER the lexicon so that every earlier token keeps its id: a backbone trained before they existed
# only gains rows for them.
EXTRA_WORDS = ["yes", "no", "Document", "Relevant"]
PUNCT = list("[]()<>:;.,?!-|=/*+#\"'")
# \w+ runs, single punctuation marks, and newlines are tokens; other whitespace is dropped.
_PIECES = Regex(r"\w+|[^\w\s]|\n")


def vocabulary(world: World | None = None) -> list[str]:
    """The full token list in id order: specials, newline, punctuation, letters, digits, words, lexicon, extras."""
    world = world or World()
    letters = list(string.ascii_uppercase) + list(string.ascii_lowercase)
    digits = [str(i) for i in range(100)]
    toks = SPECIALS + ["\n"] + PUNCT + letters + digits + TEMPLATE_WORDS + sorted(world.lexicon) + EXTRA_WORDS
    seen: set[str] = set()
    out = [t for t in toks if not (t in seen or seen.add(t))]
    return out


def build_tokenizer(out_dir: str | Path | None = None, world: World | None = None):
    """A `PreTrainedTokenizerFast` (saved to `out_dir` if given) with eos=<|im_end|>, pad=<|pad|>."""
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(vocabulary(world))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(_PIECES, behavior="removed", invert=True)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )
    fast.padding_side = "right"
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
