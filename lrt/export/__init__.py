"""Export a Hugging Face checkpoint that reranks exactly as trained.

Writes safetensors, the tokenizer, the generation config, `lrt_reranker.json` (prompt template,
identifier scheme, window) and a model card (recipe, data, metrics). The package sits above lrt.train
(it rebuilds models from checkpoints) and is never imported by it.

    model     rebuild from the recipe, merge LoRA, write weights + tokenizer + meta + card
    run       `lrt export RUN_DIR --out DIR`: a verified checkpoint of a run
    final     `RUN/final/` at the end of training (the live model, or the best checkpoint)
    dir       export directories: staged, atomic, never mixed, with the list of files written
    card      the model card (README.md)
    snippet   the card's usage snippets (lrt, plain transformers, rank_llm)
    hub       `--push-to-hub`
    seq_cls   a pointwise export as a one-output sequence classifier
"""
from __future__ import annotations

from lrt.export.final import export_final, export_trained
from lrt.export.hub import check_repo_id, push_to_hub
from lrt.export.model import (EXPORT_OVERRIDES, export_recipe, load_checkpoint_tensors, merge_lora, model_card,
                              rebuild, save_meta, write_export)
from lrt.export.run import export_run, verified_checkpoint
from lrt.export.seq_cls import export_seq_cls, score_chat_template
from lrt.train.adapter import save_adapter

__all__ = ["EXPORT_OVERRIDES", "check_repo_id", "export_final", "export_recipe", "export_run", "export_seq_cls",
           "export_trained", "load_checkpoint_tensors", "merge_lora", "model_card", "push_to_hub", "rebuild",
           "save_adapter", "save_meta", "score_chat_template", "verified_checkpoint", "write_export"]
