"""The continuous-batching engine (gemma_runtime/engine.py): requests arriving at different steps,
with prompts of different lengths, get the tokens they get alone; seeds, stops, cancellation,
the bounded queue and the context limit."""

import subprocess
import sys

import numpy as np
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_export.verify.compare import FP32_RELATIVE_TOLERANCE
from gemma_runtime.engine import Engine, QueueFull
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from padded_backend import padded

MAX_SEQ_LEN = 48


@pytest.fixture(scope="module")
def artifact(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "gemma3"
    export(tiny_checkpoints["gemma3"], out, ExportOptions(max_seq_len=MAX_SEQ_LEN))
    return out


def prompts(vocab: int, lengths) -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [[2, *rng.integers(4, vocab, n - 1).tolist()] for n in lengths]


def drain(engine: Engine) -> None:
    """Steps until nothing is left to run."""
    while engine.step():
        continue


def decided_prefix(model, prompt: list[int], tokens: list[int]) -> list[int]:
    """The solo tokens up to the first whose top-2 margin is within fp32 tolerance."""
    logits = model.logits(prompt + tokens)[len(prompt) - 1:]
    for i, row in enumerate(logits[: len(tokens)]):
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] <= FP32_RELATIVE_TOLERANCE * np.abs(row).max():
            return tokens[:i]
    return tokens


@pytest.fixture(scope="module")
def ring_artifact(tiny_checkpoints, tmp_path_factory):
    """The onnx target: the sliding layers keep window-sized ring caches."""
    out = tmp_path_factory.mktemp("engine") / "gemma3-onnx"
    export(tiny_checkpoints["gemma3"], out, ExportOptions(target="onnx", max_seq_len=MAX_SEQ_LEN))
    assert any(b.layout == "ring" for b in gemma_runtime.load(out).manifest.kv_cache.buffers)
    return out


@pytest.mark.parametrize("which", ["artifact", "ring_artifact", "padded"])
def test_batched_greedy_equals_each_request_alone(which, request):
    """padded: a backend without row views (TensorRT), where a step is one padded call over every
    busy row."""
    artifact = request.getfixturevalue("artifact" if which == "padded" else which)
    model = gemma_runtime.load(artifact)
    vocab = model.manifest.config["vocab_size"]
    batch = prompts(vocab, [3, 17, 9, 30, 1 + 5, 22])
    solo = [model.generate(p, max_new_tokens=10).token_ids for p in batch]
    loaded = gemma_runtime.load(artifact)
    engine = Engine(padded(loaded) if which == "padded" else loaded, max_batch=3, prefill_chunk=8, prefill_budget=12)
    assert engine.model.backend.capabilities.row_views == (which != "padded")
    requests = []
    arrivals = {0: [0, 1], 2: [2], 3: [3, 4], 7: [5]}  # step -> requests submitted before it
    for step in range(200):
        for i in arrivals.get(step, []):
            requests.append((i, engine.submit(engine.request(batch[i], max_new_tokens=10))))
        if not engine.step() and step > max(arrivals):
            break
    assert len(requests) == len(batch) and all(r.finish_reason for _, r in requests)
    for i, request in requests:
        expected = decided_prefix(model, batch[i], solo[i])
        assert len(expected) >= 3, "the random model decides too few tokens to compare"
        assert request.tokens[: len(expected)] == expected, i
    assert engine.metrics.generated_tokens == sum(len(r.tokens) for _, r in requests)


def test_a_burst_of_prompts_within_the_prefill_budget_is_taken_in_one_step(artifact):
    model = gemma_runtime.load(artifact)
    burst = prompts(model.manifest.config["vocab_size"], [6, 9, 7, 8])
    firsts = {}
    for budget in (8, 32):
        engine = Engine(gemma_runtime.load(artifact), max_batch=4, prefill_chunk=8, prefill_budget=budget)
        requests = [engine.submit(engine.request(p, max_new_tokens=4)) for p in burst]
        engine.step()
        firsts[budget] = [r.first_token_s is not None for r in requests]
    assert firsts[32] == [True] * 4  # every prompt fed in chunks (the 9-token one ends in the decode call)
    assert firsts[8] == [True, False, False, False]  # the oldest alone; the others advance by a prompt token


def test_a_model_driven_by_an_engine_refuses_direct_calls(artifact):
    model = gemma_runtime.load(artifact)
    Engine(model, max_batch=1)
    with pytest.raises(RuntimeInputError, match="driven by a continuous-batching Engine"):
        model.generate([2, 5, 6], max_new_tokens=2)
    with pytest.raises(RuntimeInputError, match="another Engine"):
        Engine(model)


def test_a_seed_gives_the_same_tokens_whatever_else_runs(artifact):
    model = gemma_runtime.load(artifact)
    p = prompts(model.manifest.config["vocab_size"], [7, 12, 5])
    alone = Engine(model, max_batch=2)
    mine = alone.submit(alone.request(p[0], 12, temperature=1.0, seed=123))
    drain(alone)
    crowded = Engine(gemma_runtime.load(artifact), max_batch=2)
    crowded.submit(crowded.request(p[1], 12, temperature=1.0, seed=5))
    crowded.step()
    again = crowded.submit(crowded.request(p[0], 12, temperature=1.0, seed=123))
    crowded.submit(crowded.request(p[2], 12, temperature=0.7, seed=9))
    drain(crowded)
    assert again.tokens == mine.tokens and len(mine.tokens) > 0


def test_cancel_frees_the_slot_at_the_next_step(artifact):
    engine = Engine(gemma_runtime.load(artifact), max_batch=1)
    p = prompts(engine.model.manifest.config["vocab_size"], [4, 4])
    first = engine.submit(engine.request(p[0], 30))
    second = engine.submit(engine.request(p[1], 2))
    engine.step()
    made = len(first.tokens)
    first.cancel()
    drain(engine)
    assert first.finish_reason == "cancelled" and 1 <= made == len(first.tokens)
    assert second.finish_reason == "length" and len(second.tokens) == 2


def test_queue_and_context_limits(artifact):
    engine = Engine(gemma_runtime.load(artifact), max_batch=1, max_queue=2)
    p = prompts(engine.model.manifest.config["vocab_size"], [4])[0]
    engine.submit(engine.request(p, 2))
    engine.submit(engine.request(p, 2))
    with pytest.raises(QueueFull):
        engine.submit(engine.request(p, 2))
    with pytest.raises(ContextLengthExceeded):
        engine.request(p * 12, 1)  # 48 tokens: no room
    with pytest.raises(ContextLengthExceeded):
        engine.request(p, MAX_SEQ_LEN)
    assert engine.request(p).max_new_tokens == MAX_SEQ_LEN - len(p)  # None: the rest of the context


def test_generation_that_reaches_the_context_ends_with_length(artifact):
    engine = Engine(gemma_runtime.load(artifact), max_batch=2, prefill_chunk=5)
    p = prompts(engine.model.manifest.config["vocab_size"], [40])[0]
    request = engine.submit(engine.request(p))
    drain(engine)
    assert request.finish_reason in ("length", "stop")
    if request.finish_reason == "length":
        assert len(p) + len(request.tokens) == MAX_SEQ_LEN


def test_the_engine_runs_in_its_thread(artifact):
    engine = Engine(gemma_runtime.load(artifact), max_batch=2).start()
    try:
        p = prompts(engine.model.manifest.config["vocab_size"], [5, 9, 3])
        requests = [engine.submit(engine.request(x, 6)) for x in p]
        for r in requests:
            r.result(timeout=60)
        assert all(r.finish_reason in ("length", "stop") for r in requests)
    finally:
        engine.stop()


def test_the_engine_never_imports_torch():
    code = ("import sys\nimport gemma_runtime.engine\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def reference_logprobs(logits: np.ndarray, tokens) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x[np.arange(len(tokens)), tokens]


@pytest.mark.parametrize("which", ["artifact", "padded"])
def test_prompt_and_generated_logprobs_are_those_of_the_logits(which, artifact):
    """Prompt logprobs across chunks of a prompt fed beside other requests (row views, and one
    padded call), the first null; each generated token's equals the whole sequence's logits."""
    model = gemma_runtime.load(artifact)
    p = prompts(model.manifest.config["vocab_size"], [19, 6, 11])
    loaded = gemma_runtime.load(artifact)
    engine = Engine(padded(loaded) if which == "padded" else loaded, max_batch=3, prefill_chunk=5, prefill_budget=7)
    others = [engine.submit(engine.request(x, 5)) for x in p[1:]]
    scored = engine.submit(engine.request(p[0], 4, logprobs=3, prompt_logprobs=2))
    drain(engine)
    assert all(o.prompt_token_logprobs == [] and o.generation.logprobs == [] for o in others)
    entries = scored.prompt_token_logprobs
    assert len(entries) == len(p[0]) and entries[0] is None
    assert [e.token for e in entries[1:]] == p[0][1:]
    sequence = p[0] + scored.tokens
    logits = model.logits(sequence)
    expected = reference_logprobs(logits[:-1], sequence[1:])
    got = [e.logprob for e in entries[1:]] + [e.logprob for e in scored.generation.logprobs]
    assert len(got) == len(expected) and np.abs(np.asarray(got) - expected).max() < 1e-4
    for e, row in zip(entries[1:], logits):
        assert [t for t, _ in e.top] == np.argsort(-row)[:2].tolist() and len(e.top) == 2
    assert all(len(e.top) == 3 and e.top[0][0] == e.token for e in scored.generation.logprobs)  # greedy


def test_prompt_logprobs_without_new_tokens(artifact):
    engine = Engine(gemma_runtime.load(artifact), max_batch=1)
    p = prompts(engine.model.manifest.config["vocab_size"], [MAX_SEQ_LEN])[0]
    with pytest.raises(ContextLengthExceeded):
        engine.request(p)  # no room for a default budget
    request = engine.submit(engine.request(p, 0, prompt_logprobs=0))
    drain(engine)
    assert request.finish_reason == "length" and request.tokens == []
    assert len(request.prompt_token_logprobs) == MAX_SEQ_LEN


def test_logit_bias_moves_the_choice(artifact):
    engine = Engine(gemma_runtime.load(artifact), max_batch=2)
    p = prompts(engine.model.manifest.config["vocab_size"], [6])[0]
    plain = engine.submit(engine.request(p, 3))
    forced = engine.submit(engine.request(p, 3, logit_bias={7: 100.0}, logprobs=0))
    drain(engine)
    assert forced.tokens == [7, 7, 7] and plain.tokens[0] != 7
    assert forced.generation.logprobs[0].logprob < -0.5  # logprobs stay those of the raw logits
    with pytest.raises(RuntimeInputError, match="outside the vocabulary"):
        engine.request(p, 3, logit_bias={10 ** 6: 1.0})


@pytest.mark.parametrize("which", ["artifact", "ring_artifact", "padded"])
def test_a_later_turn_reuses_the_cached_history_and_generates_the_same_tokens(which, request):
    """Turn 2's prompt starts with turn 1's prompt and answer: it goes to turn 1's slot and feeds
    only the rest, while another request decodes beside it (its idle-row pads must not disturb the
    kept history); its tokens are those a fresh engine gives. A prompt sharing only its start (the
    system prompt, most of what the slot keeps) reuses that start where the caches hold every
    position, and nothing where a sliding layer keeps a ring (the ring no longer holds it)."""
    artifact = request.getfixturevalue("artifact" if which == "padded" else which)
    vocab = gemma_runtime.load(artifact).manifest.config["vocab_size"]
    system, first, other, second = prompts(vocab, [9, 5, 7, 4])

    def engine() -> Engine:
        loaded = gemma_runtime.load(artifact)
        return Engine(padded(loaded) if which == "padded" else loaded, max_batch=3, prefill_chunk=8)

    warm = engine()
    turn1 = warm.submit(warm.request(system + first[1:], max_new_tokens=6))
    drain(warm)
    history = system + first[1:] + turn1.tokens
    beside = warm.submit(warm.request(other, max_new_tokens=20))
    warm.step()
    turn2 = warm.submit(warm.request(history + second[1:], max_new_tokens=8))
    drain(warm)
    assert turn2.cached_tokens == len(history) - 1  # the last answer token was never fed
    assert warm.metrics.cached_prompt_tokens >= turn2.cached_tokens
    fresh = engine()
    alone = fresh.submit(fresh.request(history + second[1:], max_new_tokens=8))
    drain(fresh)
    assert fresh.metrics.cached_prompt_tokens == 0 and turn2.tokens == alone.tokens and beside.finish_reason

    shared = engine()
    shared.submit(shared.request(system + first[1:], max_new_tokens=1))
    drain(shared)
    sibling = shared.submit(shared.request(system + second[1:], max_new_tokens=2))
    drain(shared)
    assert sibling.cached_tokens == (0 if which == "ring_artifact" else len(system))


@pytest.mark.parametrize("which", ["artifact", "ring_artifact", "padded"])
def test_choices_of_one_prompt_share_its_prefill(which, request):
    """Engine.copies: the prompt (longer than a chunk, fed beside another request) is prefilled once,
    each copy feeding only its last token after taking the original's cache row; each copy's
    tokens are those its seed gives alone; a copy queued behind a full batch feeds its prompt later
    with the same result; prompt logprobs are the original's."""
    artifact = request.getfixturevalue("artifact" if which == "padded" else which)
    vocab = gemma_runtime.load(artifact).manifest.config["vocab_size"]
    prompt, other = prompts(vocab, [19, 6])

    def engine(max_batch: int) -> Engine:
        loaded = gemma_runtime.load(artifact)
        return Engine(padded(loaded) if which == "padded" else loaded, max_batch=max_batch, prefill_chunk=8)

    def sampled(e: Engine, seed: int, **options):
        return e.request(prompt, 6, temperature=1.0, seed=seed, **options)

    shared = engine(4)
    shared.submit(shared.request(other, 10))
    shared.step()
    original = sampled(shared, 1, prompt_logprobs=1)
    copies = shared.copies(original, [2, 3])
    for r in [original, *copies]:
        shared.submit(r)
    with pytest.raises(RuntimeInputError, match="before it is submitted"):
        shared.copies(original, [4])
    drain(shared)
    assert shared.metrics.prompt_tokens == len(other) + len(prompt) + len(copies)
    assert shared.metrics.cached_prompt_tokens == len(copies) * (len(prompt) - 1)
    assert [c.cached_tokens for c in copies] == [len(prompt) - 1] * 2
    assert all(c.prompt_token_logprobs == original.prompt_token_logprobs for c in copies)
    assert len(original.prompt_token_logprobs) == len(prompt)

    queued = engine(2)
    first = sampled(queued, 1)
    late = queued.copies(first, [2, 3])
    for r in [first, *late]:
        queued.submit(r)
    drain(queued)
    assert late[0].cached_tokens == len(prompt) - 1
    # the last found no free slot: it fed its prompt later, reusing a finished row's where a slot keeps it whole
    assert late[1].cached_tokens == (0 if which == "ring_artifact" else len(prompt) - 1)

    for seed, got in zip([1, 2, 3], [original, *copies]):
        alone = engine(1)
        mine = alone.submit(sampled(alone, seed))
        drain(alone)
        assert got.tokens == mine.tokens and len(mine.tokens) == 6
    assert [r.tokens for r in [first, *late]] == [r.tokens for r in [original, *copies]]
    assert len({tuple(r.tokens) for r in [original, *copies]}) > 1  # the seeds differ
