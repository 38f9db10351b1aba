"""The growing-cache backend (target generic) under the step protocol: it declares that it keeps
no row apart, starts a new sequence in every row or continues them all together, refuses any
other step in one line, and the Engine refuses it naming what it needs."""

import numpy as np
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.backends.protocol import Capabilities
from gemma_runtime.engine import Engine, default_max_batch
from gemma_runtime.errors import RuntimeInputError

REFUSED = "the growing-cache backend .* keeps no row apart"


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("growing") / "gemma3"
    export(tiny_checkpoints["gemma3"], out, ExportOptions(target="generic", max_seq_len=32))
    return out


def test_capabilities_and_the_engine_refusal(artifact):
    model = gemma_runtime.load(artifact)
    assert model.backend.capabilities == Capabilities(keeps_rows=False, row_views=False, devices=("cpu",),
                                                      max_batch=None)
    assert default_max_batch(model) == 1
    with pytest.raises(RuntimeInputError, match=r"growing KV cache \(targets generic, openvino\) holds one sequence: "
                                                r"it serves one request at a time \(max batch 1, not 8\)"):
        Engine(model)
    assert model.engine is None  # still usable directly
    assert len(model.generate([2, 5, 6], max_new_tokens=2).token_ids) <= 2


def test_the_engine_serves_one_request_at_a_time_as_generate_does(artifact):
    """One slot: queued requests (one longer than a prefill chunk, one sampled, one cancelled) each
    restart the cache, and each gets what generate gives it alone."""
    alone = gemma_runtime.load(artifact)
    prompts = [[2, 5, 6, 7], [2, *range(10, 22)], [2, 9, 8]]
    expected = [alone.generate(prompts[0], max_new_tokens=6).token_ids,
                alone.generate(prompts[1], max_new_tokens=5).token_ids,
                alone.generate(prompts[2], max_new_tokens=6, temperature=1.0, seed=4).token_ids]
    engine = Engine(gemma_runtime.load(artifact), max_batch=1, prefill_chunk=5)
    assert not engine.reuse_prefixes
    cancelled = engine.submit(engine.request(prompts[1], 15))
    requests = [engine.submit(engine.request(prompts[0], 6)), engine.submit(engine.request(prompts[1], 5)),
                engine.submit(engine.request(prompts[2], 6, temperature=1.0, seed=4))]
    engine.step()
    engine.step()
    cancelled.cancel()
    while engine.step():
        continue
    assert [r.tokens for r in requests] == expected and all(expected)
    assert engine.metrics.cached_prompt_tokens == 0
    # an API's n > 1: with no second slot, each copy feeds the prompt itself, one after another
    original = engine.request(prompts[2], 6, temperature=1.0, seed=4)
    copies = engine.copies(original, [5, 6])
    for r in (original, *copies):
        engine.submit(r)
    while engine.step():
        continue
    assert [r.tokens for r in (original, *copies)] == [
        expected[2], *(alone.generate(prompts[2], max_new_tokens=6, temperature=1.0, seed=s).token_ids for s in (5, 6))]


def test_new_sequences_then_all_rows_together(artifact):
    model = gemma_runtime.load(artifact)
    backend = model.backend
    short, long = [2, 5, 6], [2, 7, 8, 9, 10]
    backend.reserve(2)
    ids = np.array([short + [0, 0], long])
    first = backend.step(ids, [0, 0], [3, 5], keep=[[1, 2], [3, 4]])
    np.testing.assert_allclose(first[0], model.logits(short)[1:3], rtol=1e-4, atol=1e-4)
    backend.reserve(2)
    backend.step(ids, [0, 0], [3, 5])
    then = backend.step([[11], [12]], [3, 5], [1, 1])[:, 0]
    np.testing.assert_allclose(then[1], model.logits(long + [12])[-1], rtol=1e-4, atol=1e-4)


def test_other_steps_are_refused_in_one_line(artifact):
    backend = gemma_runtime.load(artifact).backend
    backend.reserve(2)
    backend.step([[2, 5], [2, 6]], [0, 0], [2, 2])
    for args, kwargs in [(([[3, 4], [5, 0]], [2, 2], [2, 1]), {}),  # ragged continuation
                         (([[3], [4]], [2, 1], [1, 1]), {}),  # a row behind the others
                         (([[3]], [2], [1]), {"first_row": 1}),  # one row alone
                         (([[3]], [0], [1]), {})]:  # a new sequence in some rows only
        with pytest.raises(RuntimeInputError, match=REFUSED):
            backend.step(*args, **kwargs)
