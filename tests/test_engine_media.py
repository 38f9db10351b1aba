"""The continuous-batching engine with images (gemma_runtime/engine.py): an image request gets
Model.generate's greedy tokens whatever the prefill chunk (an image longer than the chunk goes
whole in one call, never split), beside text requests, with and without row views, and when
another row near the end of the context narrows the padded call below the image's length."""

import numpy as np
import pytest

import gemma_runtime
from gemma_runtime.engine import Engine
from gemma_runtime.errors import RuntimeInputError
from media_util import PLACEHOLDER, png, shared_artifact
from padded_backend import padded as padded_model

PROMPT = f"ab{PLACEHOLDER['gemma3']}c{PLACEHOLDER['gemma3']}d"
FIRST = f"{PLACEHOLDER['gemma3']}ab"  # an image after 4 tokens: <bos> \n \n <start_of_image>
IMAGES = [png(40, 30, seed=1), png(20, 50, seed=2)]
NEW = 8


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return shared_artifact("gemma3", tmp_path_factory)


@pytest.fixture(scope="module")
def solo(artifact):
    """Model.generate's greedy tokens for the image prompt and a text prompt, alone."""
    model = gemma_runtime.load(artifact, threads=1)
    text = [2, *np.random.default_rng(0).integers(4, 364, 20).tolist()]
    return {"image": model.generate(PROMPT, images=IMAGES, max_new_tokens=NEW).token_ids,
            "first": model.generate(FIRST, images=IMAGES[:1], max_new_tokens=NEW).token_ids,
            "text": model.generate(text, max_new_tokens=NEW).token_ids, "text_prompt": text}


class Spy:
    """Records each step call's width and spliced columns per row."""

    def __init__(self, backend):
        self.calls, self._step = [], backend.step
        backend.step = self

    def __call__(self, ids, past, seq, keep=None, first_row=0, spliced=None):
        self.calls.append((ids.shape[1], [None if s is None else np.asarray(s.columns) for s in spliced or []]))
        return self._step(ids, past, seq, keep, first_row=first_row, spliced=spliced)


def run(engine: Engine, requests: list) -> None:
    for request in requests:
        engine.submit(request)
    while engine.step():
        continue
    assert all(r.finish_reason in ("stop", "length") for r in requests)


def images_whole(spy: Spy, image_tokens: int) -> bool:
    """Every call that splices, splices whole images (each a run of image_tokens columns)."""
    runs = [len(columns) for _, rows in spy.calls for columns in rows if columns is not None]
    return bool(runs) and all(n % image_tokens == 0 for n in runs)


@pytest.mark.parametrize("chunk,budget,padded", [(128, None, False), (3, 3, False), (2, 2, True), (5, 1, False)])
def test_an_image_request_beside_a_text_request_gets_the_solo_tokens(artifact, solo, chunk, budget, padded):
    """chunk 3 and 2: each image (4 soft tokens) goes whole in a call wider than the chunk; budget
    1: the image request meets its images in the one-token call and waits for its own call."""
    loaded = gemma_runtime.load(artifact, threads=1)
    engine = Engine(padded_model(loaded) if padded else loaded, max_batch=2, prefill_chunk=chunk, prefill_budget=budget)
    assert engine.model.backend.capabilities.row_views == (not padded)
    spy = Spy(engine.model.backend)
    text = engine.request(solo["text_prompt"], NEW)
    image = engine.request(PROMPT, NEW, images=IMAGES)
    assert image.media is not None and text.media is None
    run(engine, [text, image])
    assert image.tokens == solo["image"] and text.tokens == solo["text"]
    tokens = engine.model.manifest.multimodal["image"]["tokens_per_image"]
    assert images_whole(spy, tokens)
    if chunk < tokens:
        assert any(width >= tokens > chunk for width, rows in spy.calls if any(c is not None for c in rows))


def test_an_image_waits_while_a_row_near_the_context_end_narrows_the_padded_call(artifact, solo):
    """Padded calls are as wide as their widest piece but no wider than any busy row's room: an
    image that does not fit waits, and goes whole once the narrowing row has finished."""
    engine = Engine(padded_model(gemma_runtime.load(artifact, threads=1)), max_batch=2, prefill_chunk=256)
    spy = Spy(engine.model.backend)
    model = engine.model
    room = 4  # call k has room - k + 1 columns: the 4 tokens before the image in call 1, then too few
    long = [2, *np.random.default_rng(1).integers(4, 364, model.max_seq_len - room - 1).tolist()]
    text = engine.submit(engine.request(long, room))
    engine.step()  # call 0: the long prompt fed, its first token
    image = engine.submit(engine.request(FIRST, NEW, images=IMAGES[:1]))
    while engine.step():
        continue
    assert text.finish_reason == "length" and len(text.tokens) == room  # its last token in call room - 1
    assert image.tokens == solo["first"]
    spliced = [k for k, (_, rows) in enumerate(spy.calls) if any(c is not None for c in rows)]
    assert spliced == [room]  # the image waited in calls 2 .. room - 1, then went whole
    assert images_whole(spy, engine.model.manifest.multimodal["image"]["tokens_per_image"])


def test_media_requests_are_checked_in_the_callers_thread(artifact):
    engine = Engine(gemma_runtime.load(artifact, threads=1), max_batch=1)
    with pytest.raises(RuntimeInputError, match="text prompt"):
        engine.request([2, 5, 6], 4, images=IMAGES)
    with pytest.raises(RuntimeInputError, match="not a readable image|image"):
        engine.request(PROMPT, 4, images=[b"not an image", IMAGES[1]])
    with pytest.raises(RuntimeInputError, match="2 .*placeholder.* for 1 image"):
        engine.request(PROMPT, 4, images=IMAGES[:1])
    assert not engine.waiting and engine.metrics.requests == 0


def test_text_calls_of_the_media_decoder_keep_their_embeddings(artifact):
    """A call splicing nothing (every decode step) embeds its tokens: transformers' logits on text."""
    import torch

    from parity import assert_fp32_parity
    from tiny import hf_multimodal_model

    ids = [2, *np.random.default_rng(2).integers(4, 364, 15).tolist()]
    with torch.no_grad():
        expected = hf_multimodal_model("gemma3")(torch.tensor([ids])).logits[0].float().numpy()
    assert_fp32_parity(gemma_runtime.load(artifact, threads=1).logits(ids), expected)
