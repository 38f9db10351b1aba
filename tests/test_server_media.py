"""The server's media (gemma_runtime/server.py): chat messages with image_url data: URLs get
Model.generate's greedy tokens for the same rendered prompt and images, in the order of the parts;
/v1/models lists the input modalities; remote URLs, files, bad base64, unsupported formats, media
the artifact has no encoder for and media beyond the context are each a 400; the media are
decoded and encoded off the event loop."""

import base64
import concurrent.futures
import io
import json
import re
import threading
import types
import wave

import numpy as np
import pytest

import gemma_runtime
from gemma_runtime.chat import render
from gemma_runtime.tokenizer import Tokenizer
from media_util import MEDIA_PIECES, PLACEHOLDER, png, shared_artifact
from test_chat_tokens import gemma1_like_tokenizer
from test_server import LiveServer
from gemma_runtime import api_models, chat_request
from gemma_runtime.api_errors import ApiError

IMAGES = [png(40, 30, seed=1), png(20, 50, seed=2)]
NEW = 8


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return shared_artifact("gemma3", tmp_path_factory)


@pytest.fixture(scope="module")
def server(artifact):
    live = LiveServer(artifact, max_batch=2, max_queue=8)
    yield live
    live.close()


@pytest.fixture(scope="module")
def model(artifact):
    return gemma_runtime.load(artifact, threads=1)


def expected(model, content: str, images: list[bytes]):
    prompt = render([{"role": "user", "content": content}], model.chat_format())
    return model.generate(prompt, images=images, max_new_tokens=NEW), len(model.prepare(prompt, images)[0])


def test_models_lists_the_input_modalities(server):
    status, body = server.get("/v1/models")[:2]
    assert status == 200 and json.loads(body)["data"][0]["input_modalities"] == ["text", "image"]


def test_chat_with_images_equals_generate(server, model):
    """Parts in order: text, image 1, text, image 2; each image where its part was."""
    mark = PLACEHOLDER["gemma3"]
    content = [text_part("ab"), image_part(IMAGES[0]), text_part("c"), image_part(IMAGES[1])]
    reference, prompt_tokens = expected(model, f"ab{mark}c{mark}", IMAGES)
    done = server.client.chat.completions.create(model=server.service.name, temperature=0, max_tokens=NEW,
                                                 messages=[{"role": "user", "content": content}])
    assert done.choices[0].message.content == reference.text
    assert done.usage.prompt_tokens == prompt_tokens and done.usage.completion_tokens == len(reference.token_ids)
    swapped, _ = expected(model, f"ab{mark}c{mark}", IMAGES[::-1])
    assert swapped.token_ids != reference.token_ids  # so the order above is checked
    chunks = server.client.chat.completions.create(
        model=server.service.name, temperature=0, max_tokens=NEW, stream=True,
        messages=[{"role": "user", "content": [image_part(IMAGES[1]), text_part("d")]}])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(model, f"{mark}d", IMAGES[1:])[0].text


def chat(content, role: str = "user", **extra) -> dict:
    return {"messages": [{"role": role, "content": content}], "max_tokens": 2, **extra}


BAD = [
    (chat([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]), "invalid_image_url",
     "fetches no URLs"),
    (chat([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]), "invalid_image_url", "reads no files"),
    (chat([{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]), "invalid_image_url", "reads no files"),
    (chat([{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]), None, "an image_url part is"),
    (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}]), "invalid_base64",
     "not valid base64"),
    (chat([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]), "invalid_image_url",
     "data:image/<type>;base64"),
    (chat([{"type": "image_url", "image_url": {"url": data_url(b"<svg/>", "image/svg+xml")}}]),
     "invalid_image_format", "unsupported image type image/svg\\+xml"),
    (chat([image_part(b"not an image at all")]), None, "image"),
    (chat([image_part(IMAGES[0][:60])]), None, "image"),
    (chat([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]), "unsupported_content",
     "takes no audio"),
    (chat([{"type": "input_image", "image_url": "x"}]), "unsupported_content", "takes image_url parts"),
    (chat([image_part(IMAGES[0])], role="assistant"), "unsupported_content", "only user messages"),
    (chat([text_part(PLACEHOLDER["gemma3"] + "x"), image_part(IMAGES[0])]), None, "2 <start_of_image>.* 1 image"),
    (chat([image_part(IMAGES[0])] * 30), "context_length_exceeded", "256"),
]


@pytest.mark.parametrize("body,code,message", BAD, ids=range(len(BAD)))
def test_bad_media_are_a_400(server, body, code, message):
    status, reply = server.post("/v1/chat/completions", body)
    assert status == 400, reply
    error = reply["error"]
    assert error["code"] == code and error["param"] == "messages"
    assert re.search(message, error["message"]), error["message"]


def test_media_are_decoded_and_encoded_off_the_event_loop(server):
    """While one request's media are being prepared (held here), the server answers others."""
    model = server.service.model
    held, release, threads = threading.Event(), threading.Event(), []
    prepare = model.prepare

    def slow_prepare(*args, **kwargs):
        threads.append(threading.current_thread())
        held.set()
        assert release.wait(60)
        return prepare(*args, **kwargs)

    model.prepare = slow_prepare
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(server.post, "/v1/chat/completions", chat([image_part(IMAGES[0])]))
            assert held.wait(60)
            assert server.get("/health")[0] == 200
            status, reply = server.post("/v1/completions", {"prompt": "abc", "max_tokens": 2})
            assert status == 200 and reply["choices"][0]["finish_reason"]
            release.set()
            assert pending.result(60)[0] == 200
    finally:
        release.set()
        model.prepare = prepare
    assert threads and threads[0] is not server.thread


def wav(samples: int = 1600, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(np.zeros(samples, np.int16).tobytes())
    return out.getvalue()


def gemma4_model():
    """A stand-in model whose manifest takes images and audio as Gemma 4's does."""
    tokenizer = Tokenizer("tokenizer.model", gemma1_like_tokenizer(MEDIA_PIECES["gemma4"]), bos_id=2)
    section = {"image": {"kind": "gemma4", "token_id": 380}, "audio": {"kind": "gemma4", "token_id": 382}}
    return types.SimpleNamespace(manifest=types.SimpleNamespace(multimodal=section), tokenizer=tokenizer)


def test_gemma4_placeholders_are_the_tokenizer_pieces_of_its_media_tokens():
    model = gemma4_model()
    prompt = chat_request.ChatPrompt("")
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav()).decode(), "format": "wav"}}
    parts = api_models.Message(role="user", content=[text_part("hi"), image_part(IMAGES[0]), audio, text_part("a"),
                                                     text_part("b")]).content
    text = chat_request._content(model, 0, "user", parts, prompt)
    assert text == "hi<|image|><|audio|>a\nb"
    assert prompt.images == [IMAGES[0]] and prompt.audio == [wav()]
    assert chat_request.input_modalities(model) == ["text", "image", "audio"]
    mp3 = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}
    with pytest.raises(ApiError, match="unsupported audio format 'mp3'") as refused:
        chat_request._content(model, 0, "user", api_models.Message(role="user", content=[mp3]).content, prompt)
    assert refused.value.status == 400 and refused.value.code == "invalid_audio_format"


def test_a_bad_part_names_the_parts_taken(server):
    status, reply = server.post("/v1/chat/completions", chat([{"type": "text", "text": 5}]))
    assert status == 400 and reply["error"]["param"] == "messages"
    assert reply["error"]["message"] == "'messages[0].content[0]': a text part is {'type': 'text', 'text': <string>}"
    status, reply = server.post("/v1/chat/completions", chat([{"type": "video", "video": "x"}]))
    assert status == 400 and reply["error"]["message"].endswith("{'type': 'text', 'text': ...} or image_url parts")


def test_a_body_over_the_limit_is_a_413(artifact):
    """Images travel as base64 in the body: one over --max-body-mib is refused before it is read
    (content-length) or as it arrives (chunked)."""
    import http.client

    small = chat([image_part(IMAGES[1])])
    limit = len(json.dumps(small)) + 100
    live = LiveServer(artifact, max_batch=1, max_queue=2, max_body_bytes=limit)
    try:
        body = json.dumps(chat([image_part(IMAGES[0] * 20)])).encode()
        assert len(body) > 2 * limit
        status, reply = live.post("/v1/chat/completions", body)
        assert status == 413 and reply["error"]["code"] == "request_too_large"
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
        connection.request("POST", "/v1/chat/completions", body=iter([body[:limit // 2], body[limit // 2:]]),
                           headers={"content-type": "application/json"}, encode_chunked=True)
        answer = connection.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "request_too_large"
        status, reply = live.post("/v1/chat/completions", small)
        assert status == 200, reply
    finally:
        live.close()
