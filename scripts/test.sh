#!/usr/bin/env bash
# The test command (README "Tests"): set up/reuse .venv with CPU torch, then run the whole suite offline.
#   bash scripts/test.sh            everything (what CI runs: .ci/run)
#   bash scripts/test.sh --fast     the development loop: without the slow (multi-process, multi-minute),
#                                   workflow (whole CLI workflows), gpu and vllm tiers
# Any other arguments go to pytest (e.g. tests/test_config.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=()
if [ "${1:-}" = "--fast" ]; then
  shift
  FAST=(-m "not slow and not workflow and not gpu and not vllm")
fi
bash scripts/setup_env.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q ${FAST[@]+"${FAST[@]}"} "$@"
