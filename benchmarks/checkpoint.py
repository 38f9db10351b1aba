"""A Gemma-2B-shaped random checkpoint (bf16 safetensors), written tensor by tensor in chunks so
that generating a 2 GB file never holds more than one chunk in memory.

The safetensors format is written directly (an 8-byte little-endian header length, a JSON header
with each tensor's dtype, shape and byte range, then the raw bytes): the `safetensors` package
only saves whole in-memory tensors.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

GEMMA_2B = dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_attention_heads=8,
                num_key_value_heads=1, head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6)
CHUNK_ELEMENTS = 8 * 1024 * 1024


def gemma_2b_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of Gemma 1 2B with `layers` decoder layers (tied lm_head)."""
    h, d, f = GEMMA_2B["hidden_size"], GEMMA_2B["head_dim"], GEMMA_2B["intermediate_size"]
    q, kv = GEMMA_2B["num_attention_heads"] * d, GEMMA_2B["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (GEMMA_2B["vocab_size"], h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        })
    return shapes


def _bf16_normal(rng: np.random.Generator, n: int, std: float, mean: float = 0.0) -> bytes:
    """n normal samples as bf16 bytes (the upper half of each fp32: truncation is fine for noise)."""
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(std) + np.float32(mean)
    return (x.view(np.uint32) >> 16).astype("<u2").tobytes()


def write_safetensors_bf16(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0,
                           norm_center: float = 0.0) -> None:
    """Random bf16 tensors: norm weights std 0.1 around norm_center (0: zero-centred, as Gemma 1-3
    store them; Gemma 4 stores the multiplier, around 1), matrices std 0.02."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as safetensors writes it
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            norm = name.endswith("norm.weight") or name.endswith("scale") or name.endswith("layer_scalar")
            std, mean = (0.1, norm_center) if norm else (0.02, 0.0)
            left = int(np.prod(shape))
            while left:
                n = min(left, CHUNK_ELEMENTS)
                f.write(_bf16_normal(rng, n, std, mean))
                left -= n
    tmp.rename(path)


def gemma_2b_checkpoint(folder: Path, layers: int = 4, seed: int = 0) -> Path:
    """An HF folder (config.json written by transformers, model.safetensors); reused when present."""
    folder = Path(folder)
    weights = folder / "model.safetensors"
    if weights.is_file() and (folder / "config.json").is_file():
        return folder
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    cfg = transformers.GemmaConfig(num_hidden_layers=layers, hidden_activation="gelu_pytorch_tanh",
                                   tie_word_embeddings=True, **GEMMA_2B)
    cfg.architectures = ["GemmaForCausalLM"]
    cfg.save_pretrained(folder)
    write_safetensors_bf16(weights, gemma_2b_shapes(layers), seed)
    return folder

