# Sourced by scripts/setup.sh and scripts/lock.sh: where pip finds torch's +cpu build.
# torch_index_args PYTHON [PIN] sets the array `torch_index` to the pip options needed for PIN (e.g.
# torch==2.13.0+cpu; default: any +cpu torch): none where the machine's own pip configuration already
# offers it offline (a local wheel folder in `find-links`), else the PyTorch CPU index (TORCH_CPU_INDEX
# overrides it), where +cpu builds are published: PyPI has only the CUDA build of the same version.
torch_index_args() {
  local python="$1" pin="${2:-torch}"
  torch_index=()
  if "$python" -m pip --disable-pip-version-check install -q --dry-run --no-deps --no-index \
      --ignore-installed --report - "$pin" 2>/dev/null | grep -q '"version": "[^"]*+cpu"'; then
    return 0
  fi
  torch_index=(--extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
}
