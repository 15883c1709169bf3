#!/usr/bin/env bash
# scripts/gpu_check.sh [OUT_DIR]: prove lrt's CUDA paths on one GPU in under ten minutes (docs/gpu.md).
#
# Parts, each under its own `timeout` so a slow one cannot eat the others' time:
#   probe       (30 s)  torch, CUDA, the GPU; lrt importable with this python
#   install     (60 s)  what the image lacks of pyproject.toml's dependencies and `gpu` extra, from
#                       $LRT_WHEELHOUSE (default .whl/, --no-index) else the package index with short
#                       timeouts; --no-deps into a private --target dir, so the image's CUDA torch stays
#   gpu-tests  (420 s)  pytest -m gpu tests/test_gpu_paths.py, 240 s a test (figures -> OUT/figures/*.json)
#   throughput (110 s)  lrt bench throughput: tokens/s/GPU and MFU of the FIRST step, 1.5B at 4k tokens
# Limits shrink so that the whole run ends within 600 s (LRT_GPU_CHECK_BUDGET_S) from its start.
#   summary     (20 s)  OUT/summary.json + OUT/summary.md
# Exit code: 0 every part ran and passed; 1 a part failed or ran out of time; 3 no CUDA device (every
# CUDA part skipped by its own check, reasons in the summary). Env: PYTHON (default python3),
# LRT_WHEELHOUSE, LRT_GPU_ARCH (tests' preset, qwen2-0.5b), LRT_GPU_THROUGHPUT_ARCH (qwen2-1.5b).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${1:-${LRT_GPU_CHECK_OUT:-gpu-check}}
PY=${PYTHON:-python3}
mkdir -p "$OUT/parts" "$OUT/figures" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/parts/*.json "$OUT"/figures/*.json "$OUT"/summary.json "$OUT"/summary.md
SITE=${LRT_GPU_SITE:-/tmp/lrt-gpu-site}
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 LRT_GPU_FIGURES="$OUT/figures" PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$(date +%s)

# part NAME STATUS SECONDS NOTE: one JSON record per part (the summary reads them)
part() {
  "$PY" - "$OUT/parts/$1.json" "$1" "$2" "$3" "$4" <<'EOF' 2>/dev/null || echo "{\"part\": \"$1\", \"status\": \"$2\", \"seconds\": $3}" > "$OUT/parts/$1.json"
import json, sys
path, name, status, secs, note = sys.argv[1:6]
json.dump({"part": name, "status": status, "seconds": int(secs), "note": note}, open(path, "w"))
EOF
  printf '[gpu_check] %-10s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

# run NAME LIMIT CMD...: the command under its own time limit, log in OUT/logs/NAME.log
run() {
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  RC=$?
  SECS=$(( $(date +%s) - t ))
  if [ $RC -eq 124 ] || [ $RC -eq 137 ]; then STATUS=timeout; NOTE="ran past its ${limit}s limit (log: logs/$name.log)"
  elif [ $RC -eq 0 ]; then STATUS=ok; NOTE=""
  else STATUS=failed; NOTE="exit $RC: $(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -n 1 | cut -c1-300)"; fi
}

FAILED=0
DEADLINE=$(( T0 + ${LRT_GPU_CHECK_BUDGET_S:-600} ))
# limit OWN RESERVE: a part's time limit, OWN seconds or less so that RESERVE seconds stay for the later parts
limit() { local left=$(( DEADLINE - $(date +%s) - $2 )); [ $left -lt $1 ] && echo $(( left > 10 ? left : 10 )) || echo "$1"; }
# ---- probe -------------------------------------------------------------------------------------------
run probe 30 "$PY" -c '
import json, torch
c = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda": c,
                  "gpu": torch.cuda.get_device_name(0) if c else None, "gpus": torch.cuda.device_count(),
                  "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if c else None}))'
cp "$OUT/logs/probe.log" "$OUT/probe.json" 2>/dev/null
CUDA=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1]))['cuda']))" "$OUT/probe.json" 2>/dev/null || echo 0)
if [ "$STATUS" != ok ]; then
  part probe "$STATUS" "$SECS" "torch cannot be imported with $PY: $NOTE"; CUDA=0; FAILED=1
elif [ "$CUDA" = 1 ]; then
  part probe ok "$SECS" "$(cat "$OUT/probe.json")"
else
  NOCUDA="no CUDA device: torch.cuda.is_available() is False ($(cat "$OUT/probe.json"))"
  part probe ok "$SECS" "$NOCUDA"
fi
command -v nvidia-smi >/dev/null && timeout 10 nvidia-smi >"$OUT/logs/nvidia-smi.log" 2>&1

# ---- install -----------------------------------------------------------------------------------------
if [ "$CUDA" = 1 ]; then
  WHEELS=${LRT_WHEELHOUSE:-$REPO/.whl}
  run install 60 "$PY" - "$WHEELS" "$SITE" <<'EOF'
# each requirement of pyproject.toml (dependencies + the gpu extra) that this python lacks, installed
# --no-deps into SITE (never replacing the image's torch), binary wheels only (a source build of
# flash-attn takes an hour): the wheelhouse first, else the index if it answers within 3 s
import importlib.metadata as md, os, re, socket, subprocess, sys, tomllib, urllib.parse
from pathlib import Path
wheels, site = sys.argv[1], sys.argv[2]
if site not in sys.path:
    sys.path.insert(0, site)  # the script puts SITE on PYTHONPATH; so does this, for what it installs
proj = tomllib.loads(Path("pyproject.toml").read_text())["project"]
reqs = proj["dependencies"] + proj["optional-dependencies"]["gpu"]
def present(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
def pip(args: list[str], timeout: int) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--only-binary", ":all:",
           "--target", site, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode == 0, (p.stderr.strip().splitlines() or ["?"])[-1][:200]
    except subprocess.TimeoutExpired:
        return False, f"pip timed out after {timeout} s"
# 1. every wheel of the wheelhouse whose project this python lacks (pydantic-core and friends too)
have_wheels = Path(wheels).is_dir() and any(Path(wheels).glob("*.whl"))
if have_wheels:
    todo = [w for w in sorted(Path(wheels).glob("*.whl")) if not present(w.name.split("-")[0])]
    if todo:
        ok, why = pip([str(w) for w in todo], 45)
        for w in todo:
            print(f"installed {w.name} (wheelhouse)" if ok else f"MISSING   {w.name}: {why}")
else:
    print(f"wheelhouse {wheels}: none (set LRT_WHEELHOUSE; scripts/gpu_wheels.sh fills one)")
# 2. what pyproject.toml still names and this python lacks: from the index, if it answers within 3 s
# the checks need the gpu extra and these of the dependencies (+ their own dependencies a CUDA image
# may lack); the other dependencies (datasets, wandb, ...) serve prep/tracking and are only reported
NEEDED = {"pydantic": ["pydantic-core", "annotated-types", "typing-inspection"], "bitsandbytes": [],
          "deepspeed": ["hjson"], "peft": [], "accelerate": [], "safetensors": [], "pyyaml": []}
missing = []
for r in reqs:
    name = re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0]
    v = present(name)
    if v:
        print(f"present   {name} {v}")
    elif name in NEEDED or r in proj["optional-dependencies"]["gpu"]:
        missing += [d for d in [name, *NEEDED.get(name, [])] if not present(d)]
    else:
        print(f"absent    {name} (not needed by the GPU checks)")
host = urllib.parse.urlparse(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")).hostname or "pypi.org"
index = False
if missing:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        index = True
    except OSError as e:
        print(f"index     {host} unreachable ({e}): not installing from it")
notes = []
for name in missing:
    ok, why = pip(["--timeout", "5", "--retries", "0", name], 25) if index else (False, "not in the wheelhouse, no index")
    print(f"installed {name} (index)" if ok else f"MISSING   {name}: {why}")
    if not ok:
        notes.append(name)
try:
    subprocess.run([sys.executable, "-c", "import lrt.train.loop"], check=True, capture_output=True, text=True, timeout=60)
except subprocess.CalledProcessError as e:
    print(f"NOTE: lrt cannot be imported ({(e.stderr.strip().splitlines() or ['?'])[-1]}): carry its wheels "
          "(scripts/gpu_wheels.sh fills .whl/)")
    sys.exit(1)
print("NOTE: not available here, the checks needing them skip: " + ", ".join(notes) if notes else "all requirements present")
EOF
  part install "$STATUS" "$SECS" "$(grep '^NOTE\|^all requirements' "$OUT/logs/install.log" | tail -n 1 | cut -c1-400)${NOTE:+ $NOTE}"
  grep -E '^(installed|MISSING)' "$OUT/logs/install.log" | sed 's/^/[gpu_check]   /'
else
  part install skipped 0 "no CUDA device: nothing to install for the GPU checks"
fi

# ---- gpu tests ---------------------------------------------------------------------------------------
[ "$CUDA" = 1 ] && export DS_ACCELERATOR=cuda  # tests/conftest.py defaults DeepSpeed to the CPU otherwise
TO=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TO=(--timeout 240)
run gpu-tests "$(limit 420 130)" "$PY" -m pytest -p no:cacheprovider -m gpu tests/test_gpu_paths.py -rA -q "${TO[@]}" \
  --junitxml "$OUT/junit.xml"
if [ "$CUDA" = 1 ]; then
  part gpu-tests "$STATUS" "$SECS" "$(tail -n 1 "$OUT/logs/gpu-tests.log" | cut -c1-300)${NOTE:+ $NOTE}"
  [ "$STATUS" = ok ] || FAILED=1
else  # without CUDA every test must skip with its reason: anything else is a failure of the suite
  if [ "$STATUS" = ok ] && grep -q "needs a CUDA device" "$OUT/logs/gpu-tests.log" && ! grep -qE "[0-9]+ (passed|failed)" "$OUT/logs/gpu-tests.log"; then
    part gpu-tests skipped "$SECS" "every test skipped: $(grep -m1 -o 'needs a CUDA device[^)]*)' "$OUT/logs/gpu-tests.log")"
  else
    part gpu-tests failed "$SECS" "without CUDA every gpu test should skip: $(tail -n 1 "$OUT/logs/gpu-tests.log")"; FAILED=1
  fi
fi
grep -E '^(PASSED|FAILED|SKIPPED|ERROR)' "$OUT/logs/gpu-tests.log" | cut -c1-200 | sed 's/^/[gpu_check]   /'

# ---- throughput --------------------------------------------------------------------------------------
run throughput "$(limit 110 20)" "$PY" -m lrt.cli bench throughput --arch "${LRT_GPU_THROUGHPUT_ARCH:-qwen2-1.5b}" --seq 4096 \
  --batch 1 --steps 5 --warmup 2 --json "$OUT/figures/throughput.json"
if [ "$CUDA" = 1 ]; then
  part throughput "$STATUS" "$SECS" "$(tail -n 1 "$OUT/logs/throughput.log" | cut -c1-300)"
  [ "$STATUS" = ok ] || FAILED=1
elif grep -q "no CUDA device" "$OUT/logs/throughput.log"; then
  part throughput skipped "$SECS" "$(grep -m1 'no CUDA device' "$OUT/logs/throughput.log" | sed 's/^error: //' | cut -c1-300)"
else
  part throughput failed "$SECS" "expected the no-CUDA refusal: $(tail -n 1 "$OUT/logs/throughput.log")"; FAILED=1
fi

# ---- summary -----------------------------------------------------------------------------------------
run summary 20 "$PY" scripts/gpu_summary.py "$OUT" "$(( $(date +%s) - T0 ))"
[ "$STATUS" = ok ] || { echo "[gpu_check] summary failed: $NOTE"; FAILED=1; }
echo "[gpu_check] total $(( $(date +%s) - T0 ))s; summary: $OUT/summary.md, $OUT/summary.json"
if [ "$FAILED" = 1 ]; then
  echo "[gpu_check] FAILED: a part failed or ran out of time (see $OUT/summary.md); exit 1"
  exit 1
fi
if [ "$CUDA" != 1 ]; then
  echo "[gpu_check] no CUDA device: every CUDA part was skipped (reasons above and in $OUT/summary.md); exit 3"
  exit 3
fi
echo "[gpu_check] every part passed; exit 0"
exit 0
