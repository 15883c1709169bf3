"""Build tiny tokenizers (three chat-template styles) and tiny Llama models offline.

Tests need real tokenizer behaviour (offsets, special tokens, chat templates with BOS/EOS) without
downloading anything, so these are trained deterministically with the `tokenizers` library.
"""
from __future__ import annotations

from typing import Literal

from lrt.data.prompts import PRESETS

Style = Literal["chatml", "zephyr", "mistral", "llama3"]

CHAT_TEMPLATES = {
    # Qwen/ChatML: no BOS, eos = <|im_end|>, generation prompt ends with a newline.
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # Zephyr: eos </s> inside the template after every turn, and pad == eos (the FIRST anchor's bug).
    "zephyr": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    # Mistral-instruct: BOS in the template, no system role, [INST] control tokens, no newline.
    "mistral": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% elif m['role'] == 'user' %}"
        "[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    ),
}
CHAT_TEMPLATES["llama3"] = CHAT_TEMPLATES["chatml"]

SPECIALS = {
    "chatml": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=["<|im_start|>"]),
    "zephyr": dict(bos="<s>", eos="</s>", pad="</s>", extra=["<|system|>", "<|user|>", "<|assistant|>"]),
    "mistral": dict(bos="<s>", eos="</s>", pad=None, extra=["[INST]", "[/INST]", "<unk>"]),
    "llama3": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=["<|im_start|>"]),
}
# Llama-3 / Qwen2 pre-tokenizer regex: it glues punctuation to the following letters ("[A").
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    # the presets tiny tokenizers were first trained on; later presets (rank_llm*) stay out, so adding a
    # preset never changes every test tokenizer's vocabulary
    words = " ".join(" ".join(PRESETS[n][k] or "" for k in ("system", "prefix", "suffix"))
                     for n in ("first_alpha", "rankgpt_numeric", "compact"))
    letters = " ".join(f"[{chr(65 + i)}] > [{chr(66 + i % 25)}]" for i in range(26))
    numbers = " ".join(f"[{i}]" for i in range(1, 101))
    filler = "the quick brown fox jumps over the lazy dog passage query rank relevance search document text"
    return [words, letters, numbers, filler] * 4


def build_tokenizer(style: Style = "chatml", vocab_size: int = 600):
    """A fast byte-level BPE tokenizer with the given chat-template style (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = SPECIALS[style]
    specials = [t for t in (sp["bos"], sp["eos"], sp["pad"], *sp["extra"]) if t]
    specials = list(dict.fromkeys(specials))
    tok = Tokenizer(models.BPE())
    if style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    elif style == "mistral":  # SentencePiece-Mistral splits every digit: "[12]" -> "[", "1", "2", "]"
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=sp["bos"], eos_token=sp["eos"], pad_token=sp["pad"],
        additional_special_tokens=sp["extra"],
    )
    fast.chat_template = CHAT_TEMPLATES[style]
    return fast


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, tie: bool = True, **kw):
    """A randomly initialised LlamaForCausalLM small enough for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
        tie_word_embeddings=tie, attn_implementation="sdpa", **kw,
    )
    return LlamaForCausalLM(cfg)


def save_tiny_model(out_dir, style: Style = "chatml", hidden: int = 64, layers: int = 2, seed: int = 0) -> str:
    """Write a tiny tokenizer + LlamaForCausalLM to `out_dir` (loadable with from_pretrained)."""
    tok = build_tokenizer(style)
    model = tiny_llama(len(tok), hidden=hidden, layers=layers, seed=seed,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


def random_examples(n: int, n_cands: int = 5, seed: int = 0, graded: bool = True) -> list:
    """Canonical listwise examples with random words, a random teacher permutation and grades."""
    import random

    from lrt.data.schema import Candidate, ListwiseExample

    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog passage query rank search document text".split()
    out = []
    for q in range(n):
        cands = [Candidate(f"q{q}d{i}", " ".join(rng.choices(words, k=rng.randint(3, 12)))) for i in range(n_cands)]
        ranking = [c.docid for c in cands]
        rng.shuffle(ranking)
        rel = None
        if graded:
            pos = {d: i for i, d in enumerate(ranking)}
            rel = [float(max(0, 3 - pos[c.docid])) for c in cands]
        out.append(ListwiseExample(f"q{q}", " ".join(rng.choices(words, k=2)), cands, ranking, rel))
    return out
