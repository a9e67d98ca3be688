"""`/v1/completions` and `/v1/embeddings` on the real stack, driven by the clients people use: the official
`openai` SDK (completions plain, streamed, echo with logprobs; embeddings as floats, as the SDK's default
base64, a list), and LangChain's `OpenAIEmbeddings`. Before these routes existed every call here was a 404.
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

from tests.stack.harness import ALICE_KEY, Stack

MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
HELLO_WORLD_IDS = [7592, 2088]  # "hello world" in the encoder's WordPiece vocabulary


def test_models_lists_the_engine_model_and_the_embedding_model(stack: Stack) -> None:
    assert {m.id for m in stack.openai().models.list()} >= {MODEL, EMBEDDING_MODEL}


# -- completions --------------------------------------------------------------------------------------------


def test_a_plain_completion(stack: Stack) -> None:
    completion = stack.openai().completions.create(
        model=MODEL, prompt="The three primary colours are", max_tokens=6, temperature=0
    )
    assert completion.object == "text_completion" and completion.model == MODEL
    [choice] = completion.choices
    assert isinstance(choice.text, str) and choice.text and choice.finish_reason in {"length", "stop"}
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 6


def test_a_streamed_completion_has_its_text_in_chunks_and_usage_last(stack: Stack) -> None:
    client = stack.openai()
    whole = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices]) > 1 and text == whole.choices[0].text
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )  # type: ignore[union-attr]


def test_echo_with_logprobs_returns_the_prompt_and_a_logprob_per_token(stack: Stack) -> None:
    prompt = "Rivers flow into the"
    completion = stack.openai().completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    [choice] = completion.choices
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == choice.text  # every token, the prompt's included
    assert len(logprobs.token_logprobs) == len(logprobs.tokens)  # type: ignore[arg-type]
    generated = logprobs.top_logprobs[-1]
    assert generated is not None and 1 <= len(generated) <= 3  # the chosen token and the top 2


def test_token_id_prompts_and_stop(stack: Stack) -> None:
    client = stack.openai()
    tokens = client.completions.create(model=MODEL, prompt=[504, 3258, 314], max_tokens=4, temperature=0)
    assert tokens.usage is not None and tokens.usage.prompt_tokens == 3
    stopped = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[","]
    )
    assert "," not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_completions_are_salted_within_their_api_key(stack: Stack) -> None:
    """The same long prompt is a prefix-cache hit for the key that sent it, and none for another key."""
    prompt = " ".join(f"Line {i}: rivers carry water to the sea." for i in range(60))
    admin, alice = stack.openai(), stack.openai(api_key=ALICE_KEY)

    def cached(client: openai.OpenAI) -> int:
        usage = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return usage.prompt_tokens_details.cached_tokens or 0

    cached(admin)
    assert cached(admin) > 0
    assert cached(alice) == 0


def test_bad_completions_are_openai_errors(stack: Stack) -> None:
    client = stack.openai()
    with pytest.raises(openai.BadRequestError) as missing:
        client.completions.create(model=MODEL, prompt="", max_tokens=2)
    assert missing.value.body["param"] == "prompt"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=5000)  # past the 4096 context


# -- embeddings ---------------------------------------------------------------------------------------------


def test_embeddings_as_floats_and_as_the_sdks_default_base64_agree(stack: Stack) -> None:
    client = stack.openai()
    texts = ["The cat sat on the mat.", "Rivers flow into the sea."]
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    default = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # the SDK asks for base64
    assert floats.model == EMBEDDING_MODEL and [d.index for d in floats.data] == [0, 1]
    a, b = (np.array([d.embedding for d in r.data]) for r in (floats, default))
    assert a.shape == (2, 384)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert floats.usage.prompt_tokens > 2 * 2 and floats.usage.total_tokens == floats.usage.prompt_tokens


def test_an_embedding_of_token_ids_is_the_embedding_of_their_text(stack: Stack) -> None:
    client = stack.openai()
    by_text = client.embeddings.create(model=EMBEDDING_MODEL, input="hello world", encoding_format="float")
    by_ids = client.embeddings.create(model=EMBEDDING_MODEL, input=HELLO_WORLD_IDS, encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-5)
    assert by_text.usage.prompt_tokens == 4  # [CLS] hello world [SEP]


def test_embedding_refusals_name_their_field(stack: Stack) -> None:
    client = stack.openai()
    with pytest.raises(openai.BadRequestError) as dimensions:
        client.embeddings.create(model=EMBEDDING_MODEL, input="hi", dimensions=128)
    assert dimensions.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=EMBEDDING_MODEL, input="word " * 400)
    assert "at most 256 tokens" in too_long.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")


def test_langchain_openai_embeddings(stack: Stack) -> None:
    # LangChain's default (check_embedding_ctx_length=True) first tokenizes with tiktoken (OpenAI's own
    # vocabulary, downloaded on first use) and sends those token ids: ids that mean other words in this
    # encoder's WordPiece vocabulary. Off, it sends the texts, as LangChain's docs advise for any
    # OpenAI-compatible server that is not OpenAI.
    embeddings = OpenAIEmbeddings(
        model=EMBEDDING_MODEL, base_url=f"{stack.base_url}/v1", api_key=stack.api_key,  # type: ignore[arg-type]
        check_embedding_ctx_length=False, max_retries=0,
    )  # fmt: skip
    texts = ["The cat sat on the mat.", "Rivers flow into the sea."]
    documents = embeddings.embed_documents(texts)
    query = embeddings.embed_query(texts[1])
    sdk = stack.openai().embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    np.testing.assert_allclose(documents, [d.embedding for d in sdk.data], atol=1e-5)
    np.testing.assert_allclose(query, documents[1], atol=1e-5)
