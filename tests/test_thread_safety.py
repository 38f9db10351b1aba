"""One loaded model shared by threads: calls are serialized by the model's lock, so every thread gets
what it would get alone; a thread that calls the model while its own stream is open is refused (it
would wait for itself); a stream that is finished, closed or dropped lets the others in."""

import gc
import threading

import numpy as np
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import RuntimeInputError
from parity import prompt
from test_chat_tokens import with_tokenizer

THREADS = 8
GUARD_S = 60  # against a deadlock only
BUSY = "model is busy with an unfinished stream in this thread"


@pytest.fixture(scope="module")
def model(tiny_checkpoints, tmp_path_factory):
    """gemma3 (rings of sliding layers) on the onnx target: the in-place cache every call shares."""
    root = tmp_path_factory.mktemp("threads")
    folder = with_tokenizer(tiny_checkpoints["gemma3"], root / "ckpt")
    export(folder, root / "out", ExportOptions(target="onnx", max_seq_len=64))
    return gemma_runtime.load(root / "out", threads=1)


def run_in_threads(jobs):
    """Runs each job in its own thread, all released at once; their results in order."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def worker(k, job):
        barrier.wait()
        try:
            results[k] = job()
        except Exception as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k, job)) for k, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD_S)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    assert not errors, errors
    return results


def test_threads_get_what_sequential_calls_get(model):
    """Generate, stream and logits at once, three rounds each, on different prompts and lengths."""
    prompts = [prompt(10 + k, 4 + 5 * k) for k in range(THREADS)]
    texts = ["abc", "a b c d e f g h i"]

    def job(k):
        if k < len(texts):
            return lambda: ["".join(model.stream(texts[k], max_new_tokens=14)) for _ in range(3)]
        if k == len(texts):
            return lambda: [model.logits(prompts[k]) for _ in range(3)]
        return lambda: [model.generate(prompts[k], max_new_tokens=14).token_ids for _ in range(3)]

    sequential = [job(k)()[0] for k in range(THREADS)]
    together = run_in_threads([job(k) for k in range(THREADS)])
    for k, rounds in enumerate(together):
        for got in rounds:
            if isinstance(got, np.ndarray):
                np.testing.assert_array_equal(got, sequential[k])
            else:
                assert got == sequential[k], k
    assert all(len(s) > 0 for s in sequential)


def test_a_call_from_the_thread_of_an_open_stream_is_refused(model):
    ids = prompt(20, 6)
    expected = model.generate(ids, max_new_tokens=6).token_ids
    whole = "".join(model.stream("abc", max_new_tokens=12))
    stream = model.stream("abc", max_new_tokens=12)
    first = next(stream)
    for call in (lambda: model.generate(ids), lambda: model.logits(ids), lambda: next(model.stream("ab"))):
        with pytest.raises(RuntimeInputError, match=BUSY):
            call()
    assert first + "".join(stream) == whole  # the stream itself went on undisturbed
    assert model.generate(ids, max_new_tokens=6).token_ids == expected  # an exhausted stream let go


def test_a_stream_never_started_holds_nothing(model):
    ids = prompt(21, 6)
    stream = model.stream("abc", max_new_tokens=8)
    expected = model.generate(ids, max_new_tokens=6).token_ids
    assert "".join(stream) == "".join(model.stream("abc", max_new_tokens=8))
    assert model.generate(ids, max_new_tokens=6).token_ids == expected


@pytest.mark.parametrize("end", ["close", "drop"])
def test_another_thread_waits_for_an_open_stream_until_it_is_closed_or_dropped(end, model):
    ids = prompt(22, 7)
    expected = model.generate(ids, max_new_tokens=8).token_ids
    stream = model.stream("abc", max_new_tokens=12)
    next(stream)
    done, got = threading.Event(), []
    waiter = threading.Thread(target=lambda: (got.append(model.generate(ids, max_new_tokens=8).token_ids),
                                              done.set()))
    waiter.start()
    assert not done.wait(0.3)  # held by the open stream
    if end == "close":
        stream.close()
    else:
        del stream
        gc.collect()
    assert done.wait(GUARD_S), "the abandoned stream kept the model"
    waiter.join(GUARD_S)
    assert got == [expected]
