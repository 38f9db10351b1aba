"""The peer engines of benchmarks/decode.py, run in their own environment (.bench-venv) as
subprocesses; each subcommand prints one JSON line on stdout.

  hf-from-gguf GGUF OUT        an HF folder (fp32) from a GGUF file, through transformers' GGUF loader
  build-genai HF OUT [--precision P]  onnxruntime-genai's model builder for the CPU (-p P -e cpu;
                               fp32 unless told: int8 and int4 for benchmarks/precision.py)
  logits-genai GENAI IDS OUT   teacher-forced logits [len, vocab] of each id sequence in the JSON file
                               IDS, one forward pass each, written as OUT/<i>.npy
  run-hf HF [...]              transformers eager
  run-genai GENAI [--threads]  onnxruntime-genai; without --threads its session defaults are kept
  run-llama GGUF [--threads]   llama.cpp through llama-cpp-python (built from source in its own venv;
                               n_threads and n_threads_batch both set to --threads)

Timing uses gemma_export.bench.time_generation and random_prompt (numpy only), so every engine is
timed by the same loop over the same prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # gemma_export.bench without installing the project in the peers' venv
from gemma_export.bench import peak_rss_mib, random_prompt, time_generation  # noqa: E402


def hf_from_gguf(gguf: Path, out: Path) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
    model.hf_quantizer = None  # dequantized to fp32 on load; saving refuses a "quantized" model
    del model.config.quantization_config
    model.save_pretrained(out)
    # transformers 5.24 writes these two; gemma-export's config reader refuses them (reported), and
    # neither says anything about the math, so every engine reads the same folder without them
    config = json.loads((out / "config.json").read_text())
    for field in ("_model_name_or_path", "unk_token_id"):
        config.pop(field, None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"hf_folder": str(out), "architecture": type(model).__name__}


def _flatten_gemma3_rope(config) -> None:
    """onnxruntime-genai 0.18 reads flat rope fields; transformers 5 nests them per layer type.
    Global layers take full_attention's theta (read by Model.__init__ before make_rope_init),
    local layers sliding_attention's (Gemma3Model reads rope_local_base_freq)."""
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return
    if "full_attention" in rope:
        config.rope_theta = rope["full_attention"]["rope_theta"]
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])
    elif "rope_theta" in rope:
        config.rope_theta = rope["rope_theta"]


def build_genai(hf: Path, out: Path, precision: str = "fp32", extra: list[str] | None = None) -> dict:
    import runpy

    import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path as `builders`)
    import builders.base

    original_init = builders.base.Model.__init__

    def init(self, config, *args, **kwargs):
        _flatten_gemma3_rope(config)
        original_init(self, config, *args, **kwargs)

    def save_processing(self, model_name_or_path, extra_kwargs, out_dir):
        pass  # the benchmark feeds token ids; the random checkpoint has no tokenizer

    builders.base.Model.__init__ = init
    builders.base.Model.save_processing = save_processing
    sys.argv = ["builder", "-i", str(hf), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(out / ".cache")]
    if extra:  # builder extra options, e.g. int4_algo_config=k_quant_mixed
        sys.argv += ["--extra_options", *extra]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
    return {"genai_folder": str(out)}


def run_hf(hf: Path, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    cfg = model.config
    prompt = random_prompt(prompt_tokens, cfg.vocab_size, cfg.bos_token_id)
    state = {}

    @torch.inference_mode()
    def prefill(ids: list[int]):
        state["cache"] = transformers.DynamicCache(config=cfg)
        # logits for the last position only, as generate() asks for them
        out = model(input_ids=torch.tensor([ids]), past_key_values=state["cache"], use_cache=True,
                    logits_to_keep=1)
        return out.logits[0, -1].numpy()

    @torch.inference_mode()
    def decode(token: int):
        out = model(input_ids=torch.tensor([[token]]), past_key_values=state["cache"], use_cache=True)
        return out.logits[0, -1].numpy()

    result = time_generation(prefill, decode, prompt, new_tokens, repeats)
    return {"engine": "transformers eager", "threads": torch.get_num_threads(), **result,
            "peak_rss_mib": peak_rss_mib()}


def run_genai(folder: Path, prompt_tokens: int, new_tokens: int, repeats: int, threads: int | None) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    if threads is not None:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    genai_cfg = json.loads((folder / "genai_config.json").read_text())["model"]
    window = genai_cfg["decoder"].get("sliding_window", {}).get("window_size", 0)
    # GroupQueryAttention refuses a cache shorter than the sliding window
    max_length = max(prompt_tokens + new_tokens, window)
    prompt = random_prompt(prompt_tokens, genai_cfg["vocab_size"], genai_cfg["bos_token_id"])
    state = {}

    def prefill(ids: list[int]):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        state["gen"] = og.Generator(model, params)
        state["gen"].append_tokens(np.array([ids], np.int32))
        return state["gen"].get_logits().reshape(-1)

    def decode(token: int):
        # append_tokens runs the model on the token: one forward per new token, with no search or
        # end-of-sequence logic in the way (the loop is forced to exactly new_tokens)
        state["gen"].append_tokens(np.array([[token]], np.int32))
        return state["gen"].get_logits().reshape(-1)

    result = time_generation(prefill, decode, prompt, new_tokens, repeats)
    return {"engine": "onnxruntime-genai", "threads": threads, "max_length": max_length, **result,
            "peak_rss_mib": peak_rss_mib()}


def run_llama(gguf: Path, prompt_tokens: int, new_tokens: int, repeats: int, threads: int | None) -> dict:
    import numpy as np
    from llama_cpp import Llama

    threads = threads or None
    llm = Llama(model_path=str(gguf), n_ctx=prompt_tokens + new_tokens + 8, n_threads=threads,
                n_threads_batch=threads, n_batch=max(prompt_tokens, 8), logits_all=False, verbose=False)
    prompt = random_prompt(prompt_tokens, llm.n_vocab(), llm.token_bos())

    def logits() -> np.ndarray:  # the last evaluated token's (llama-cpp-python keeps none without logits_all)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    def prefill(ids: list[int]):
        llm.reset()
        llm.eval(ids)
        return logits()

    def decode(token: int):
        llm.eval([token])
        return logits()

    result = time_generation(prefill, decode, prompt, new_tokens, repeats)
    return {"engine": "llama.cpp", "threads": threads, **result, "peak_rss_mib": peak_rss_mib()}


def logits_llama(gguf: Path, ids_file: Path, out: Path, threads: int | None) -> dict:
    """Teacher-forced logits of every position of each sequence, as llama.cpp computes them."""
    import numpy as np
    from llama_cpp import Llama

    sequences = json.loads(ids_file.read_text())
    llm = Llama(model_path=str(gguf), n_ctx=max(map(len, sequences)) + 8, n_threads=threads or None,
                n_threads_batch=threads or None, n_batch=512, logits_all=True, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    for i, ids in enumerate(sequences):
        llm.reset()
        llm.eval(ids)
        np.save(out / f"{i}.npy", np.asarray(llm.scores[: len(ids)], np.float32))
    return {"sequences": len(sequences)}


def logits_genai(folder: Path, ids_file: Path, out: Path) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    window = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"].get(
        "sliding_window", {}).get("window_size", 0)
    out.mkdir(parents=True, exist_ok=True)
    sequences = json.loads(ids_file.read_text())
    for i, ids in enumerate(sequences):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max(len(ids) + 1, window), do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([ids], np.int32))
        np.save(out / f"{i}.npy", np.asarray(generator.get_output("logits"), np.float32)[0])
    return {"sequences": len(sequences)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hf-from-gguf")
    p.add_argument("gguf", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("build-genai")
    p.add_argument("hf", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--extra", nargs="*", default=[])
    p = sub.add_parser("logits-llama")
    p.add_argument("model", type=Path)
    p.add_argument("ids", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("logits-genai")
    p.add_argument("model", type=Path)
    p.add_argument("ids", type=Path)
    p.add_argument("out", type=Path)
    for name in ("run-hf", "run-genai", "run-llama"):
        p = sub.add_parser(name)
        p.add_argument("model", type=Path)
        p.add_argument("--prompt-tokens", type=int, default=128)
        p.add_argument("--new-tokens", type=int, default=128)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.command == "hf-from-gguf":
        result = hf_from_gguf(args.gguf, args.out)
    elif args.command == "build-genai":
        result = build_genai(args.hf, args.out, args.precision, args.extra)
    elif args.command == "logits-llama":
        result = logits_llama(args.model, args.ids, args.out, args.threads)
    elif args.command == "logits-genai":
        result = logits_genai(args.model, args.ids, args.out)
    elif args.command == "run-hf":
        result = run_hf(args.model, args.prompt_tokens, args.new_tokens, args.repeats)
    elif args.command == "run-llama":
        result = run_llama(args.model, args.prompt_tokens, args.new_tokens, args.repeats, args.threads)
    else:
        result = run_genai(args.model, args.prompt_tokens, args.new_tokens, args.repeats, args.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
