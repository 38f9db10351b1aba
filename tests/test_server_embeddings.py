"""/v1/embeddings (gemma_runtime/server_embeddings.py) driven by the official `openai` client over
the tiny EmbeddingGemma: strings, token ids, dimensions, base64, usage; an embedding model answers
the completion routes with a 400, and a decoder answers /v1/embeddings likewise."""

import types

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from gemma_runtime.api_errors import ApiError
from gemma_runtime.server import Service, create_app
from gemma_runtime.server_embeddings import EmbeddingRequest, embeddings
from tiny_embedding import HIDDEN

TEXTS = ["abc ab", "a b c d e f g h i j", "ssss"]


@pytest.fixture(scope="module")
def service(embedding_artifacts):
    return Service(embedding_artifacts("ort-cpu", "fp32"), name="tiny-embedding")


@pytest.fixture(scope="module")
def http(service):
    with TestClient(create_app(service)) as client:
        yield client


@pytest.fixture(scope="module")
def client(http):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def test_strings_token_ids_dimensions_and_base64(client, service):
    model = service.model
    answer = client.embeddings.create(model="tiny-embedding", input=TEXTS, dimensions=16)
    ours = np.asarray([d.embedding for d in answer.data])
    assert [d.index for d in answer.data] == [0, 1, 2] and ours.shape == (3, 16)
    assert np.allclose(ours, model.embed(TEXTS, dimensions=16), atol=1e-6)
    tokens = sum(len(model.embedder.token_ids(t)) for t in TEXTS)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens
    ids = model.embedder.token_ids(TEXTS[0])
    for given in (ids, [ids]):  # token ids, one list or a list of them
        one = client.embeddings.create(model="tiny-embedding", input=given)
        assert np.allclose(one.data[0].embedding, model.embed(TEXTS[0]), atol=1e-6) and len(one.data) == 1
    # the client asks for base64 by default and decodes it; the float form is checked above
    assert len(client.embeddings.create(model="tiny-embedding", input="abc").data[0].embedding) == HIDDEN


def test_prompt_name_and_refusals(http, service):
    body = http.post("/v1/embeddings", json={"input": "abc", "prompt_name": "query"}).json()
    assert np.allclose(body["data"][0]["embedding"], service.model.embed("abc", prompt_name="query"), atol=1e-6)
    for request, param in [({"input": []}, "input"), ({"input": "a", "dimensions": HIDDEN + 1}, "dimensions"),
                           ({"input": "a", "prompt_name": "nope"}, "prompt_name"),
                           ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
                           ({"input": "a" * 100}, "input"), ({"input": "a", "model": "other"}, "model")]:
        response = http.post("/v1/embeddings", json=request)
        assert response.status_code in (400, 404) and response.json()["error"]["param"] == param, request


def test_an_embedding_model_refuses_completions(http):
    for route, body in [("/v1/completions", {"prompt": "abc"}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]:
        response = http.post(route, json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "unsupported_model" and "embedding model" in response.text
    assert http.get("/metrics").status_code == 200 and http.get("/health").json()["status"] == "ok"


def test_a_decoder_refuses_embeddings():
    decoder = types.SimpleNamespace(name="tiny", model=types.SimpleNamespace(embedder=None))
    with pytest.raises(ApiError) as refused:
        embeddings(decoder, EmbeddingRequest(input="abc"))
    assert refused.value.status == 400 and refused.value.code == "unsupported_model"
    assert "no embedding head" in refused.value.message
