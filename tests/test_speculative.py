"""Speculative decoding (runtime/speculative.py): greedy output identical to plain decoding token
for token on tiny models of several families and targets (the onnx target's window-sized rings of
6 slots wrap many times, Gemma 4 shares caches between layers, the generic target's growing cache
is cut back), with drafts accepted and rejected at every column; sampling keeps the target's
distribution (chi-square with a fixed seed); stops, lengths and the sampler's settings compose."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

import gemma_runtime
from cli_util import cli
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.engine import Engine
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.generation import Generation
from gemma_runtime.sampling import Sampler
from gemma_runtime.speculative import PromptLookup, drafter, ring_limit, verify
from padded_backend import padded
from parity import prompt
from tiny import write_checkpoint

MAX_SEQ_LEN = 64
CASES = [("gemma-mqa", "ort-cpu"), ("gemma2", "onnx"), ("gemma3", "onnx"), ("gemma4-shared", "onnx"),
         ("gemma3", "generic")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("speculative")
    checkpoints, out = {}, {}
    for name, target in CASES:
        if name not in checkpoints:
            checkpoints[name] = write_checkpoint(name, root / name)
        folder = root / f"{name}-{target}"
        export(checkpoints[name], folder, ExportOptions(target=target, max_seq_len=MAX_SEQ_LEN))
        out[name, target] = gemma_runtime.load(folder, threads=1)
    return out


class Oracle:
    """A drafter that knows the plain output and proposes it, with every `wrong`-th proposal (counted
    over all drafts) replaced by another token: runs accepted whole and rejected at each column."""

    def __init__(self, prompts: list[list[int]], outputs: list[list[int]], k: int, wrong: int):
        self.k, self.wrong, self.count = k, wrong, 0
        self.known = [(p, o) for p, o in zip(prompts, outputs)]

    def draft(self, context, limit):
        prompt_ids, output = next((p, o) for p, o in self.known if list(context[:len(p)]) == p)
        done = len(context) - len(prompt_ids)
        proposal = []
        for token in output[done: done + min(limit, self.k)]:
            self.count += 1
            proposal.append(token if self.count % self.wrong else (token + 1) % 384)
        return proposal


PROMPTS = [prompt(1, 9), prompt(2, 5) * 3, prompt(3, 14)]  # the second repeats itself: prompt lookup finds it


@pytest.mark.parametrize("name,target", CASES)
def test_greedy_output_is_plain_decoding_token_for_token(name, target, models):
    model = models[name, target]
    batch = target != "generic"  # the growing cache speculates for one prompt at a time
    prompts = PROMPTS if batch else PROMPTS[:1]
    plain = [r.token_ids for r in model.generate(prompts, max_new_tokens=40)]
    assert len(set(map(len, plain))) == 1 and len(plain[0]) == 40
    for wrong in (2, 3, 7):
        oracle = Oracle(prompts, plain, k=8, wrong=wrong)
        assert [r.token_ids for r in model.generate(prompts, max_new_tokens=40, speculative=oracle)] == plain
        stats = model.speculation_stats
        assert 0 < stats.accepted < stats.drafted  # drafts accepted and rejected
    lookup = model.generate(prompts, max_new_tokens=40, speculative="prompt-lookup")
    assert [r.token_ids for r in lookup] == plain and model.speculation_stats.drafted > 0
    if batch:  # one prompt alone too
        one = model.generate(PROMPTS[1], max_new_tokens=40, speculative=Oracle(PROMPTS[1:2], plain[1:2], 8, 3))
        assert one.token_ids == plain[1]


def test_the_rings_lose_nothing_to_rejected_drafts(models):
    """Without the rings' rewind a rejection leaves drafts in slots the next queries read: the output
    differs (so the test above would catch a ring that is not rewound)."""
    model = models["gemma3", "onnx"]
    assert ring_limit(model.manifest) == 5  # a ring of 6 slots: the token before and 5 drafts
    plain = model.generate(PROMPTS[0], max_new_tokens=40).token_ids
    backend = model.backend
    rewind = backend.rewind
    backend.rewind = lambda row, length: None
    try:
        broken = model.generate(PROMPTS[0], max_new_tokens=40, speculative=Oracle(PROMPTS[:1], [plain], 5, 2))
    finally:
        backend.rewind = rewind
    assert broken.token_ids != plain


def test_a_ring_refuses_a_rewind_past_what_it_holds(models):
    backend = models["gemma3", "onnx"].backend
    backend.reserve(1)
    ids = prompt(4, 20)
    backend.step([ids[:12]], [0], [12])
    backend.step([ids[12:20]], [12], [8])  # 8 tokens through a ring of 6: the first two are gone
    with pytest.raises(RuntimeInputError, match="cannot be rewound to 13"):
        backend.rewind(0, 13)
    backend.rewind(0, 15)  # within the ring


def test_stops_and_lengths_end_an_accepted_run_exactly_there(models):
    model = models["gemma-mqa", "ort-cpu"]
    ids = PROMPTS[0]
    plain = model.generate(ids, max_new_tokens=40).token_ids
    every = Oracle([ids], [plain], k=8, wrong=10 ** 9)  # every draft right
    for n in (1, 2, 7, 13):
        result = model.generate(ids, max_new_tokens=n, speculative=every)
        assert (result.token_ids, result.finish_reason) == (plain[:n], "length")
    stop_ids = model.stop_ids
    model.stop_ids = {plain[11]}  # a stop id inside a run of accepted drafts
    try:
        first = plain.index(plain[11])
        result = model.generate(ids, max_new_tokens=40, speculative=every)
        assert (result.token_ids, result.finish_reason) == (plain[:first], "stop")
    finally:
        model.stop_ids = stop_ids


def test_sampling_keeps_the_targets_distribution(models):
    """One verify call's logits on a tiny model; the rule run 20000 times with a seeded sampler
    (temperature 1.3, top-k 12, a logit bias): the first token's counts fit the sampler's own
    distribution (chi-square), the draft is accepted with its probability, and after an accepted
    draft the next token follows the next column's distribution."""
    backend = models["gemma-mqa", "ort-cpu"].backend
    backend.reserve(1)
    ids = PROMPTS[0]
    backend.step([ids], [0], [len(ids)])
    bias = {7: 2.0, 9: -1.0}
    columns = backend.step([[5, 0]], [len(ids)], [2], [[0, 1]])[0]

    def distribution(logits):
        x = logits.astype(np.float64).copy()
        for token, b in bias.items():
            x[token] += b
        x /= 1.3
        kth = np.sort(x)[-12]
        p = np.where(x >= kth, np.exp(x - x.max()), 0)
        return p / p.sum()

    first, second = distribution(columns[0]), distribution(columns[1])
    draft = int(np.argsort(first)[-2])  # the second likeliest token: accepted about p(draft) of the time
    sampler = Sampler(1.3, 12, None, seed=0, logit_bias=bias)
    trials = 20000
    counts, after = np.zeros_like(first), np.zeros_like(second)
    for _ in range(trials):
        generation = Generation(sampler, set(), 10, None)
        tokens = [generation.tokens[-1] for _ in verify(generation, columns, [draft])]
        counts[tokens[0]] += 1
        if len(tokens) == 2:
            after[tokens[1]] += 1
    for observed, p in ((counts, first), (after, second)):
        support = p > 0
        assert observed[~support].sum() == 0
        assert scipy_stats.chisquare(observed[support], p[support] * observed.sum()).pvalue > 1e-3
    accepted = counts[draft] / trials
    assert abs(accepted - first[draft]) < 4 * np.sqrt(first[draft] * (1 - first[draft]) / trials)
    assert 0.05 < first[draft] < 0.95  # the test covers both outcomes


def test_sampled_output_is_plain_decoding_for_the_same_seed(models):
    """One random number per token, as plain decoding draws: the same seed samples the same tokens."""
    model = models["gemma4-shared", "onnx"]
    ids = PROMPTS[1]
    plain = model.generate(ids, max_new_tokens=30, temperature=0.9, top_p=0.9, seed=5).token_ids
    lookup = model.generate(ids, max_new_tokens=30, temperature=0.9, top_p=0.9, seed=5,
                            speculative="prompt-lookup:k=6,n=2")
    assert lookup.token_ids == plain


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    lookup = PromptLookup(k=3, n=3)
    assert lookup.draft([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 2, 3, 4], 8) == [6, 7, 2]  # the latest 3-gram match
    assert lookup.draft([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 2, 3, 4], 2) == [6, 7]
    assert lookup.draft([5, 6, 7, 8, 1, 8], 8) == [1, 8]  # no 3- or 2-gram: the 1-gram 8
    assert PromptLookup(k=3, n=3, min_n=2).draft([5, 6, 7, 8, 1, 8], 8) == []
    assert lookup.draft([1, 2, 3], 8) == [] and lookup.draft([4], 8) == []


def test_speculative_option_is_checked():
    assert drafter(None) is None and drafter("none") is None
    assert drafter("prompt-lookup") == PromptLookup()
    assert drafter("prompt-lookup:k=6,n=2,min_n=2") == PromptLookup(6, 2, 2)
    for bad, message in (("medusa", "unknown speculative drafter 'medusa'"), ("prompt-lookup:k=x", "k=x"),
                         ("prompt-lookup:k=0", "k >= 1"), ("prompt-lookup:n=1,min_n=2", "min_n <= n"),
                         (3, "a drafter name or a Drafter")):
        with pytest.raises(RuntimeInputError, match=message):
            drafter(bad)


def test_several_prompts_need_row_views(models):
    with pytest.raises(RuntimeInputError, match="several prompts needs a backend with row views"):
        models["gemma3", "generic"].generate(PROMPTS, max_new_tokens=4, speculative="prompt-lookup")


def engine_run(folder, requests, **options) -> list[tuple[list[int], str]]:
    """The requests (prompt, request options) submitted one per step to a fresh engine of 4 slots."""
    engine = Engine(gemma_runtime.load(folder, threads=1), max_batch=4, **options)
    submitted = []
    for prompt_ids, kwargs in requests:
        submitted.append(engine.submit(engine.request(prompt_ids, **kwargs)))
        engine.step()
    while engine.step():
        continue
    assert engine.speculation is None or engine.speculation.stats.verifies > 0
    return [(r.tokens, r.finish_reason) for r in submitted]


@pytest.mark.parametrize("name,target", [("gemma-mqa", "ort-cpu"), ("gemma3", "onnx")])
def test_the_engine_speculates_with_the_output_of_plain_steps(name, target, models):
    folder = models[name, target].folder
    requests = [(PROMPTS[0], dict(max_new_tokens=30)), (PROMPTS[1], dict(max_new_tokens=None)),  # to the context's end
                (PROMPTS[2], dict(max_new_tokens=25, logit_bias={17: 3.0, 40: 2.5})),
                (PROMPTS[1][:7], dict(max_new_tokens=20, temperature=0.8, top_k=20, seed=3))]
    plain = engine_run(folder, requests)
    assert plain[1][1] == "length" and len(PROMPTS[1]) + len(plain[1][0]) == MAX_SEQ_LEN
    oracle = Oracle([p for p, _ in requests], [tokens for tokens, _ in plain], k=6, wrong=3)
    assert engine_run(folder, requests, speculative=oracle, speculative_rows=4) == plain  # every step speculates
    assert engine_run(folder, requests, speculative="prompt-lookup") == plain  # only while one slot is busy


def test_the_engine_refuses_speculation_without_row_views(models):
    model = padded(gemma_runtime.load(models["gemma-mqa", "ort-cpu"].folder, threads=1))
    with pytest.raises(RuntimeInputError, match="needs a backend with row views"):
        Engine(model, speculative="prompt-lookup")


def test_stop_strings_stream_and_the_cli_option(server_artifact, capsys):
    model = gemma_runtime.load(server_artifact, threads=1)
    text = "abc abc abc abd abc abc"
    plain = model.generate(text, max_new_tokens=30)
    stop = plain.text[len(plain.text) // 2:][:2]
    assert stop and stop.strip()
    stopped = model.generate(text, max_new_tokens=30, stop=[stop])
    assert model.generate(text, max_new_tokens=30, stop=[stop], speculative="prompt-lookup") == stopped
    assert "".join(model.stream(text, max_new_tokens=30, speculative="prompt-lookup:k=3")) == plain.text
    code, stdout, _ = cli(capsys, "generate", server_artifact, "--prompt", text, "--max-new-tokens", "30",
                          "--speculative", "prompt-lookup")
    assert code == 0 and stdout == plain.text + "\n"
    code, _, err = cli(capsys, "generate", server_artifact, "--prompt", text, "--speculative", "lookahead")
    assert code != 0 and "unknown speculative drafter 'lookahead'" in err


def test_the_server_option_gives_its_engine_a_drafter(server_artifact):
    from gemma_runtime.server import Service

    service = Service(server_artifact, max_batch=2, threads=1, speculative="prompt-lookup:k=5")
    try:
        assert service.engine.speculation.drafter == PromptLookup(k=5)
    finally:
        service.close()
