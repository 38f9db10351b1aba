"""Long contexts: artifacts exported with a small maximum length, several sliding windows long,
against transformers (fp32) on every CPU target: a whole prompt of exactly max_seq_len tokens, token
by token through each cache up to max_seq_len (the onnx target's window-sized rings wrap around eight
times), greedy generation that fills the context ends with finish_reason "length", and one token
more is refused."""

import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.errors import ContextLengthExceeded, RuntimeInputError
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import hf_model, write_checkpoint

FAMILIES = ["gemma-mqa", "gemma2", "gemma3", "gemma4-shared"]  # Gemma 1, 2, 3, and 4 with shared caches
TARGETS = ["ort-cpu", "onnx", "generic", "tensorrt"]  # tensorrt's graph run by onnxruntime
MAX_SEQ_LEN = 50  # 8 windows of 6 and 2 positions: a ring ends part-way round
LONGEST = prompt(1, MAX_SEQ_LEN)
HEAD = 10  # the prompt that generation continues to max_seq_len
CASES = [(name, target) for name in FAMILIES for target in TARGETS]


@pytest.fixture(scope="module")
def models(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("long-context")
    checkpoints = {**tiny_checkpoints, "gemma4-shared": write_checkpoint("gemma4-shared", root / "gemma4-shared")}
    out = {}
    for name, target in CASES:
        folder = root / f"{name}-{target}"
        export(checkpoints[name], folder, ExportOptions(target=target, max_seq_len=MAX_SEQ_LEN))
        out[name, target] = gemma_runtime.load(folder, threads=1)
    return out


class Reference:
    """transformers' model of a family, its logits of LONGEST, and its greedy choices."""

    def __init__(self, name: str):
        self.model = hf_model(name)
        self.longest = hf_logits(self.model, LONGEST)
        self._argmax: dict[tuple, list[int]] = {}

    def argmax(self, ids: list[int]) -> list[int]:
        """Its choice after each prefix of ids (one forward, remembered: every target of a family
        generates the same tokens)."""
        if tuple(ids) not in self._argmax:
            self._argmax[tuple(ids)] = hf_logits(self.model, ids).argmax(-1).tolist()
        return self._argmax[tuple(ids)]


@pytest.fixture(scope="module")
def references():
    return {name: Reference(name) for name in FAMILIES}


def test_the_longest_prompt_crosses_many_windows(models):
    manifest = models["gemma3", "onnx"].manifest
    rings = {b.length for b in manifest.kv_cache.buffers if b.layout == "ring"}
    assert manifest.kv_cache.max_seq_len == MAX_SEQ_LEN and rings == {6} and MAX_SEQ_LEN // 6 == 8


@pytest.mark.parametrize("name,target", CASES)
def test_whole_prompt_of_max_seq_len_matches_transformers(name, target, models, references):
    assert_fp32_parity(models[name, target].logits(LONGEST), references[name].longest)


@pytest.mark.parametrize("name,target", CASES)
def test_token_by_token_to_max_seq_len_matches_transformers(name, target, models, references):
    model = models[name, target]
    for prefill in (3, 16):  # inside the first window; past two windows (a ring wrapped by the prefill)
        assert_fp32_parity(stepwise_logits(model, LONGEST, prefill), references[name].longest[prefill - 1:])
        with pytest.raises(RuntimeInputError, match="exceed this artifact's maximum length 50"):
            model.backend.step([[LONGEST[0]]], [len(LONGEST)], [1])  # the cache is full


@pytest.mark.parametrize("name,target", CASES)
def test_generation_to_max_seq_len_ends_with_length(name, target, models, references):
    model = models[name, target]
    result = model.generate(LONGEST[:HEAD])  # the default budget: what fits
    assert result.finish_reason == "length" and len(result.token_ids) == MAX_SEQ_LEN - HEAD
    # transformers' greedy tokens: each token is its argmax after the prompt and the tokens before
    sequence = LONGEST[:HEAD] + result.token_ids
    assert result.token_ids == references[name].argmax(sequence)[HEAD - 1:-1]
    explicit = model.generate(LONGEST[:HEAD], max_new_tokens=MAX_SEQ_LEN - HEAD)
    assert explicit.token_ids == result.token_ids and explicit.finish_reason == "length"


@pytest.mark.parametrize("name,target", CASES)
def test_one_token_more_than_max_seq_len_is_refused(name, target, models):
    model = models[name, target]
    too_long = LONGEST + [LONGEST[1]]
    for call in (model.logits, model.generate):
        with pytest.raises(ContextLengthExceeded, match="prompt has 51 tokens; .* maximum sequence length is 50"):
            call(too_long)
    with pytest.raises(ContextLengthExceeded, match=r"prompt \(10 tokens\) and max_new_tokens \(41\) exceed .* 50"):
        model.generate(LONGEST[:HEAD], max_new_tokens=MAX_SEQ_LEN - HEAD + 1)
    full = model.generate(LONGEST)  # nothing fits after it: no tokens, and says why
    assert full.token_ids == [] and full.finish_reason == "length"

