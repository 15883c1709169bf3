#!/usr/bin/env bash
# The quickstart (README): set up/reuse .venv with CPU torch, then train + evaluate + export the tiny
# reranker on generated data (no downloads). Extra args go to `lrt quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/lrt quickstart "$@"
