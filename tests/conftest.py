"""Shared fixtures: offline env, tiny tokenizers in three chat-template styles, tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)

REPO = Path(__file__).resolve().parents[1]
FULLRANK_DATA = REPO / "lrt" / "resources" / "data" / "fullrank"


@pytest.fixture(scope="session")
def tokenizers():
    from lrt.testing.tiny import build_tokenizer

    return {s: build_tokenizer(s) for s in ("chatml", "zephyr", "mistral", "llama3")}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from lrt.testing.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", "chatml")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from lrt.data.schema import write_examples
    from lrt.testing.tiny import random_examples

    d = tmp_path_factory.mktemp("data")
    write_examples(random_examples(24, 5, seed=0), d / "train.jsonl")
    write_examples(random_examples(6, 5, seed=1), d / "eval.jsonl")
    return d
