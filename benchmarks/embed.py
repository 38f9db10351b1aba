"""EmbeddingGemma speed and fidelity, one run: texts per second at batch 1 and batch 32 of our
exports (ort-cpu fp32 and fp16 by default) against sentence-transformers on torch, the same thread
count on both sides, over the same texts; and the least cosine between our embeddings and theirs.

The model: an EmbeddingGemma-300M-shaped random checkpoint (Gemma 3 body: hidden 768, 24 layers,
3 heads / 1 KV head, head_dim 256, intermediate 1152, sliding window 512 on 5 of 6 layers, vocab
262144; mean pooling, dense 768 -> 3072 -> 768, Normalize; the query/document prompts) saved by
sentence-transformers, with Gemma 3's own tokenizer (the embedded default model's, which
EmbeddingGemma shares), framing texts with BOS and EOS as EmbeddingGemma's does. Texts: 64 pieces of
the built-in prompts and calibration text (gemma_export.texts), 8 to 96 words, embedded as
documents; tokenization is timed on both sides.

Goal (issue 25): >= 2x sentence-transformers' texts/s at batch 32 on the CPU at equal fidelity.

Run: .venv/bin/python benchmarks/embed.py [--dtypes fp32 fp16] [--threads N] [--repeats 3] [--vocab 262144]
Writes benchmarks/results/embed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".cache" / "bench" / "embedding"
RESULTS = ROOT / "benchmarks" / "results" / "embed.json"
PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
BODY = dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=24, num_attention_heads=3,
            num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
            max_position_embeddings=2048, rms_norm_eps=1e-6, use_bidirectional_attention=True,
            rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)
DENSE_WIDTH = 3072
MAX_SEQ_LENGTH = 2048
BATCHES = (1, 32)


def checkpoint(vocab: int) -> Path:
    """The sentence-transformers folder (made once, reused)."""
    folder = WORK / f"embeddinggemma-300m-random-v{vocab}"
    if (folder / "modules.json").is_file():
        return folder
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    from gemma_export.checkpoints.default_model import default_gguf_path
    from gemma_export.checkpoints.gguf import open_gguf

    body = WORK / f"body-v{vocab}"
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(vocab_size=vocab, **{k: v for k, v in BODY.items() if "rope" not in k},
                                           rope_parameters={"full_attention": {"rope_type": "default",
                                                                               "rope_theta": BODY["rope_theta"]},
                                                            "sliding_attention": {"rope_type": "default",
                                                                                  "rope_theta":
                                                                                      BODY["rope_local_base_freq"]}})
    transformers.Gemma3TextModel(config).eval().save_pretrained(body)
    tokenizer = open_gguf(default_gguf_path()).tokenizer_model  # Gemma 3's SentencePiece model, 262144 pieces
    (body / "tokenizer.model").write_bytes(tokenizer)
    (body / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": True, "padding_side": "right",
         "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
         "mask_token": "<mask>"}))
    hidden = BODY["hidden_size"]
    dense = [Dense(hidden, DENSE_WIDTH, bias=False, activation_function=torch.nn.Identity()),
             Dense(DENSE_WIDTH, hidden, bias=False, activation_function=torch.nn.Identity())]
    model = SentenceTransformer(modules=[Transformer(str(body), max_seq_length=MAX_SEQ_LENGTH),
                                         Pooling(hidden, "mean"), *dense, Normalize()], prompts=PROMPTS, device="cpu")
    model.save(str(folder))
    return folder


def texts() -> list[str]:
    """64 pieces of the built-in texts, 8 to 96 words each."""
    from gemma_export.texts import CALIBRATION, PROMPTS as BUILT_IN

    words = " ".join(BUILT_IN + CALIBRATION).split()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(64):
        n = int(rng.integers(8, 97))
        start = int(rng.integers(0, len(words) - n))
        out.append(" ".join(words[start:start + n]))
    return out


def rate(run, items: list[str], batch: int, repeats: int) -> float:
    """Texts per second: the best of `repeats` passes over the texts in batches of `batch`, after one warm-up batch."""
    run(items[:batch])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(items), batch):
            run(items[i:i + batch])
        best = min(best, time.perf_counter() - started)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--target", default="ort-cpu", choices=["ort-cpu", "onnx"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=262_144, help="a smaller vocabulary where memory or time is short")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    import gemma_runtime
    from gemma_export.bench import format_table
    from gemma_export.export import export
    from gemma_export.targets import ExportOptions

    torch.set_num_threads(args.threads)
    folder = checkpoint(args.vocab)
    items = texts()
    theirs = SentenceTransformer(str(folder), device="cpu")
    reference = theirs.encode(items, prompt_name="document", batch_size=32)
    rows = [{"name": "sentence-transformers (torch fp32)", **{
        f"batch{b}": rate(lambda t: theirs.encode(t, prompt_name="document", batch_size=b), items, b, args.repeats)
        for b in BATCHES}, "min_cosine": 1.0}]
    tokens = [len(theirs.tokenizer(PROMPTS["document"] + t)["input_ids"]) for t in items]
    for dtype in args.dtypes:
        out = WORK / f"{folder.name}-{args.target}-{dtype}"
        if not (out / "manifest.json").is_file():
            started = time.time()
            export(folder, out, ExportOptions(target=args.target, dtype=dtype))
            print(f"exported {out.name} in {time.time() - started:.0f} s", file=sys.stderr)
        model = gemma_runtime.load(out, threads=args.threads)
        ours = model.embed(items, prompt_name="document")
        rows.append({"name": f"gemma-export {args.target} {dtype}", **{
            f"batch{b}": rate(lambda t: model.embed(t, prompt_name="document"), items, b, args.repeats)
            for b in BATCHES}, "min_cosine": float((ours * reference).sum(axis=1).min())})
    for row in rows:
        row["speedup32"] = row["batch32"] / rows[0]["batch32"]
    columns = [("texts/s b1", "batch1", "{:.1f}"), ("texts/s b32", "batch32", "{:.1f}"),
               ("x torch b32", "speedup32", "{:.2f}"), ("min cosine", "min_cosine", "{:.6f}")]
    print(format_table(rows, columns))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                   "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
                                   "vocab": args.vocab, "texts": len(items),
                                   "tokens": {"mean": float(np.mean(tokens)), "max": int(max(tokens))},
                                   "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
