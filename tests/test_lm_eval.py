"""lm-evaluation-harness (extra `[eval]`) against the live server on loopback: a small local
multiple-choice task (loglikelihood: echo and prompt logprobs) and a generate-until task through
its `local-completions` model give the same accuracies, per-choice loglikelihoods (within 1e-3) and
generations as its own `hf` model on the transformers checkpoint. The tasks are written here, as
YAML over JSON-lines files, so nothing is downloaded.

`add_bos_token` goes to both models, as lm-eval asks for Gemma: local-completions then sends token
ids that start with BOS, which the server keeps as they are. Without it, the server would add the
BOS Gemma needs (its rule for token-id prompts), and lm-eval, which reads the echoed logprobs at
its own token counts, would read them one token early."""

import json
import os

import numpy as np
import pytest
import torch

from gemma_export.export import export
from gemma_export.targets import ExportOptions
from test_chat_tokens import gemma1_like_tokenizer
from test_server import LiveServer
from tiny import write_checkpoint

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the [eval] extra")

MAX_SEQ_LEN = 96
TOLERANCE = 1e-3
LETTERS = slice(363, 384)  # the test tokenizer's "▁" and letters
WORDS = ["ab", "cd", "bad", "cab", "dab", "fed", "hag", "be", "ge"]
MULTIPLE_CHOICE = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GENERATE = """task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["h"]
  max_gen_toks: 6
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Gemma 3 with a transformers tokenizer that starts a text with BOS, as Gemma's does. Its
    (tied) embedding rows are zero but for the special ids and the letters, so that greedy text is
    letters (logit 0 for the rest) and both sides' texts compare, rather than byte pieces that each
    decodes its own way."""
    import safetensors.numpy
    import transformers

    folder = write_checkpoint("gemma3", tmp_path_factory.mktemp("lm_eval") / "ckpt")
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    weights = safetensors.numpy.load_file(folder / "model.safetensors")
    embeddings = weights["model.embed_tokens.weight"]
    keep = np.zeros(len(embeddings), bool)
    keep[[0, 1, 2]] = keep[LETTERS] = True
    embeddings[~keep] = 0
    safetensors.numpy.save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, add_bos_token=True, model_max_length=MAX_SEQ_LEN)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_eval") / "tiny"
    export(checkpoint, out, ExportOptions(max_seq_len=MAX_SEQ_LEN))
    live = LiveServer(out, max_batch=4, max_queue=64)
    yield live
    live.close()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The folder of the two tasks (YAML and data)."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    rng = np.random.default_rng(0)

    def phrase(n: int) -> str:
        return " ".join(rng.choice(WORDS, n))

    choice_docs = [{"question": phrase(5), "choices": [" " + phrase(int(rng.integers(1, 4))) for _ in range(3)],
                    "answer": int(rng.integers(3))} for _ in range(6)]
    generate_docs = [{"question": phrase(4), "answer": " " + phrase(1)} for _ in range(4)]
    for name, docs, template in (("choice", choice_docs, MULTIPLE_CHOICE), ("generate", generate_docs, GENERATE)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(template.format(data=data))
    return folder


def evaluate(model: str, model_args: dict, tasks, cache) -> dict:
    from lm_eval.tasks import TaskManager

    os.environ["HF_DATASETS_CACHE"] = str(cache)  # the JSON builder's cache, not the user's
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["tiny_choice", "tiny_generate"],
                                   task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
                                   batch_size=1, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0)


def test_local_completions_against_the_server_equals_hf(server, checkpoint, tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ours = evaluate("local-completions", {
        "base_url": server.url + "/v1/completions", "model": "tiny", "tokenizer": str(checkpoint),
        "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_length": MAX_SEQ_LEN,
        "add_bos_token": True, "num_concurrent": 1, "max_retries": 1}, tasks, tmp_path / "datasets")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only wait on each other (50x slower on 2 busy cores)
    try:
        reference = evaluate("hf", {"pretrained": str(checkpoint), "dtype": "float32", "device": "cpu",
                                    "add_bos_token": True}, tasks, tmp_path / "datasets")
    finally:
        torch.set_num_threads(threads)
    for task, metric in (("tiny_choice", "acc,none"), ("tiny_generate", "exact_match,none")):
        assert ours["results"][task][metric] == reference["results"][task][metric]
    got = [[ll for (ll, _), in s["resps"]] for s in ours["samples"]["tiny_choice"]]
    want = [[ll for (ll, _), in s["resps"]] for s in reference["samples"]["tiny_choice"]]
    assert len(got) == 6 and all(len(g) == 3 for g in got)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() < TOLERANCE
    greedy = [[g for (_, g), in s["resps"]] for s in ours["samples"]["tiny_choice"]]
    assert greedy == [[g for (_, g), in s["resps"]] for s in reference["samples"]["tiny_choice"]]
    generated = [s["resps"][0][0] for s in ours["samples"]["tiny_generate"]]
    assert generated == [s["resps"][0][0] for s in reference["samples"]["tiny_generate"]]
    assert any(generated), "the tiny model should generate some text before the stop"
