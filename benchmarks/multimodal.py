"""Multimodal speed and memory (issue 22): image encode time and time to first token (TTFT) of a
one-image prompt, ours (the default ort-cpu fp32 artifact run by gemma_runtime) against
transformers eager (fp32) on the same random checkpoint, in one run; export peak RSS and artifact
sizes.

Cases:
  tiny-gemma3, tiny-gemma4  the tiny multimodal configs of tests/tiny.py (1-layer towers).
  gemma3-siglip             Gemma 3's vision tower at its published shape (SigLIP-400M: hidden 1152,
                            27 layers, 16 heads, intermediate 4304, image 896, patch 14, 256 soft tokens;
                            the Gemma 3 4B vision_config) over a decoder of the Gemma 3 270M's shape
                            (hidden 640, 18 layers) with the multimodal vocabulary (262208).
  gemma4-vision             Gemma 4's vision encoder at transformers 5.25's Gemma4VisionConfig defaults
                            (documented there as "similar to google/gemma-4-e2b-it": hidden 768, 16
                            layers, 12 heads, head_dim 64, intermediate 3072, patch 16, pooling 3) and
                            Gemma4ImageProcessorPil's default budget of 280 soft tokens, over E2B's text
                            widths (benchmarks/gemma4.py's E2B) cut to 4 decoder layers.
The realistic towers are cut to --layers layers (the whole tower on 2 cores costs minutes per
image). Their full depth is EXTRAPOLATED, and labelled so: from two layer counts (--layers 1 2) by
the straight line through them (per layer = the slope); from one by encode / layers, which counts
the patch embedding, pooling and projector as layers (an overestimate).

What is timed, each side in its own process with --threads threads, after one untimed TTFT (which
warms the encoder and the decoder); the median of at least --repeats runs of each (more, up to 50,
while they total under a second: the tiny cases' millisecond calls):
  preprocess  ours: the runtime's image processing and prompt expansion; transformers: its image
              processor (Gemma3ImageProcessorPil / Gemma4ImageProcessorPil) alone.
  encode      the processor's arrays to soft tokens: our image_encoder graph; transformers'
              get_image_features.
  prefill     a text-only prompt of the image prompt's length to its first token.
  TTFT        a PIL image and a prompt to the first token: our Model.generate(prompt, images=[image],
              max_new_tokens=1); transformers: its image processor, then a forward pass
              (logits_to_keep=1, our expanded ids: its tokenizer's cost is left out) and argmax.
Goals: encode at least 1.5x faster than transformers; TTFT within 1.2x of encode + text prefill.

Each case's export runs in its own process under /usr/bin/time (its peak RSS), and each side's
measurement in its own process (its peak RSS: VmHWM).

Run: .venv/bin/python benchmarks/multimodal.py [--cases ...] [--layers 2 | --layers 1 2] [--repeats 3]
     [--threads 2] [--json PATH] [--work DIR]
Writes benchmarks/results/multimodal.json (or --json PATH) and prints tables.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))  # tiny.py: the tiny multimodal configs the tests use

from gemma_export.bench import format_table  # noqa: E402

WORK = ROOT / ".cache" / "bench" / "multimodal"
RESULTS = ROOT / "benchmarks" / "results"
TIME = Path("/usr/bin/time")
MiB = 2**20
CASES = ("tiny-gemma3", "tiny-gemma4", "gemma3-siglip", "gemma4-vision")
ENCODE_GOAL = 1.5  # transformers' encode time / ours, at least
COMPOSITION_GOAL = 1.2  # our TTFT / (encode + text prefill), at most
DEFAULT_LAYERS = 2  # with 3 repeats, the whole run in about 10 minutes on 2 cores
MIN_SECONDS, MAX_RUNS = 1.0, 50
FIRST_WORD = 10  # prompt words are the tokenizer's pieces "w10", "w11", ...: ids 10, 11, ...

# The Gemma 3 4B's published vision_config and mm_tokens_per_image (also tests/test_encoder_gemma3_vision.py).
SIGLIP_400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                   image_size=896, patch_size=14, vision_use_head=False)
GEMMA3_MM = dict(mm_tokens_per_image=256, image_token_index=262144, boi_token_index=255999, eoi_token_index=256000)
# Gemma 3 270M's text shape (tests/test_config.py's GEMMA3_V4) with the multimodal models' vocabulary,
# which holds the image soft token 262144.
GEMMA3_270M_TEXT = dict(vocab_size=262208, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                        sliding_window=512, max_position_embeddings=32768, rms_norm_eps=1e-6,
                        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                     for i in range(18)],
                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
GEMMA4_TEXT_LAYERS = 4
GEMMA4_PIECES = {"image_token_id": "<|image|>", "boi_token_id": "<|image>", "eoi_token_id": "<image|>",
                 "video_token_id": "<|video|>", "audio_token_id": "<|audio|>", "boa_token_id": "<|audio>",
                 "eoa_token_index": "<audio|>"}
GEMMA3_PIECES = {"image_token_index": "<image_soft_token>", "boi_token_index": "<start_of_image>",
                 "eoi_token_index": "<end_of_image>"}


# -- checkpoints --------------------------------------------------------------------------------
def write_tokenizer(folder: Path, vocab_size: int, specials: dict[int, str]) -> None:
    """A word-level tokenizer.json over the whole vocabulary: piece "w<i>" is id i, except the
    control pieces and the media placeholders at their ids (special: they split the text)."""
    import tokenizers

    pieces = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", **specials}
    vocab = {pieces.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(pieces.values()))
    (folder / "tokenizer.json").write_text(tok.to_str())


def placeholder_pieces(config: dict[str, Any]) -> dict[int, str]:
    """The config's media placeholder ids and their pieces (Gemma 3's or Gemma 4's names)."""
    names = GEMMA3_PIECES if config["model_type"] == "gemma3" else GEMMA4_PIECES
    return {config[k]: piece for k, piece in names.items() if config.get(k) is not None}


def realistic_model(case: str, layers: int):
    """transformers' model of a realistic case, its own (seeded) initialisation, the tower cut to
    `layers`; and its image processor (the published settings / the class defaults)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if case == "gemma3-siglip":
        vision = transformers.SiglipVisionConfig(**{**SIGLIP_400M, "num_hidden_layers": layers})
        text = transformers.Gemma3TextConfig(**GEMMA3_270M_TEXT)
        cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, **GEMMA3_MM)
        model_class = transformers.Gemma3ForConditionalGeneration
        # The published Gemma 3 preprocessor_config.json's settings.
        processor = transformers.Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, image_mean=[0.5] * 3,
                                                         image_std=[0.5] * 3, resample=2)
    else:
        from gemma4 import E2B, e2b_layer_types

        vision = transformers.Gemma4VisionConfig(num_hidden_layers=layers)
        text = transformers.Gemma4TextConfig(**E2B, num_hidden_layers=GEMMA4_TEXT_LAYERS,
                                             layer_types=e2b_layer_types(GEMMA4_TEXT_LAYERS), num_kv_shared_layers=2,
                                             use_bidirectional_attention="vision")
        cfg = transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=None)
        model_class = transformers.Gemma4ForConditionalGeneration
        processor = transformers.Gemma4ImageProcessorPil()
    cfg._attn_implementation = cfg.text_config._attn_implementation = "eager"
    return model_class(cfg).eval(), processor


def write_case_checkpoint(case: str, folder: Path, layers: int) -> dict[str, Any]:
    """The case's checkpoint (model, image processor, tokenizer.json); its config.json as a dict."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if case.startswith("tiny-"):
        from tiny import write_multimodal_checkpoint

        write_multimodal_checkpoint(case.removeprefix("tiny-"), folder)
    else:
        model, processor = realistic_model(case, layers)
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        del model
        gc.collect()
    config = json.loads((folder / "config.json").read_text())
    write_tokenizer(folder, config["text_config"]["vocab_size"], placeholder_pieces(config))
    return config


# -- export -------------------------------------------------------------------------------------
def export_measured(source: Path, out: Path, max_seq_len: int) -> dict[str, Any]:
    """`gemma-export export` (default target) in its own process under /usr/bin/time: peak RSS,
    wall time and the artifact's sizes."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(TIME), "-v", sys.executable, "-m", "gemma_export.cli", "export", str(source), "-o", str(out),
           "--max-seq-len", str(max_seq_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time .*: ([\d:.]+)", proc.stderr)
    if proc.returncode != 0 or rss is None or wall is None:
        raise RuntimeError(f"export of {source} failed: {proc.stderr[-1500:]}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    sizes = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
    encoder = sum(n for name, n in sizes.items() if name.startswith("image_encoder"))
    return {"peak_rss_mib": int(rss.group(1)) / 1024, "wall_s": seconds, "artifact_mib": sum(sizes.values()) / MiB,
            "image_encoder_mib": encoder / MiB,
            "decoder_mib": sum(n for name, n in sizes.items() if name.startswith("model.onnx")) / MiB}


# -- the two sides, each in its own process -----------------------------------------------------
def noise_image(seed: int = 0, size: tuple[int, int] = (640, 480)):
    """A deterministic noise image (width, height): the same pixels for both sides."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def prompt_text(words: int) -> str:
    return " ".join(f"w{FIRST_WORD + k}" for k in range(words))


def timed_runs(fn: Callable[[], Any], repeats: int, warm_up: bool = False) -> tuple[list[float], Any]:
    """Seconds of each call (after one untimed call if warm_up): at least `repeats` calls, more while
    they total under MIN_SECONDS (the tiny cases' millisecond calls), at most MAX_RUNS; the last result."""
    result = fn() if warm_up else None
    times: list[float] = []
    while len(times) < repeats or (sum(times) < MIN_SECONDS and len(times) < MAX_RUNS):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def vm_hwm_mib() -> float:
    """This process's own peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec from a
    large parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_ours(artifact: Path, threads: int, repeats: int, words: int) -> dict[str, Any]:
    import gemma_runtime
    from gemma_runtime.interface import IMAGE_ENCODER
    from gemma_runtime.media.processors import prepare

    t0 = time.perf_counter()
    model = gemma_runtime.load(artifact, threads=threads)
    load_s = time.perf_counter() - t0
    image, prompt = noise_image(), prompt_text(words)
    section = model.manifest.multimodal
    prepared = prepare(section, model.tokenizer, prompt, [image])
    media_ids = {section["image"][k] for k in ("token_id", "begin_id", "end_id")}
    text_ids = [FIRST_WORD if i in media_ids else i for i in prepared.ids]

    def ttft() -> int:
        return model.generate(prompt, images=[image], max_new_tokens=1).token_ids[0]

    out: dict[str, Any] = {"load_s": load_s, "prompt_tokens": len(prepared.ids),
                           "image_tokens": sum(i == section["image"]["token_id"] for i in prepared.ids)}
    out["ttft_s"], out["first_token"] = timed_runs(ttft, repeats, warm_up=True)
    out["preprocess_s"], _ = timed_runs(lambda: prepare(section, model.tokenizer, prompt, [image]), repeats)
    out["encode_s"], _ = timed_runs(lambda: model.encoders.encode(IMAGE_ENCODER, prepared.arrays[IMAGE_ENCODER]),
                                    repeats)
    out["prefill_s"], _ = timed_runs(lambda: model.generate(text_ids, max_new_tokens=1).token_ids[0], repeats)
    out["ids"] = prepared.ids
    out["peak_rss_mib"] = vm_hwm_mib()
    return out


def measure_transformers(checkpoint: Path, ids: list[int], threads: int, repeats: int) -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    config = json.loads((checkpoint / "config.json").read_text())
    gemma3 = config["model_type"] == "gemma3"
    t0 = time.perf_counter()
    model_class = transformers.Gemma3ForConditionalGeneration if gemma3 else transformers.Gemma4ForConditionalGeneration
    model = model_class.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager").eval()
    processor_class = transformers.Gemma3ImageProcessorPil if gemma3 else transformers.Gemma4ImageProcessorPil
    processor = processor_class.from_pretrained(checkpoint)
    load_s = time.perf_counter() - t0
    image = noise_image()
    image_id = config["image_token_index" if gemma3 else "image_token_id"]
    media_ids = set(placeholder_pieces(config))
    input_ids = torch.tensor([ids])
    types = (input_ids == image_id).long()
    text_ids = torch.tensor([[FIRST_WORD if i in media_ids else i for i in ids]])
    keys = ("pixel_values",) if gemma3 else ("pixel_values", "image_position_ids")

    def preprocess() -> dict[str, torch.Tensor]:
        arrays = processor([image], return_tensors="pt")
        return {k: arrays[k] for k in keys}

    def encode(arrays: dict[str, torch.Tensor]):
        return model.model.get_image_features(**arrays).pooler_output

    def first_token(**inputs) -> torch.Tensor:
        return model(**inputs, logits_to_keep=1).logits[0, -1]

    mask = {"token_type_ids": types} if gemma3 else {"mm_token_type_ids": types}

    def ttft() -> tuple[int, torch.Tensor]:
        logits = first_token(input_ids=input_ids, **preprocess(), **mask)
        return int(logits.argmax()), logits

    out: dict[str, Any] = {"load_s": load_s}
    with torch.no_grad():
        out["ttft_s"], (out["first_token"], logits) = timed_runs(ttft, repeats, warm_up=True)
        arrays = preprocess()
        out["preprocess_s"], _ = timed_runs(preprocess, repeats)
        out["encode_s"], _ = timed_runs(lambda: encode(arrays), repeats)
        out["prefill_s"], _ = timed_runs(lambda: int(first_token(input_ids=text_ids).argmax()), repeats)
    top2 = logits.topk(2).values  # how close a tie the first token is, should the sides disagree
    out["top2_margin"] = float(top2[0] - top2[1])
    out["peak_rss_mib"] = vm_hwm_mib()
    return out


def child(side: str, source: Path, args: argparse.Namespace, ids_file: Path | None = None) -> dict[str, Any]:
    """One side's measurement in a fresh process (its own threads, its own peak RSS)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--source", str(source),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--prompt-words", str(args.prompt_words)]
    if ids_file is not None:
        cmd += ["--ids", str(ids_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} measurement of {source} failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- one case -----------------------------------------------------------------------------------
def vision_shape(config: dict[str, Any]) -> dict[str, Any]:
    v = config["vision_config"]
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "image_size", "patch_size", "pooling_kernel_size", "position_embedding_size")
    return {k: v[k] for k in keys if k in v}


def text_shape(config: dict[str, Any]) -> dict[str, Any]:
    t = config["text_config"]
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "global_head_dim", "hidden_size_per_layer_input")
    return {k: t[k] for k in keys if k in t}


def summarise(side: dict[str, Any]) -> dict[str, Any]:
    """Medians of the timed runs (every run kept beside them)."""
    runs = {k: side.pop(k) for k in ("preprocess_s", "encode_s", "prefill_s", "ttft_s")}
    return {**side, **{k: statistics.median(v) for k, v in runs.items()}, "runs": runs}


FULL_LAYERS = {"gemma3-siglip": SIGLIP_400M["num_hidden_layers"], "gemma4-vision": 16}  # Gemma4VisionConfig's 16


def run_case(case: str, layers: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """One checkpoint (a realistic tower cut to `layers`) exported and measured on both sides."""
    folder = args.work / case
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    print(f"[{case}] writing the checkpoint ...", flush=True)
    config = write_case_checkpoint(case, folder / "checkpoint", layers or 0)
    print(f"[{case}] exporting ...", flush=True)
    export = export_measured(folder / "checkpoint", folder / "artifact", 128 if case.startswith("tiny-") else 512)
    print(f"[{case}] export: {export['wall_s']:.0f} s, peak RSS {export['peak_rss_mib']:.0f} MiB; measuring ours ...",
          flush=True)
    ours = summarise(child("ours", folder / "artifact", args))
    ids_file = folder / "ids.json"
    ids_file.write_text(json.dumps(ours.pop("ids")))
    print(f"[{case}] measuring transformers ...", flush=True)
    theirs = summarise(child("transformers", folder / "checkpoint", args, ids_file))
    depth = config["vision_config"]["num_hidden_layers"]
    result = {
        "case": case, "family": config["model_type"], "vision": vision_shape(config), "text": text_shape(config),
        "vision_layers": depth, "full_vision_layers": FULL_LAYERS.get(case, depth),
        "prompt_tokens": ours["prompt_tokens"], "image_tokens": ours["image_tokens"],
        "export": export, "ours": ours, "transformers": theirs,
        "encode_speedup": theirs["encode_s"] / ours["encode_s"],
        "ttft_speedup": theirs["ttft_s"] / ours["ttft_s"],
        "ttft_over_encode_plus_prefill": ours["ttft_s"] / (ours["encode_s"] + ours["prefill_s"]),
        "transformers_ttft_over_encode_plus_prefill": theirs["ttft_s"] / (theirs["encode_s"] + theirs["prefill_s"]),
        "first_tokens_equal": ours["first_token"] == theirs["first_token"],
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "case_wall_s": time.perf_counter() - t0,
    }
    result["encode_goal_met"] = result["encode_speedup"] >= ENCODE_GOAL
    result["composition_goal_met"] = result["ttft_over_encode_plus_prefill"] <= COMPOSITION_GOAL
    return result


def extrapolate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per realistic case measured below its full depth: the encode per layer and the full tower's
    encode and TTFT, EXTRAPOLATED. From two depths, a straight line through the shallowest and the
    deepest (per layer = the slope); from one, encode / layers (which counts the patch embedding,
    pooling and projector as layers: an overestimate)."""
    out = []
    for case in dict.fromkeys(r["case"] for r in results):
        runs = sorted((r for r in results if r["case"] == case), key=lambda r: r["vision_layers"])
        lo, hi = runs[0], runs[-1]
        full = hi["full_vision_layers"]
        if hi["vision_layers"] >= full:
            continue
        entry: dict[str, Any] = {"case": case, "measured_layers": [r["vision_layers"] for r in runs],
                                 "full_layers": full}
        for side in ("ours", "transformers"):
            if lo is hi:
                per_layer, fixed = hi[side]["encode_s"] / hi["vision_layers"], 0.0
            else:
                per_layer = (hi[side]["encode_s"] - lo[side]["encode_s"]) / (hi["vision_layers"] - lo["vision_layers"])
                fixed = lo[side]["encode_s"] - per_layer * lo["vision_layers"]
            encode = fixed + per_layer * full
            entry[side] = {"encode_per_layer_s": per_layer, "encode_fixed_s": fixed, "encode_s": encode,
                           "ttft_s": encode + hi[side]["preprocess_s"] + hi[side]["prefill_s"]}
        entry["method"] = ("encode / layers at one depth (an overestimate: the fixed parts are counted as layers)"
                           if lo is hi else "straight line through two depths")
        entry["encode_speedup"] = entry["transformers"]["encode_s"] / entry["ours"]["encode_s"]
        entry["ttft_speedup"] = entry["transformers"]["ttft_s"] / entry["ours"]["ttft_s"]
        out.append(entry)
    return out


# -- report -------------------------------------------------------------------------------------
TIMING_COLUMNS = [("layers", "layers", "{}"), ("prompt tok", "prompt_tokens", "{}"),
                  ("preproc ms", "preprocess_ms", "{:.1f}"), ("encode ms", "encode_ms", "{:.1f}"),
                  ("prefill ms", "prefill_ms", "{:.1f}"), ("TTFT ms", "ttft_ms", "{:.1f}"),
                  ("rest ms", "rest_ms", "{:.1f}"), ("TTFT/(enc+pre)", "composition", "{:.2f}"),
                  ("1st tok", "first_token", "{}"), ("run peak MiB", "peak_rss_mib", "{:.0f}")]
SUMMARY_COLUMNS = [("layers", "layers", "{}"), ("encode x", "encode_speedup", "{:.2f}"),
                   ("TTFT x", "ttft_speedup", "{:.2f}"), ("encode>=1.5x", "encode_goal", "{}"),
                   ("TTFT<=1.2(e+p)", "composition_goal", "{}"), ("export peak MiB", "export_rss", "{:.0f}"),
                   ("export s", "export_s", "{:.0f}"), ("encoder MiB", "encoder_mib", "{:.1f}"),
                   ("decoder MiB", "decoder_mib", "{:.1f}")]
EXTRAPOLATED_COLUMNS = [("from layers", "measured", "{}"), ("to", "full", "{}"),
                        ("ours s/layer", "ours_layer", "{:.2f}"), ("hf s/layer", "hf_layer", "{:.2f}"),
                        ("ours encode s", "ours_encode", "{:.1f}"), ("hf encode s", "hf_encode", "{:.1f}"),
                        ("encode x", "encode_speedup", "{:.2f}"), ("ours TTFT s", "ours_ttft", "{:.1f}"),
                        ("hf TTFT s", "hf_ttft", "{:.1f}")]


def tables(results: list[dict[str, Any]], extrapolated: list[dict[str, Any]] = ()) -> str:
    timing, summary = [], []
    for r in results:
        for side, label in (("ours", "ours ort-cpu"), ("transformers", "transformers eager")):
            s = r[side]
            timing.append({"name": f"{r['case']} {label}", "layers": r["vision_layers"],
                           "prompt_tokens": r["prompt_tokens"], "preprocess_ms": s["preprocess_s"] * 1e3,
                           "encode_ms": s["encode_s"] * 1e3, "prefill_ms": s["prefill_s"] * 1e3,
                           "ttft_ms": s["ttft_s"] * 1e3,
                           "rest_ms": (s["ttft_s"] - s["preprocess_s"] - s["encode_s"] - s["prefill_s"]) * 1e3,
                           "composition": s["ttft_s"] / (s["encode_s"] + s["prefill_s"]),
                           "first_token": s["first_token"], "peak_rss_mib": s["peak_rss_mib"]})
        e = r["export"]
        summary.append({"name": r["case"], "layers": r["vision_layers"], "encode_speedup": r["encode_speedup"],
                        "ttft_speedup": r["ttft_speedup"], "encode_goal": "yes" if r["encode_goal_met"] else "NO",
                        "composition_goal": "yes" if r["composition_goal_met"] else "NO",
                        "export_rss": e["peak_rss_mib"], "export_s": e["wall_s"],
                        "encoder_mib": e["image_encoder_mib"], "decoder_mib": e["decoder_mib"]})
    parts = ["measured, medians (rest = TTFT - preprocess - encode - prefill):", format_table(timing, TIMING_COLUMNS),
             "\nours against transformers (x = transformers' time / ours); export of the default target "
             "(ort-cpu fp32):",
             format_table(summary, SUMMARY_COLUMNS)]
    rows = [{"name": x["case"], "measured": "/".join(map(str, x["measured_layers"])), "full": x["full_layers"],
             "ours_layer": x["ours"]["encode_per_layer_s"], "hf_layer": x["transformers"]["encode_per_layer_s"],
             "ours_encode": x["ours"]["encode_s"], "hf_encode": x["transformers"]["encode_s"],
             "encode_speedup": x["encode_speedup"], "ours_ttft": x["ours"]["ttft_s"],
             "hf_ttft": x["transformers"]["ttft_s"]}
            for x in extrapolated]
    if rows:
        parts += ["\nEXTRAPOLATED to the full tower, not measured (" + "; ".join(
            f"{x['case']}: {x['method']}" for x in extrapolated) + "):", format_table(rows, EXTRAPOLATED_COLUMNS)]
    return "\n".join(parts)


def conditions(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "threads": args.threads, "repeats": args.repeats,
            "prompt_words": args.prompt_words, "layers_option": args.layers, "loadavg_start": os.getloadavg(),
            "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "ours": "default target (ort-cpu), fp32, gemma_runtime.load(threads=threads)",
            "transformers": "eager attention, fp32, torch.set_num_threads(threads), torch.no_grad()",
            "image": "640 x 480 RGB noise (seed 0)"}


def main() -> None:
    parser = argparse.ArgumentParser(description="Multimodal speed and memory (issue 22).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--layers", type=int, nargs="+", default=[DEFAULT_LAYERS],
                        help="vision layers of the realistic towers (full: 27 and 16); two counts measure the "
                             "per-layer time as a slope")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (at least)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-words", type=int, default=32, help="text words beside the image")
    parser.add_argument("--json", type=Path, default=RESULTS / "multimodal.json")
    parser.add_argument("--work", type=Path, default=WORK, help="where the checkpoints and artifacts are written")
    parser.add_argument("--child", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "ours":
        print(json.dumps(measure_ours(args.source, args.threads, args.repeats, args.prompt_words)))
        return
    if args.child == "transformers":
        ids = json.loads(args.ids.read_text())
        print(json.dumps(measure_transformers(args.source, ids, args.threads, args.repeats)))
        return
    if min(args.layers) < 1 or args.repeats < 1 or args.threads < 1:
        sys.exit("error: --layers, --repeats and --threads must be at least 1")
    if not TIME.is_file():
        sys.exit(f"error: {TIME} not found; it reports the export's peak RSS (apt-get install -y time)")
    report: dict[str, Any] = {"conditions": conditions(args),
                              "goals": {"encode_speedup_at_least": ENCODE_GOAL,
                                        "ttft_over_encode_plus_prefill_at_most": COMPOSITION_GOAL}}
    results = []
    for case in args.cases:
        depths = [None] if case.startswith("tiny-") else sorted({min(n, FULL_LAYERS[case]) for n in args.layers})
        for layers in depths:
            results.append(run_case(case, layers, args))
            print(tables(results[-1:]), flush=True)
    report["cases"] = results
    report["extrapolated_full_depth"] = extrapolate(results)
    report["conditions"]["loadavg_end"] = os.getloadavg()
    print("\n" + tables(results, report["extrapolated_full_depth"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
