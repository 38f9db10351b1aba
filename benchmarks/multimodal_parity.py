"""Multimodal parity, one run: the tiny random Gemma 3 and Gemma 4 multimodal checkpoints of
tests/tiny.py (tests/tiny_audio.py's audio-capable Gemma 4, tests/tiny_unified.py's Gemma 4
Unified) exported on every target that takes media, against transformers' multimodal model on a
prompt with two images (the audio checkpoint: two clips of different lengths and an image; Unified:
two images and a clip): max |diff| / max |logit| over the whole prompt, top-1 agreement, the same
token by token after the last image (in-place targets), and whether 6 greedy tokens equal
transformers' generate. fp16 rows (towers and decoder in fp16) beside the top-1 agreement of
transformers' own model in fp16.

Run: .venv/bin/python benchmarks/multimodal_parity.py
Writes benchmarks/results/multimodal_parity.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from media_util import greedy_after, stepwise_after_media  # noqa: E402
from tiny import hf_multimodal_model, two_image_prompt, write_multimodal_checkpoint  # noqa: E402
from tiny_audio import audio_prompt, hf_audio_model, write_audio_checkpoint  # noqa: E402
from tiny_unified import hf_unified_model, image_and_audio_prompt, write_unified_checkpoint  # noqa: E402

import gemma_runtime  # noqa: E402
from gemma_export.export import export  # noqa: E402
from gemma_export.targets import ExportOptions  # noqa: E402

FP32 = [(t, "fp32") for t in ("ort-cpu", "onnx", "tensorrt", "generic")]
FP16 = [("ort-cuda", "fp16"), ("ort-cpu", "fp16")]
CASES = [(family, target, dtype) for family in ("gemma3", "gemma4") for target, dtype in FP32 + FP16] + \
        [("gemma4-audio", "ort-cpu", "fp32"), ("gemma4-audio", "ort-cuda", "fp16")] + \
        [("gemma4-unified", target, dtype) for target, dtype in FP32 + FP16[:1]]
NEW_TOKENS = 6


def top1(logits: np.ndarray, expected: np.ndarray) -> float:
    return float((logits.argmax(-1) == expected.argmax(-1)).mean())


def measure(model, ids: list[int], arrays: dict, expected: np.ndarray, greedy: list[int], inplace: bool) -> dict:
    scale = float(np.abs(expected).max())
    got = model.logits(ids, **arrays)
    row = {"whole_prompt": float(np.abs(got - expected).max()) / scale, "top1": top1(got, expected),
           "finite": bool(np.isfinite(got).all())}
    media = model.media_prompt(ids, arrays)
    row["greedy_equal"] = greedy_after(model, ids, media, NEW_TOKENS) == greedy
    if inplace:
        stepwise = stepwise_after_media(model, ids, media)
        row["token_by_token"] = float(np.abs(stepwise - expected[media.spans[-1].end - 1:]).max()) / scale
    return row


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="multimodal-parity-") as tmp:
        tmp = Path(tmp)
        references = {}
        for family, target, dtype in CASES:
            if family not in references:
                if family == "gemma4-audio":
                    folder, reference, (ids, arrays) = write_audio_checkpoint(tmp / family), hf_audio_model(), audio_prompt(rng)
                elif family == "gemma4-unified":
                    folder, reference = write_unified_checkpoint(tmp / family), hf_unified_model()
                    ids, arrays = image_and_audio_prompt(rng)
                else:
                    folder, reference = write_multimodal_checkpoint(family, tmp / family), hf_multimodal_model(family)
                    ids, arrays = two_image_prompt(family, rng)
                inputs = {k: torch.tensor(v) for k, v in arrays.items()}
                with torch.no_grad():
                    expected = reference(input_ids=torch.tensor([ids]), **inputs).logits[0].float().numpy()
                    greedy = reference.generate(input_ids=torch.tensor([ids]), **inputs, max_new_tokens=NEW_TOKENS,
                                                do_sample=False)[0, len(ids):].tolist()
                    in_fp16 = reference.half()(input_ids=torch.tensor([ids]), **inputs).logits[0].float().numpy()
                references[family] = folder, ids, arrays, expected, greedy, top1(in_fp16, expected)
            folder, ids, arrays, expected, greedy, transformers_fp16 = references[family]
            out = tmp / f"{family}-{target}-{dtype}"
            export(folder, out, ExportOptions(target=target, dtype=dtype, max_seq_len=256))
            model = gemma_runtime.load(out, threads=2, **({"device": "cpu"} if target == "ort-cuda" else {}))
            row = {"family": family, "target": target, "dtype": dtype, "prompt_tokens": len(ids),
                   **measure(model, ids, arrays, expected, greedy, target in ("ort-cpu", "onnx"))}
            if dtype == "fp16":
                row["transformers_fp16_top1"] = transformers_fp16
            results.append(row)
            print(f"{family:14} {target:9} {dtype:5} whole {row['whole_prompt']:.1e}  top-1 {row['top1']:.1%}"
                  + (f" (transformers fp16 {transformers_fp16:.1%})" if dtype == "fp16" else "")
                  + f"  after media {row.get('token_by_token', float('nan')):.1e}  greedy equal {row['greedy_equal']}",
                  flush=True)
    path = ROOT / "benchmarks" / "results" / "multimodal_parity.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
