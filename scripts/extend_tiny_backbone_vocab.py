"""Give a tiny-backbone checkpoint the rows of tokens added to the demo vocabulary after it was trained.

Why: `lrt.demo.tokenizer.EXTRA_WORDS` (the pointwise template's "yes"/"no"/...) are appended after
every earlier token, so an existing backbone keeps all its ids and only needs new embedding rows.
New rows are drawn (seed 0) from a normal with the existing rows' mean and covariance
(`resize_token_embeddings(mean_resizing=True)`), so they carry no information until fine-tuning;
nothing else changes (checked: the old rows are bitwise equal).

    python scripts/extend_tiny_backbone_vocab.py lrt/assets/tiny-backbone
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lrt.demo.tokenizer import build_tokenizer


def main(path: str) -> None:
    old_tok = AutoTokenizer.from_pretrained(path)
    new_tok = build_tokenizer()
    old_vocab = [old_tok.convert_ids_to_tokens(i) for i in range(len(old_tok))]
    new_vocab = [new_tok.convert_ids_to_tokens(i) for i in range(len(new_tok))]
    if new_vocab[: len(old_vocab)] != old_vocab:
        raise SystemExit(f"{path}: its vocabulary is not a prefix of the current demo vocabulary; retrain instead")
    if len(new_vocab) == len(old_vocab):
        print(f"{path}: already has all {len(new_vocab)} tokens")
        return
    model = AutoModelForCausalLM.from_pretrained(path)
    before = model.get_input_embeddings().weight.detach().clone()
    torch.manual_seed(0)
    model.resize_token_embeddings(len(new_vocab), mean_resizing=True)
    after = model.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(old_vocab)], before)
    model.save_pretrained(path, safe_serialization=True)
    build_tokenizer(Path(path))
    print(f"{path}: {len(old_vocab)} -> {len(new_vocab)} tokens (+{new_vocab[len(old_vocab):]})")


if __name__ == "__main__":
    main(sys.argv[1])
