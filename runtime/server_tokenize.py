"""/tokenize and /detokenize (vLLM's shapes), and the check every route makes of a body's model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemma_runtime import api_models as api
from gemma_runtime.api_errors import ApiError
from gemma_runtime.chat_request import chat_prompt

if TYPE_CHECKING:
    from gemma_runtime.server import Service


def check_model(service: Service, model: str | None) -> None:
    if model not in (None, service.name):
        raise ApiError(404, f"the model '{model}' does not exist; this server has '{service.name}'", "model",
                       "model_not_found")


def tokenize(service: Service, body: api.TokenizeRequest) -> dict:
    check_model(service, body.model)
    tokenizer = service.model.tokenizer
    if tokenizer is None:
        raise ApiError(400, "this artifact has no tokenizer", "prompt")
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give either 'prompt' or 'messages'", "prompt")
    if body.messages is not None:
        prompt = chat_prompt(service.model, body.messages)
        if prompt.images or prompt.audio:
            raise ApiError(400, "/tokenize counts text: images and audio expand at generation", "messages",
                           "unsupported_content")
        text = prompt.text
    else:
        text = body.prompt
    tokens = tokenizer.encode(text, add_bos=body.add_special_tokens)
    return api.TokenizeResponse(count=len(tokens), max_model_len=service.model.max_seq_len, tokens=tokens,
                                token_strs=[service.texts.text(t) for t in tokens] if body.return_token_strs
                                else None).model_dump()


def detokenize(service: Service, body: api.DetokenizeRequest) -> dict:
    check_model(service, body.model)
    tokenizer = service.model.tokenizer
    if tokenizer is None:
        raise ApiError(400, "this artifact has no tokenizer", "tokens")
    vocab = service.model.manifest.config["vocab_size"]
    outside = [t for t in body.tokens if not 0 <= t < vocab]
    if outside:
        raise ApiError(400, f"token id {outside[0]} is outside the vocabulary (0..{vocab - 1})", "tokens")
    return api.DetokenizeResponse(prompt=tokenizer.decode(body.tokens)).model_dump()
