#!/usr/bin/env bash
# Single node, N processes through the DeepSpeed launcher (the recipe's train.deepspeed picks the
# ZeRO config, e.g. launch/ds_zero3.json). Equivalent to launch/torchrun.sh; use whichever your
# cluster tooling expects.
#   bash launch/deepspeed.sh 8 recipes/first-mistral-7b.yaml [key=value ...]
#   DRY_RUN=1 bash launch/deepspeed.sh 8 recipes/first-mistral-7b.yaml    # print the command only
# Env: DEEPSPEED (default: deepspeed), MASTER_PORT (default 29500), OMP_NUM_THREADS.
set -euo pipefail
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2
fi
NPROC=$1; RECIPE=$2; shift 2
DEEPSPEED=${DEEPSPEED:-deepspeed}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
# --no_local_rank: lrt reads LOCAL_RANK from the environment (no --local_rank argument)
cmd=("$DEEPSPEED" --num_gpus "$NPROC" --master_port "${MASTER_PORT:-29500}" --no_local_rank
     --module lrt.cli train "$RECIPE" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
