#!/usr/bin/env bash
# Single node, N processes (one per GPU; on a CPU-only box, N CPU ranks over gloo).
#   bash launch/torchrun.sh 8 recipes/first-mistral-7b.yaml [key=value ...]
#   DRY_RUN=1 bash launch/torchrun.sh 8 recipes/first-mistral-7b.yaml     # print the command only
#   bash launch/torchrun.sh --dry-run 8 recipes/first-mistral-7b.yaml
# Same as `lrt train RECIPE --nproc-per-node N`. Env: PYTHON (default python), OMP_NUM_THREADS.
set -euo pipefail
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2
fi
NPROC=$1; RECIPE=$2; shift 2
PYTHON=${PYTHON:-python}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
cmd=("$PYTHON" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$NPROC"
     -m lrt.cli train "$RECIPE" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
