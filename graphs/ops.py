"""The project's custom ops: Gemma's building blocks as single graph nodes.

Each op has an eager implementation (the fp32 reference) and a fake one (shapes only, so the
model traces on the meta device). Their ONNX form (a node in the project's domain carrying a
function body of standard ops) lives in gemma_export/frontend/onnx_ops.py.

Layouts: activations [batch, seq, heads, head_dim] around RoPE; the KV cache
[batch, kv_heads, length, head_dim], with the single KV head of multi-query models kept single.
"""

from __future__ import annotations

import math

import torch

# Finite, so that a query row with no visible key (left padding) gives a uniform softmax, not NaN.
MASKED = -3.0e38


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms, RoPE, attention and the router compute in: fp32, or wider (the float64
    reference the export measures quantization with keeps float64 throughout)."""
    return torch.promote_types(dtype, torch.float32)


@torch.library.custom_op("gemma::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * (offset + w), in fp32, cast back. Gemma 1-3 store w
    zero-centred (offset 1), Gemma 4 stores the multiplier itself (offset 0)."""
    xf = x.to(compute_dtype(x.dtype))
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (offset + weight.to(xf.dtype))).to(x.dtype)


@rms_norm.register_fake
def _(x, weight, eps, offset):
    return torch.empty_like(x)


def unit_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without a weight (Gemma 4's value and router norms), in fp32, cast back; plain ops,
    which every target runs as they are."""
    xf = x.to(compute_dtype(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def gaussian_cutoff_multiplier(target: float) -> float:
    """The standard normal's quantile at `target`, computed in fp32 as transformers does (its
    Normal(0, 1).icdf: erfinv(2p - 1) * sqrt(2)); on the CPU, whatever device the model is built on."""
    p = torch.tensor(target, dtype=torch.float32, device="cpu")
    return float(torch.special.erfinv(2 * p - 1) * math.sqrt(2))


def gaussian_top_k(x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Gemma 3n's activation sparsity: relu(x - (mean + std * multiplier)) over the last axis, the
    std the population one (the fraction of a Gaussian's values kept is 1 - target); plain ops."""
    mean = x.mean(-1, keepdim=True)
    std = (x - mean).pow(2).mean(-1, keepdim=True).sqrt()
    return torch.relu(x - (mean + std * multiplier))


def rope_inv_freq(head_dim: int, theta: float, scale: float, pairs: int | None = None) -> torch.Tensor:
    """Inverse frequencies in fp32, as transformers defines them: the scaling factor divides them
    (linear scaling; proportional RoPE's factor), and frequency pairs from `pairs` on are 0
    (proportional RoPE: those dims pass through unrotated). Computed in float64 and rounded once
    (transformers computes in fp32, whose pow differs between instruction sets in the last bit; the
    exported cos/sin caches must not)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    inv_freq = (1.0 / (theta ** exponent) / scale).float()
    if pairs is not None and pairs < head_dim // 2:
        inv_freq[pairs:] = 0.0
    return inv_freq


@torch.library.custom_op("gemma::rope", mutates_args=())
def rope(x: torch.Tensor, position_ids: torch.Tensor, theta: float, scale: float, pairs: int) -> torch.Tensor:
    """Half-split (NeoX) rotary embedding of x [B, S, N, D] at position_ids [B, S]; the first
    `pairs` frequency pairs (dims i and i + D/2) rotate, the others have frequency 0."""
    d = x.shape[-1]
    wide = compute_dtype(x.dtype)
    freqs = position_ids.to(wide)[..., None] * rope_inv_freq(d, theta, scale, pairs).to(x.device, wide)
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@rope.register_fake
def _(x, position_ids, theta, scale, pairs):
    return torch.empty_like(x)


@torch.library.custom_op("gemma::geglu", mutates_args=())
def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(gate) * up: Gemma's MLP activation (tanh GELU, always)."""
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


@geglu.register_fake
def _(gate, up):
    return torch.empty_like(gate)


@torch.library.custom_op("gemma::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    attention_mask: torch.Tensor,
    scale: float,
    softcap: float,
    window: int,
    lookahead: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention with a concatenating KV cache.

    q [B, S, Hq, D]; k, v [B, S, Hkv, D]; past_k/v [B, Hkv, P, D]; attention_mask [B, P + S]
    (1 = real token, 0 = padding; padding only on the left). softcap 0 = none; window 0 = full,
    else a query sees the `window` most recent keys, itself included. lookahead [B, S] int64
    (media decoders): column i of row b also sees the lookahead[b, i] columns after it (an image's
    tokens see the whole image; the window still bounds how far back a query sees).
    Returns out [B, S, Hq * D] and present_k/v [B, Hkv, P + S, D].
    """
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    present_k = torch.cat([past_k, k.transpose(1, 2)], dim=2)
    present_v = torch.cat([past_v, v.transpose(1, 2)], dim=2)
    total = present_k.shape[2]
    wide = compute_dtype(q.dtype)
    qg = q.transpose(1, 2).reshape(b, hkv, hq // hkv, s, d).to(wide)
    scores = qg @ present_k.to(wide)[:, :, None].transpose(-1, -2) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    qi = torch.arange(total - s, total, device=q.device)[:, None]
    kj = torch.arange(total, device=q.device)[None, :]
    until = qi[None] if lookahead is None else qi[None] + lookahead[:, :, None]  # [1 or B, S, 1]
    visible = kj[None] <= until
    if window:
        visible = visible & (qi - kj < window)
    visible = visible[:, None, None] & attention_mask.bool()[:, None, None, None, :]
    scores = scores.masked_fill(~visible, MASKED)
    probs = torch.softmax(scores, dim=-1)
    out = probs @ present_v.to(wide)[:, :, None]
    out = out.reshape(b, hq, s, d).transpose(1, 2).reshape(b, s, hq * d).to(q.dtype)
    return out, present_k, present_v


@attention.register_fake
def _(q, k, v, past_k, past_v, attention_mask, scale, softcap, window, lookahead=None):
    b, s, hq, d = q.shape
    total = past_k.shape[2] + s
    present = past_k.new_empty((b, k.shape[2], total, d))
    return q.new_empty((b, s, hq * d)), present, torch.empty_like(present)


def embed_scale(hidden_size: int, dtype: torch.dtype) -> float:
    """sqrt(hidden), rounded to the activation dtype first (as transformers does)."""
    return float(torch.tensor(math.sqrt(hidden_size), dtype=dtype).item())
