"""Gemma 4's audio encoder (E2B/E4B) as a torch module: subsampling convolutions, conformer layers
with chunked local attention and relative positions, clipped linears, and the audio embedder into
the text width; with its normalized config (Gemma4AudioConfig)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gemma_graphs.config import MAX_LAYERS, InvalidConfig

SUPPORTED_ACTS = ("silu",)
_SUBSAMPLING = 4  # two stride-2 convolutions over frames (and over mel bins)


@dataclasses.dataclass(frozen=True)
class Gemma4AudioConfig:
    """The audio tower and audio embedder of a Gemma 4 checkpoint; validated when built."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str
    subsampling_conv_channels: tuple[int, int]
    conv_kernel_size: int
    residual_weight: float
    attention_chunk_size: int
    attention_context_left: int
    attention_context_right: int
    attention_logit_cap: float
    attention_invalid_logits_value: float
    use_clipped_linears: bool
    rms_norm_eps: float  # the subsampling LayerNorms, the light-conv norms and the embedder's norm
    gradient_clipping: float
    output_proj_dims: int
    text_hidden_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "subsampling_conv_channels", tuple(self.subsampling_conv_channels))
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def subsampled_bins(self) -> int:
        """Mel bins left after the two stride-2 convolutions: the input projection reads this many
        per channel, so the features' mel count M must give ceil(ceil(M / 2) / 2) == this (M = 128
        for the published checkpoints, whose first conv has 128 channels)."""
        return self.subsampling_conv_channels[0] // _SUBSAMPLING

    @property
    def context_size(self) -> int:
        """Keys each chunk of queries looks at: its own chunk, the past horizon and the future one."""
        return self.attention_chunk_size + self.attention_context_left - 1 + self.attention_context_right

    def validate(self) -> None:
        positive = ("hidden_size", "num_attention_heads", "conv_kernel_size", "attention_chunk_size",
                    "attention_context_left", "output_proj_dims", "text_hidden_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidConfig(f"{name} = {value!r} must be a positive integer")
        if not 0 < self.num_hidden_layers <= MAX_LAYERS:
            raise InvalidConfig(f"num_hidden_layers = {self.num_hidden_layers} is not a supported layer count "
                                f"(1 to {MAX_LAYERS})")
        if self.attention_context_right < 0:
            raise InvalidConfig(f"attention_context_right = {self.attention_context_right} must be >= 0")
        if self.hidden_size % self.num_attention_heads:
            raise InvalidConfig(f"hidden_size = {self.hidden_size} is not a multiple of num_attention_heads = "
                                f"{self.num_attention_heads}")
        if self.hidden_size % 2:
            raise InvalidConfig(f"hidden_size = {self.hidden_size} must be even (sin and cos halves of the "
                                "relative position embedding)")
        channels = self.subsampling_conv_channels
        if len(channels) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
            raise InvalidConfig(f"subsampling_conv_channels = {list(channels)!r} must be two positive integers")
        if channels[0] < _SUBSAMPLING:
            raise InvalidConfig(f"subsampling_conv_channels[0] = {channels[0]} must be at least {_SUBSAMPLING}")
        if self.hidden_act not in SUPPORTED_ACTS:
            raise InvalidConfig(f"hidden_act = {self.hidden_act!r} is not supported (supported: {SUPPORTED_ACTS})")
        for name in ("attention_logit_cap", "gradient_clipping", "rms_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, float) or not value > 0 or math.isinf(value):
                raise InvalidConfig(f"{name} = {value!r} must be a positive finite float")
        for name in ("residual_weight", "attention_invalid_logits_value"):
            value = getattr(self, name)
            if not isinstance(value, float) or not math.isfinite(value):
                raise InvalidConfig(f"{name} = {value!r} must be a finite float")
        if not isinstance(self.use_clipped_linears, bool):
            raise InvalidConfig(f"use_clipped_linears = {self.use_clipped_linears!r} must be a bool")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for the manifest)."""
        out = dataclasses.asdict(self)
        out["subsampling_conv_channels"] = list(self.subsampling_conv_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gemma4AudioConfig:
        """The inverse of to_dict; every field present, no other."""
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise InvalidConfig(f"Gemma4AudioConfig: missing field(s) {missing}, unknown field(s) {unknown}")
        return cls(**data)


def _clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    bound = min(bound, torch.finfo(torch.float32).max)
    return torch.clamp(x, -bound, bound)


class _RMSNorm(nn.Module):
    """x / rms(x), times the weight itself (Gemma 4 stores w, not w - 1) when it has one."""

    def __init__(self, size: int, eps: float, scaled: bool = True):
        super().__init__()
        self.eps = eps
        if scaled:
            self.weight = nn.Parameter(torch.ones(size))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        return x if self.weight is None else x * self.weight


class _ClippedLinear(nn.Module):
    """A bias-free linear whose input and output are clamped to bounds stored in the checkpoint."""

    def __init__(self, cfg: Gemma4AudioConfig, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.clipped = cfg.use_clipped_linears
        if self.clipped:
            for name, value in (("input_min", -math.inf), ("input_max", math.inf),
                                ("output_min", -math.inf), ("output_max", math.inf)):
                setattr(self, name, nn.Parameter(torch.tensor(value), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clipped:
            return self.linear(x)
        x = torch.clamp(x, self.input_min, self.input_max)
        return torch.clamp(self.linear(x), self.output_min, self.output_max)


class _SubsampleLayer(nn.Module):
    """Masked frames zeroed, a 3x3 stride-2 convolution over (frames, mel), LayerNorm over channels, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels, eps=eps, bias=False)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x * frame_mask[:, None, :, None])
        x = torch.relu(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return x, frame_mask[:, ::2]  # an output frame is real when the frame at its centre is


class _SubsampleProjection(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        c0, c1 = cfg.subsampling_conv_channels
        self.layer0 = _SubsampleLayer(1, c0, cfg.rms_norm_eps)
        self.layer1 = _SubsampleLayer(c0, c1, cfg.rms_norm_eps)
        self.input_proj_linear = nn.Linear(cfg.subsampled_bins * c1, cfg.hidden_size, bias=False)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.layer0(features.unsqueeze(1), frame_mask)
        x, mask = self.layer1(x, mask)
        # [n, channels, tokens, bins] -> [n, tokens, bins * channels], channels fastest
        x = x.permute(0, 2, 3, 1)
        return self.input_proj_linear(x.reshape(x.shape[0], x.shape[1], -1)), mask


class _FeedForward(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.ffw_layer_1 = _ClippedLinear(cfg, cfg.hidden_size, 4 * cfg.hidden_size)
        self.ffw_layer_2 = _ClippedLinear(cfg, 4 * cfg.hidden_size, cfg.hidden_size)
        # transformers builds these two with the default eps, not the config's
        self.pre_layer_norm = _RMSNorm(cfg.hidden_size, 1e-6)
        self.post_layer_norm = _RMSNorm(cfg.hidden_size, 1e-6)
        self.clip, self.residual_weight = cfg.gradient_clipping, cfg.residual_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_layer_norm(_clamp(x, self.clip))
        h = self.ffw_layer_2(F.silu(self.ffw_layer_1(h)))
        return self.post_layer_norm(_clamp(h, self.clip)) * self.residual_weight + x


class _LightConv(nn.Module):
    """GLU, causal depthwise convolution over tokens, norm, SiLU, projection; residual."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        h = cfg.hidden_size
        self.linear_start = _ClippedLinear(cfg, h, 2 * h)
        self.linear_end = _ClippedLinear(cfg, h, h)
        self.depthwise_conv1d = nn.Conv1d(h, h, cfg.conv_kernel_size, groups=h, bias=False)
        self.pre_layer_norm = _RMSNorm(h, cfg.rms_norm_eps)
        self.conv_norm = _RMSNorm(h, cfg.rms_norm_eps)
        self.clip, self.kernel = cfg.gradient_clipping, cfg.conv_kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.linear_start(self.pre_layer_norm(x)), dim=-1)
        h = self.depthwise_conv1d(F.pad(h.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)
        h = F.silu(self.conv_norm(_clamp(h, self.clip)))
        return self.linear_end(h) + x


def _relative_embeddings(cfg: Gemma4AudioConfig) -> torch.Tensor:
    """Sinusoids [sin | cos] of the distances context_size // 2 down to 0, one row per distance."""
    half = cfg.hidden_size // 2
    step = math.log(10000.0) / max(half - 1, 1)
    inv_timescales = torch.exp(torch.arange(half) * -step)
    distances = torch.arange(cfg.context_size // 2, -1, -1)
    angles = distances[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class _ChunkedAttention(nn.Module):
    """Local attention: the queries of each chunk of attention_chunk_size tokens see a context of
    context_size keys around it (attention_context_left - 1 before the chunk, attention_context_right
    after); logits are content + relative-position terms, soft-capped, masked to the window."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.q_proj = _ClippedLinear(cfg, h, h)
        self.k_proj = _ClippedLinear(cfg, h, h)
        self.v_proj = _ClippedLinear(cfg, h, h)
        self.post = _ClippedLinear(cfg, h, h)
        self.relative_k_proj = nn.Linear(h, h, bias=False)
        self.per_dim_scale = nn.Parameter(torch.zeros(cfg.head_dim))
        self.chunk, self.context = cfg.attention_chunk_size, cfg.context_size
        self.past, self.future = cfg.attention_context_left - 1, cfg.attention_context_right
        self.cap, self.invalid = cfg.attention_logit_cap, cfg.attention_invalid_logits_value
        self.q_scale = self.head_dim ** -0.5 / math.log(2)
        self.k_scale = math.log(1 + math.e) / math.log(2)
        self.distances = cfg.context_size // 2 + 1

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[chunk, context] tables of constants: which context key a chunk's query may see, and which
        row of the relative terms it reads (the zero row `distances` where none applies)."""
        i = torch.arange(self.chunk)[:, None]
        j = torch.arange(self.context)[None, :]
        distance = i + self.past - j  # query position minus key position
        window = ((distance >= 0) & (distance < self.past)) | ((distance < 0) & (-distance < self.future))
        offset = j - i
        row = torch.where((offset >= 0) & (offset < self.distances), offset, torch.full_like(offset, self.distances))
        return window, row

    def _contexts(self, x: torch.Tensor, blocks: torch.SymInt | int) -> torch.Tensor:
        """x [n, tokens, ...] -> [n, blocks, context, ...]: block b's keys are tokens b * chunk - past ..."""
        pad = [0, 0] * (x.dim() - 2) + [self.past, self.future + self.chunk - 1]
        x = F.pad(x, pad)
        index = (torch.arange(blocks) * self.chunk)[:, None] + torch.arange(self.context)[None, :]
        return x.index_select(1, index.reshape(-1)).reshape(x.shape[0], blocks, self.context, *x.shape[2:])

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        n, tokens, hidden = x.shape
        heads, dim, chunk = self.heads, self.head_dim, self.chunk
        blocks = (tokens + chunk - 1) // chunk
        q = self.q_proj(x).view(n, tokens, heads, dim) * self.q_scale * F.softplus(self.per_dim_scale)
        k = self.k_proj(x).view(n, tokens, heads, dim) * self.k_scale
        v = self.v_proj(x).view(n, tokens, heads, dim)

        q = F.pad(q, (0, 0, 0, 0, 0, chunk - 1))[:, : blocks * chunk].reshape(n, blocks, chunk, heads, dim)
        q = q.permute(0, 3, 1, 2, 4)  # [n, heads, blocks, chunk, dim]
        k = self._contexts(k, blocks).permute(0, 3, 1, 4, 2)  # [n, heads, blocks, dim, context]
        v = self._contexts(v, blocks).permute(0, 3, 1, 2, 4)  # [n, heads, blocks, context, dim]
        key_real = self._contexts(token_mask.to(x.dtype), blocks) > 0  # [n, blocks, context]

        window, row = self._tables()
        rel_k = self.relative_k_proj(relative).view(-1, heads, dim).permute(1, 2, 0)  # [heads, dim, distances]
        by_distance = F.pad(q @ rel_k[:, None], (0, 1))  # [n, heads, blocks, chunk, distances + 1]
        position = torch.gather(by_distance, -1, row.expand(n, heads, blocks, chunk, self.context))
        logits = torch.tanh((q @ k + position) / self.cap) * self.cap
        allowed = window[None, None] & key_real[:, None, :, None, :]
        logits = torch.where(allowed, logits, torch.full_like(logits, self.invalid))
        out = torch.softmax(logits, dim=-1) @ v  # [n, heads, blocks, chunk, dim]
        out = out.permute(0, 2, 3, 1, 4).reshape(n, blocks * chunk, hidden)[:, :tokens]
        return self.post(out)


class _ConformerLayer(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.feed_forward1 = _FeedForward(cfg)
        self.feed_forward2 = _FeedForward(cfg)
        self.self_attn = _ChunkedAttention(cfg)
        self.lconv1d = _LightConv(cfg)
        self.norm_pre_attn = _RMSNorm(cfg.hidden_size, 1e-6)
        self.norm_post_attn = _RMSNorm(cfg.hidden_size, 1e-6)
        self.norm_out = _RMSNorm(cfg.hidden_size, 1e-6)
        self.clip = cfg.gradient_clipping

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        x = self.feed_forward1(x)
        h = self.self_attn(self.norm_pre_attn(_clamp(x, self.clip)), token_mask, relative)
        x = self.norm_post_attn(_clamp(h, self.clip)) + x
        x = self.feed_forward2(self.lconv1d(x))
        return self.norm_out(_clamp(x, self.clip))


class _AudioTower(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.config = cfg
        self.subsample_conv_projection = _SubsampleProjection(cfg)
        self.layers = nn.ModuleList(_ConformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.output_proj_dims, bias=True)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, token_mask = self.subsample_conv_projection(features, frame_mask.to(features.dtype))
        relative = _relative_embeddings(self.config).to(device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, token_mask, relative)
        return self.output_proj(x), token_mask > 0


class _AudioEmbedder(nn.Module):
    """Scale-free RMSNorm, then projection to the text width."""

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.embedding_pre_projection_norm = _RMSNorm(cfg.output_proj_dims, cfg.rms_norm_eps, scaled=False)
        self.embedding_projection = nn.Linear(cfg.output_proj_dims, cfg.text_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(self.embedding_pre_projection_norm(x))


class Gemma4AudioEncoder(nn.Module):
    """input_features [clips, frames, mel] fp32 and input_features_mask [clips, frames] bool (True at
    real frames, as Gemma4AudioFeatureExtractor returns it) -> soft tokens [clips, tokens,
    text_hidden_size] fp32 and token_mask [clips, tokens] bool, tokens = ceil(frames / 4).

    A clip's real tokens (token_mask true) are, in order, the rows transformers' Gemma4Model writes
    at that clip's audio placeholders (get_audio_features, then its attention_mask); the rest are
    padding and must be dropped."""

    INPUTS = ("input_features", "input_features_mask")
    OUTPUTS = ("audio_soft_tokens", "audio_token_mask")

    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.config = cfg
        self.audio_tower = _AudioTower(cfg)
        self.embed_audio = _AudioEmbedder(cfg)

    def forward(self, input_features: torch.Tensor, input_features_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, token_mask = self.audio_tower(input_features, input_features_mask)
        return self.embed_audio(hidden), token_mask

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Tensors that are not checkpoint weights: none (positions and windows are computed in forward)."""
        return {}
