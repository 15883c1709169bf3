#!/usr/bin/env bash
# scripts/gpu_wheels.sh [DIR]: fill a wheelhouse (default .whl/, git-ignored) with what a GPU machine
# without network lacks for scripts/gpu_check.sh, as wheels for CPython 3.12 on manylinux x86_64:
# pydantic (lrt's recipes; not in every CUDA image), the `gpu` extra's liger-kernel, bitsandbytes
# (QLoRA), deepspeed (ZeRO-3; PyPI has only its source, so a pure-Python wheel is built here, its CUDA
# ops are JIT-built on the GPU machine) and its hjson. flash-attn has no wheel on PyPI: its check skips
# unless you add a wheel built for the GPU machine's torch/CUDA. Run it on a machine with pip access;
# then give the GPU machine the folder (LRT_WHEELHOUSE=DIR scripts/gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d "$DIR" \
  "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
  "liger-kernel==0.8.5" "bitsandbytes==0.50.2" "hjson==3.1.0"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$DIR" "deepspeed==0.19.8"
ls -la "$DIR"
du -sh "$DIR"
