"""A prompt template with a name and a version: what wrote a stored record is recorded as `name@vN`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    text: str

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def render(self, **values: str) -> str:
        return self.text.format(**values)
