"""The server's /v1/embeddings (OpenAI's shape): `input` a string, a list of strings, a list of
token ids or a list of token-id lists; `dimensions` (the first n, normalized again); `encoding_format`
float or base64 (little-endian float32, as OpenAI's); usage counts every input's tokens, the
prompt's and the tokenizer's framing included. vLLM's `prompt_name` extension picks one of the
model's prompts (EmbeddingGemma: query, document, ...). A request is tokenized and run in a worker
thread; concurrent requests run their graphs concurrently (onnxruntime sessions are thread-safe).
A decoder artifact answers 400: it has no embedding head."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Literal, Optional, Union

import numpy as np
from pydantic import Field, field_validator

from gemma_runtime import api_models as api
from gemma_runtime.api_errors import ApiError
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError

if TYPE_CHECKING:
    from gemma_runtime.server import Service

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request


class EmbeddingRequest(api.Request):
    input: api.Prompt = Field(description="a string, a list of strings, a list of token ids or a list of "
                                          "token-id lists")
    model: Optional[str] = None
    dimensions: Optional[int] = Field(None, ge=1, description="the first n dimensions, normalized again")
    encoding_format: Literal["float", "base64"] = "float"
    prompt_name: Optional[str] = Field(None, description="vLLM's extension: one of the model's prompts put before "
                                                         "each text input")
    user: Optional[str] = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, value, handler):
        given = api.prompt_forms(value, handler)
        if isinstance(given, list) and len(given) > MAX_INPUTS and not isinstance(given[0], int):
            raise ValueError(f"at most {MAX_INPUTS} inputs")
        return given

    def inputs(self) -> list[Union[str, list[int]]]:
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return [self.input]
        return list(self.input)


class EmbeddingData(api.Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingUsage(api.Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(api.Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def embeddings(service: Service, body: EmbeddingRequest) -> dict:
    """The response body of a validated request for this server's model (raises ApiError)."""
    embedder = service.model.embedder
    if embedder is None:
        raise ApiError(400, f"the model '{service.name}' is a decoder: it has no embedding head (serve an embedding "
                       "model's artifact for /v1/embeddings)", "model", "unsupported_model")
    try:
        result = embedder.embed(body.inputs(), body.prompt_name, body.dimensions)
    except ContextLengthExceeded as e:
        raise ApiError(400, str(e), "input", "context_length_exceeded") from None
    except RuntimeInputError as e:
        param = "dimensions" if "dimensions" in str(e) else "prompt_name" if "prompt" in str(e) else "input"
        raise ApiError(400, str(e), param) from None
    data = [EmbeddingData(index=i, embedding=_encoded(v, body.encoding_format)) for i, v in enumerate(result.vectors)]
    tokens = sum(result.token_counts)
    return EmbeddingResponse(data=data, model=service.name,
                             usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)).model_dump()


def _encoded(vector: np.ndarray, encoding: str) -> Union[list[float], str]:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()

