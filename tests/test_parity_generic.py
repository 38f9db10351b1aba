"""The generic target against transformers' Gemma classes (independent reference), fp32."""

import numpy as np
import pytest

import gemma_runtime
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import CONFIGS, hf_model

NAMES = list(CONFIGS)


@pytest.fixture(scope="module")
def references():
    return {name: hf_model(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_whole_prompt_matches_transformers(name, generic_artifacts, references):
    model = gemma_runtime.load(generic_artifacts[name])
    ids = prompt(1, 40)  # longer than the tiny sliding window (6)
    assert_fp32_parity(model.logits(ids), hf_logits(references[name], ids))


@pytest.mark.parametrize("name", NAMES)
def test_token_by_token_through_kv_cache_matches_transformers(name, generic_artifacts, references):
    model = gemma_runtime.load(generic_artifacts[name])
    ids = prompt(2, 30)
    assert_fp32_parity(stepwise_logits(model, ids, prefill=5), hf_logits(references[name], ids)[4:])


@pytest.mark.parametrize("name", ["gemma-mqa", "gemma3"])
def test_ragged_batch_generates_what_each_prompt_generates_alone(name, generic_artifacts):
    model = gemma_runtime.load(generic_artifacts[name])
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [model.generate(p, max_new_tokens=12).token_ids for p in (short, long)]
    batch = model.generate([short, long], max_new_tokens=12)
    assert [r.token_ids for r in batch] == alone
    assert all(len(t) > 0 for t in alone)


def test_greedy_generation_matches_transformers(generic_artifacts, references):
    model = gemma_runtime.load(generic_artifacts["gemma-mha"])
    ids = prompt(5, 9)
    result = model.generate(ids, max_new_tokens=10)
    expected = references["gemma-mha"].generate(
        __import__("torch").tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=[1])[0, len(ids):]
    expected = [t for t in expected.tolist()]
    if 1 in expected:
        expected = expected[: expected.index(1)]
    assert result.token_ids == expected
    assert result.finish_reason == ("length" if len(expected) == 10 else "stop")


def test_multi_query_cache_keeps_one_kv_head(generic_artifacts):
    model = gemma_runtime.load(generic_artifacts["gemma-mqa"])
    model.backend.reserve(1)
    model.backend.step([[2, 5, 6]], [0], [3])
    assert model.backend.cache[0].shape == (1, 1, 3, 32)
    assert model.manifest.decoder.inputs["past_key.0"].shape == ("batch", 1, "past", 32)
    assert {b.layout for b in model.manifest.kv_cache.buffers} == {"concat"}


def test_sampling_is_reproducible_with_a_seed(generic_artifacts):
    model = gemma_runtime.load(generic_artifacts["gemma-mqa"])
    ids = prompt(6, 5)
    a = model.generate(ids, max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=7).token_ids
    b = model.generate(ids, max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=7).token_ids
    c = model.generate(ids, max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, seed=8).token_ids
    assert a == b and a != c
