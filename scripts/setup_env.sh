#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install lrt with CPU torch first.
# Usage: bash scripts/setup_env.sh [extras]   e.g. "test"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LRT_VENV:-.venv}
EXTRAS=${1:-}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.lrt-installed-$(cat pyproject.toml constraints-cpu.txt | sha1sum | cut -c1-12)-${EXTRAS:-base}"
if [ -f "$stamp" ]; then
  exit 0
fi
"$PY" -m pip install -q --upgrade pip
if ! "$PY" -c "import torch" 2>/dev/null; then
  # CPU torch first: on Linux the plain PyPI wheel of torch is the multi-GB CUDA build. The CPU build
  # comes from PyTorch's CPU wheel index (LRT_TORCH_INDEX overrides it), unless pip already has a local
  # CPU wheel configured (find-links), which is tried first and without network.
  if "$PY" -m pip install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null; then
    "$PY" -m pip install -q -c constraints-cpu.txt "torch==2.13.0"          # its dependencies
  else
    "$PY" -m pip install -q "torch==2.13.0" --index-url "${LRT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
      --extra-index-url https://pypi.org/simple || "$PY" -m pip install -q -c constraints-cpu.txt "torch==2.13.0"
  fi
fi
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
# Keep whatever torch is installed (CPU here, your CUDA build on a GPU box).
TORCH_VER=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$TORCH_VER" > "$VENV/.torch-pin.txt"
"$PY" -m pip install -q -c "$VENV/.torch-pin.txt" -e "$spec"
if [[ ",$EXTRAS," == *",test,"* ]]; then
  # rank_llm's FIRST template is the reference of lrt's rank_llm preset (tests/test_rank_llm_prompt.py);
  # --no-deps: rank-llm 0.25 requires vLLM, which the test does not need
  "$PY" -m pip install -q --no-deps "rank-llm>=0.25,<0.26"
fi
touch "$stamp"
