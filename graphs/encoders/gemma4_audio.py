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
# torch.export's contiguity checks of the conv outputs single out one token (frames <= 4) and
# would specialise the trace on one case or the other: trace with frames >= this (two tokens and
# up). The graph itself holds no such limit; the tests run it on fewer frames too.
TRACE_MIN_FRAMES = 5
_UNDERFLOW = 104.0  # exp(x) is exactly 0 in fp32 below about -103.97


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
        """Keys each chunk of queries looks at in transformers: its chunk, the past and future horizons."""
        return self.attention_chunk_size + self.attention_context_left - 1 + self.attention_context_right

    @property
    def band_before(self) -> int:
        """Keys before a query that it attends to (transformers' window: distance < context_left - 1)."""
        return self.attention_context_left - 2

    @property
    def band_after(self) -> int:
        """Keys after a query that it attends to (transformers' window: distance < context_right)."""
        return max(self.attention_context_right - 1, 0)

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
        if self.attention_context_left < 2:
            raise InvalidConfig(f"attention_context_left = {self.attention_context_left} is not supported: below 2 a "
                                "token does not attend to itself")
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
        if not self.attention_invalid_logits_value + self.attention_logit_cap < -_UNDERFLOW:
            raise InvalidConfig(f"attention_invalid_logits_value = {self.attention_invalid_logits_value} is not "
                                f"supported: it must be below -(attention_logit_cap + {_UNDERFLOW}), so that a "
                                "masked key's softmax weight is exactly 0")
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
        # an output frame is real when the frame at its centre is; indexed by the conv's output
        # length (rather than [:, ::2]) so that the tracer sees one length, not two equal formulas
        centres = torch.arange(x.shape[2], device=x.device) * 2
        return x, frame_mask.index_select(1, centres)


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

    def _causal_depthwise(self, h: torch.Tensor) -> torch.Tensor:
        """The depthwise conv over tokens, each output reading itself and the kernel - 1 tokens
        before: written as shifted products in [n, tokens, hidden], because a conv between two
        transposes leaves strides that make the tracer specialise on a single token."""
        tokens, weight = h.shape[1], self.depthwise_conv1d.weight[:, 0]  # [hidden, kernel]
        h = F.pad(h, (0, 0, self.kernel - 1, 0))
        out = h[:, :tokens] * weight[:, 0]
        for k in range(1, self.kernel):
            out = out + h[:, k : k + tokens] * weight[:, k]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.linear_start(self.pre_layer_norm(x)), dim=-1)
        h = self._causal_depthwise(h)
        h = F.silu(self.conv_norm(_clamp(h, self.clip)))
        return self.linear_end(h) + x


class _LocalAttention(nn.Module):
    """transformers' chunked local attention, computed as the band it amounts to.

    transformers splits the tokens into chunks of attention_chunk_size; a chunk's queries score a
    context of keys around the chunk (content + relative-position terms, soft-capped) and every
    key outside the window -(context_left - 2) <= key - query <= context_right - 1, or padding, is
    set to attention_invalid_logits_value, whose softmax weight is exactly 0 in fp32 (validate
    requires it). So a query's result depends only on the keys of its own band: they are gathered
    here per query ([tokens, band]), which needs no chunk padding and traces with any token count.
    The relative term of the key at offset o reads the sinusoid of distance context_size // 2 - o
    - (context_left - 1), and nothing where that row is past the table (distance < 0)."""

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
        self.before, self.after = cfg.band_before, cfg.band_after
        self.cap, self.invalid = cfg.attention_logit_cap, cfg.attention_invalid_logits_value
        self.q_scale = self.head_dim ** -0.5 / math.log(2)
        self.k_scale = math.log(1 + math.e) / math.log(2)

    def _band(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, tokens, ...] -> [n, tokens, band, ...]: token t's keys t - before ... t + after, zeros outside."""
        tokens, width = x.shape[1], self.before + self.after + 1
        x = F.pad(x, [0, 0] * (x.dim() - 2) + [self.before, self.after])
        index = torch.arange(tokens, device=x.device)[:, None] + torch.arange(width, device=x.device)
        return x[:, index]

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        n, tokens, hidden = x.shape
        heads, dim = self.heads, self.head_dim
        q = self.q_proj(x).view(n, tokens, heads, dim) * self.q_scale * F.softplus(self.per_dim_scale)
        k = self.k_proj(x).view(n, tokens, heads, dim) * self.k_scale
        v = self.v_proj(x).view(n, tokens, heads, dim)

        q = q.permute(0, 2, 1, 3).unsqueeze(3)  # [n, heads, tokens, 1, dim]
        k = self._band(k).permute(0, 3, 1, 4, 2)  # [n, heads, tokens, dim, band]
        v = self._band(v).permute(0, 3, 1, 2, 4)  # [n, heads, tokens, band, dim]
        key_real = self._band(token_mask.to(x.dtype)) > 0  # [n, tokens, band]: in the clip, not padding

        rel_k = self.relative_k_proj(relative).view(-1, heads, dim).permute(1, 2, 0)  # [heads, dim, band]
        logits = (q @ k).squeeze(3) + (q.squeeze(3) @ rel_k)  # [n, heads, tokens, band]
        logits = torch.tanh(logits / self.cap) * self.cap
        logits = torch.where(key_real[:, None], logits, torch.full_like(logits, self.invalid))
        out = (torch.softmax(logits, dim=-1).unsqueeze(3) @ v).squeeze(3)  # [n, heads, tokens, dim]
        return self.post(out.permute(0, 2, 1, 3).reshape(n, tokens, hidden))


def _relative_embeddings(cfg: Gemma4AudioConfig, device: torch.device) -> torch.Tensor:
    """[band, hidden]: for each key offset of the band, the sinusoids [sin | cos] of its distance
    (see _LocalAttention), zero where there is none."""
    half = cfg.hidden_size // 2
    step = math.log(10000.0) / max(half - 1, 1)
    inv_timescales = torch.exp(torch.arange(half, device=device) * -step)
    width = cfg.band_before + cfg.band_after + 1
    distances = cfg.context_size // 2 - 1 - torch.arange(width, device=device)
    angles = distances[:, None] * inv_timescales[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return table * (distances >= 0)[:, None]


class _ConformerLayer(nn.Module):
    def __init__(self, cfg: Gemma4AudioConfig):
        super().__init__()
        self.feed_forward1 = _FeedForward(cfg)
        self.feed_forward2 = _FeedForward(cfg)
        self.self_attn = _LocalAttention(cfg)
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
        relative = _relative_embeddings(self.config, x.device).to(x.dtype)
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
