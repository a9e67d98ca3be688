"""`POST /v1/embeddings`, answered by the memory deployment's encoder (all-MiniLM-L6-v2, 384 dimensions).

OpenAI's request and response shapes: `input` as a string, a list of strings, a list of token ids or a
list of token-id lists (ids of the encoder's own WordPiece vocabulary, decoded before encoding);
`encoding_format` `float` or `base64` (little-endian float32, as OpenAI sends it and its SDK asks for by
default). The model cannot shorten its vectors, so `dimensions` is refused rather than ignored, and so is
any field OpenAI's API does not have.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from memory.embedder import Embedded, EmbeddingInput
from personaagent.settings import EmbeddingsSettings
from serving.errors import APIError

TokenId = Annotated[StrictInt, Field(ge=0)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    input: StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]] = Field(
        description="a text, texts, token ids of the encoder's vocabulary, or lists of them"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="refused: the model's vectors have a fixed size")
    user: StrictStr | None = None


def request_inputs(request: EmbeddingRequest, limits: EmbeddingsSettings) -> list[EmbeddingInput]:
    """The inputs as a list (one per vector), each within the limits, else a 400 naming the field."""
    if request.dimensions is not None:
        raise APIError(
            400,
            f"dimensions: not supported: {limits.served_model_name} has a fixed vector size",
            param="dimensions",
        )
    raw = request.input
    inputs: list[EmbeddingInput]
    if isinstance(raw, str):
        inputs = [raw]
    elif raw and all(isinstance(item, int) for item in raw):
        inputs = [list(raw)]  # type: ignore[arg-type]  # one token-id list
    else:
        inputs = list(raw)  # type: ignore[arg-type]
    if not inputs:
        raise APIError(400, "input: must not be empty", param="input")
    if len(inputs) > limits.max_inputs:
        raise APIError(400, f"input: at most {limits.max_inputs} inputs per request", param="input")
    for n, item in enumerate(inputs):
        if len(item) == 0:
            raise APIError(400, f"input[{n}]: must not be empty", param="input")
        if len(item) > limits.max_input_chars:
            what = "characters" if isinstance(item, str) else "token ids"
            raise APIError(400, f"input[{n}]: at most {limits.max_input_chars} {what}", param="input")
    return inputs


def embedding_response(
    embedded: Embedded, encoding_format: Literal["float", "base64"], model: str
) -> dict[str, Any]:
    """OpenAI's `list` of `embedding` objects with usage (embeddings read no completion tokens)."""
    vectors = np.asarray(embedded.vectors, dtype="<f4")
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.tobytes()).decode("ascii")
            if encoding_format == "base64"
            else row.tolist(),
        }
        for i, row in enumerate(vectors)
    ]
    tokens = embedded.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
