"""The generic target's growing cache and sampling (its parity with transformers is in the
conformance suite, tests/test_conformance.py)."""

import gemma_runtime
from parity import prompt


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
