"""The Gemma decoder (Gemma 1, 2, 3, 3n and 4 text) as one torch module, written with the project's
custom ops. It is what the front end traces and, run eagerly in fp32, the reference.

Parameter names are the HF checkpoint names, so weights bind by name. transformers'
modeling_gemma{,2,3,3n,4}.py is the parity reference for every detail here; Gemma 3n's and 4's
features are config fields that default to off (GemmaConfig).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gemma_graphs import ops
from gemma_graphs.config import GemmaConfig
from gemma_runtime.interface import CacheTensor, decoder_input_names, decoder_output_names


class Norm(nn.Module):
    def __init__(self, size: int, cfg: GemmaConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps, self.offset = cfg.rms_norm_eps, cfg.norm_offset

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps, self.offset)


class Attention(nn.Module):
    """A KV-shared layer (Gemma 4) computes only its queries and reads the cache of an earlier
    layer: forward gets that layer's present cache as past and no new keys."""

    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.layer_kv_heads(layer), cfg.layer_head_dim(layer)
        self.shared = cfg.kv_source(layer) != layer
        self.k_eq_v = cfg.layer_k_eq_v(layer)
        h, d = cfg.hidden_size, self.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        if cfg.qk_norm:
            self.q_norm = Norm(d, cfg)
        if not self.shared:
            self.k_proj = nn.Linear(h, self.kv_heads * d, bias=False)
            if not self.k_eq_v:
                self.v_proj = nn.Linear(h, self.kv_heads * d, bias=False)
            if cfg.qk_norm:
                self.k_norm = Norm(d, cfg)

    def forward(self, x, position_ids, attention_mask, past_k, past_v, lookahead=None):
        cfg = self.cfg
        b, s, _ = x.shape
        theta, scale, pairs = cfg.layer_rope(self.layer)
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        if cfg.qk_norm:
            q = self.q_norm(q)
        q = ops.rope(q, position_ids, theta, scale, pairs)
        if self.shared:  # no new keys: past is the source layer's cache, this step's keys included
            k = v = past_k.transpose(1, 2)[:, :0]
        else:
            k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)
            v = k if self.k_eq_v else self.v_proj(x).view(b, s, self.kv_heads, self.head_dim)
            if cfg.qk_norm:
                k = self.k_norm(k)
            if cfg.v_norm:
                v = ops.unit_rms_norm(v, cfg.rms_norm_eps)
            k = ops.rope(k, position_ids, theta, scale, pairs)
        out, present_k, present_v = ops.attention(
            q, k, v, past_k, past_v, attention_mask,
            cfg.query_scale, cfg.attn_softcap or 0.0, cfg.layer_window(self.layer) or 0,
            lookahead if cfg.layer_lookahead(self.layer) else None)
        return self.o_proj(out), present_k, present_v


class MLP(nn.Module):
    """sparsity (Gemma 3n): the gate keeps only what exceeds its mean + std x the normal quantile
    of this target (Gaussian top-k) before the activation; 0: dense."""

    def __init__(self, hidden: int, intermediate: int, sparsity: float = 0.0):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.cutoff = ops.gaussian_cutoff_multiplier(sparsity) if sparsity else None

    def forward(self, x):
        gate = self.gate_proj(x)
        if self.cutoff is not None:
            gate = ops.gaussian_top_k(gate, self.cutoff)
        return self.down_proj(ops.geglu(gate, self.up_proj(x)))


class AltUp(nn.Module):
    """Gemma 3n's AltUp over the residual stream's N streams [N, B, S, H]: predict mixes the
    streams by coefficients a router reads off the active stream; correct spreads what the layer
    changed in the active stream to every stream, each by its own router-given coefficient."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        n, h = cfg.altup_num_inputs, cfg.hidden_size
        self.correct_output_scale = nn.Parameter(torch.zeros(h))
        self.correction_coefs = nn.Linear(n, n, bias=False)
        self.prediction_coefs = nn.Linear(n, n * n, bias=False)
        self.modality_router = nn.Linear(h, n, bias=False)
        self.router_norm = Norm(h, cfg)
        self.n, self.active, self.router_scale = n, cfg.altup_active_idx, 1.0 / h

    def _modalities(self, x):
        routed = self.modality_router(self.router_norm(x) * self.router_scale)
        return torch.tanh(routed.to(ops.compute_dtype(routed.dtype))).to(x.dtype)

    def predict(self, streams):
        m = self._modalities(streams[self.active])
        coefs = self.prediction_coefs(m).view(*m.shape[:-1], self.n, self.n)  # [B, S, to, from]
        mixed = torch.matmul(streams.permute(1, 2, 3, 0), coefs.transpose(-1, -2))  # [B, S, H, N]
        return mixed.permute(3, 0, 1, 2) + streams

    def correct(self, predictions, activated):
        m = self._modalities(activated)
        innovation = activated - predictions[self.active]
        coefs = self.correction_coefs(m) + 1.0  # [B, S, N]
        return innovation[None] * coefs.permute(2, 0, 1)[..., None] + predictions


class Laurel(nn.Module):
    """Gemma 3n's LAuReL: x plus a normalised rank-r product of x."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.linear_left = nn.Linear(cfg.hidden_size, cfg.laurel_rank, bias=False)
        self.linear_right = nn.Linear(cfg.laurel_rank, cfg.hidden_size, bias=False)
        self.post_laurel_norm = Norm(cfg.hidden_size, cfg)

    def forward(self, x):
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class Router(nn.Module):
    """Gemma 4's expert router: weightless RMSNorm x scale x hidden^-0.5 -> logits -> softmax
    (fp32) -> top-k, renormalised, x the chosen experts' per_expert_scale."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(cfg.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(cfg.num_experts))
        self.eps, self.top_k, self.hidden_scale = cfg.rms_norm_eps, cfg.top_k_experts, cfg.hidden_size ** -0.5

    def forward(self, x):
        z = ops.unit_rms_norm(x, self.eps) * self.scale * self.hidden_scale
        probs = torch.softmax(self.proj(z).to(ops.compute_dtype(z.dtype)), dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True) * self.per_expert_scale[experts]
        return weights.to(x.dtype), experts


class Experts(nn.Module):
    """The routed experts in the form every target runs: each token gathers only its top-k
    experts' weights (gate_up [E, 2I, H], down [E, H, I]) and sums their GeGLU outputs by weight."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.zeros(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.zeros(e, h, i))

    def forward(self, x, weights, experts):
        """x [B, S, H], weights and experts [B, S, k]: the chosen rows of each expert table are
        gathered first (Gather on the stored tensor: nothing reads the other experts)."""
        chosen = experts.reshape(-1)
        gate_up = torch.index_select(self.gate_up_proj, 0, chosen).view(*experts.shape, *self.gate_up_proj.shape[1:])
        product = torch.matmul(gate_up, x[:, :, None, :, None]).squeeze(-1)
        width = product.shape[-1] // 2
        gate, up = product[..., :width], product[..., width:]  # slices: TensorRT has no sequence ops
        down = torch.index_select(self.down_proj, 0, chosen).view(*experts.shape, *self.down_proj.shape[1:])
        out = torch.matmul(down, ops.geglu(gate, up)[..., None]).squeeze(-1)  # [B, S, k, H]
        return (out * weights[..., None]).sum(dim=2)


class DecoderLayer(nn.Module):
    """attention: the class of self_attn (the embedding model's is bidirectional, graphs/embedding.py)."""

    def __init__(self, cfg: GemmaConfig, layer: int, attention: type[nn.Module] = Attention):
        super().__init__()
        h = cfg.hidden_size
        self.cfg = cfg
        self.self_attn = attention(cfg, layer)
        self.mlp = MLP(h, cfg.layer_intermediate_size(layer), cfg.layer_sparsity(layer))
        self.input_layernorm = Norm(h, cfg)
        # Gemma 1: the pre-MLP norm. Gemma 2-4: the norm of the attention output.
        if not cfg.unnormed_outputs:
            self.post_attention_layernorm = Norm(h, cfg)
        if cfg.sandwich_norms:
            self.pre_feedforward_layernorm = Norm(h, cfg)
            if not cfg.unnormed_outputs:
                self.post_feedforward_layernorm = Norm(h, cfg)
        if cfg.num_experts:
            self.router = Router(cfg)
            self.experts = Experts(cfg)
            self.pre_feedforward_layernorm_2 = Norm(h, cfg)
            self.post_feedforward_layernorm_1 = Norm(h, cfg)
            self.post_feedforward_layernorm_2 = Norm(h, cfg)
        if cfg.hidden_size_per_layer_input:
            self.per_layer_input_gate = nn.Linear(h, cfg.hidden_size_per_layer_input, bias=False)
            self.per_layer_projection = nn.Linear(cfg.hidden_size_per_layer_input, h, bias=False)
            self.post_per_layer_input_norm = Norm(h, cfg)
        if cfg.layer_scalar:
            self.layer_scalar = nn.Parameter(torch.ones(1))
        if cfg.altup_num_inputs:
            self.altup = AltUp(cfg)
        if cfg.laurel_rank:
            self.laurel = Laurel(cfg)

    def forward(self, x, position_ids, attention_mask, past_k, past_v, per_layer_input=None, lookahead=None):
        """x: the residual stream [B, S, H]; with AltUp its streams [N, B, S, H], of which the
        layer computes on the active one's prediction."""
        cfg = self.cfg
        if cfg.altup_num_inputs:
            predictions = self.altup.predict(x)
            x = predictions[cfg.altup_active_idx]
        normed = self.input_layernorm(x)
        a, present_k, present_v = self.self_attn(normed, position_ids, attention_mask, past_k, past_v, lookahead)
        if not cfg.sandwich_norms:
            x = x + a
            return x + self.mlp(self.post_attention_layernorm(x)), present_k, present_v
        if self.cfg.unnormed_outputs:
            x = x + a
            return x + self.mlp(self.pre_feedforward_layernorm(x)), present_k, present_v
        x = x + self.post_attention_layernorm(a)
        if cfg.laurel_rank:
            x = (x + self.laurel(normed)) / math.sqrt(2)
        m = self.mlp(self.pre_feedforward_layernorm(x))
        if self.cfg.num_experts:  # the router and the experts read the residual stream
            routed = self.experts(self.pre_feedforward_layernorm_2(x), *self.router(x))
            m = self.post_feedforward_layernorm_1(m) + self.post_feedforward_layernorm_2(routed)
        x = x + self.post_feedforward_layernorm(m)
        if cfg.altup_num_inputs:
            streams = self.altup.correct(predictions, x)
            if per_layer_input is None:
                return streams, present_k, present_v
            active = streams[cfg.altup_active_idx]
            if cfg.altup_correct_scale:
                active = active * self.altup.correct_output_scale
            # transformers adds it to every stream but the first, whichever is active
            added = self._per_layer_output(active, per_layer_input)[None]
            return torch.cat([streams[:1], streams[1:] + added]), present_k, present_v
        if per_layer_input is not None:
            x = x + self._per_layer_output(x, per_layer_input)
        if cfg.layer_scalar:
            x = x * self.layer_scalar
        return x, present_k, present_v

    def _per_layer_output(self, x, per_layer_input):
        """The per-layer input gated by x, projected back to the hidden size and normalised."""
        gated = ops.geglu(self.per_layer_input_gate(x), per_layer_input)
        return self.post_per_layer_input_norm(self.per_layer_projection(gated))


class Body(nn.Module):
    """HF's `model.`: the token embedding, the layers and the final norm."""

    def __init__(self, cfg: GemmaConfig, attention: type[nn.Module] = Attention):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, attention) for i in range(cfg.num_layers))
        self.norm = Norm(cfg.hidden_size, cfg)
        self.cfg = cfg
        width = cfg.hidden_size_per_layer_input
        if width:  # Gemma 4's per-layer inputs: a token table only ever gathered, and a projection
            if cfg.vocab_size_per_layer_input:
                self.embed_tokens_per_layer = nn.Embedding(cfg.vocab_size_per_layer_input, cfg.num_layers * width)
            self.per_layer_model_projection = nn.Linear(cfg.hidden_size, cfg.num_layers * width, bias=False)
            self.per_layer_projection_norm = Norm(width, cfg)
        if cfg.altup_num_inputs:  # Gemma 3n: the extra streams made from the embedding, and folded back
            streams = range(cfg.altup_num_inputs - 1)
            self.altup_projections = nn.ModuleList(nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
                                                   for _ in streams)
            self.altup_unembed_projections = nn.ModuleList(nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
                                                           for _ in streams)

    def per_layer_inputs(self, input_ids, x):
        """Gemma 4: [B, S, layers, width], the gathered per-layer token embeddings and a
        projection of the scaled embedding x, each normalised, summed and scaled by 2^-0.5; with
        no token table (EmbeddingGemma 2) the normalised projection alone."""
        cfg = self.cfg
        b, s = input_ids.shape
        width = cfg.hidden_size_per_layer_input
        projected = self.per_layer_model_projection(x) * cfg.hidden_size ** -0.5
        projected = self.per_layer_projection_norm(projected.view(b, s, cfg.num_layers, width))
        if not cfg.vocab_size_per_layer_input:
            return projected
        if cfg.vocab_size_per_layer_input < cfg.vocab_size:  # Gemma 3n: ids beyond the table are looked up as 0
            input_ids = torch.where(input_ids < cfg.vocab_size_per_layer_input, input_ids, 0)
        tokens = self.embed_tokens_per_layer(input_ids) * ops.embed_scale(width, x.dtype)
        return (projected + tokens.view(b, s, cfg.num_layers, width)) * 2.0 ** -0.5


def cache_tensors(cfg: GemmaConfig) -> list[CacheTensor]:
    """The model's caches in forward's order: a key and a value per layer that computes its own."""
    caches = []
    for i in range(cfg.num_layers):
        if cfg.kv_source(i) != i:
            continue
        readers = tuple(j for j in range(cfg.num_layers) if cfg.kv_source(j) == i)
        for kind in ("key", "value"):
            caches.append(CacheTensor.growing(f"{kind}.{i}", kind, cfg.layer_kv_heads(i), cfg.layer_head_dim(i), (i,),
                                              readers))
    return caches


def layer_caches(cfg: GemmaConfig) -> list[tuple[int, int]]:
    """Per layer, the indices in cache_tensors() of the key and value cache it reads (and writes,
    unless it shares another layer's)."""
    indices = {(slot.kind, reader): i for i, slot in enumerate(cache_tensors(cfg)) for reader in slot.read_by}
    return [(indices["key", layer], indices["value", layer]) for layer in range(cfg.num_layers)]


class GemmaForCausalLM(nn.Module):
    """forward(input_ids, position_ids, attention_mask, *past caches in cache_tensors() order)
    -> (logits fp32 [B, S, vocab], *present caches in the same order). A media decoder
    (cfg.media_inputs) takes spliced_embeds, spliced_columns and lookahead after attention_mask
    (runtime/interface.py says what they mean).

    hidden_states(same inputs) -> (logits, [the residual stream after each decoder layer]): the
    per-layer reference gemma_export/verify/pass_bisect.py compares exported graphs with; forward, which is
    what the front end traces, keeps none of them."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        self.lm_head_input = nn.Identity()

    def forward(self, input_ids, position_ids, attention_mask, *rest):
        media, past = self._split(rest)
        return self._decode(input_ids, position_ids, attention_mask, media, past, None)

    def hidden_states(self, input_ids, position_ids, attention_mask, *rest) -> tuple[torch.Tensor, list[torch.Tensor]]:
        layers: list[torch.Tensor] = []
        media, past = self._split(rest)
        logits = self._decode(input_ids, position_ids, attention_mask, media, past, layers)[0]
        return logits, layers

    def _split(self, rest: tuple) -> tuple[tuple | None, tuple]:
        """(spliced_embeds, spliced_columns, lookahead) or None, and the past caches."""
        return (tuple(rest[:3]), rest[3:]) if self.cfg.media_inputs else (None, rest)

    def _decode(self, input_ids, position_ids, attention_mask, media, past, layer_outputs: list | None):
        x, per_layer = self.embed(input_ids, None if media is None else media[:2])
        lookahead = None if media is None else media[2]
        presents = list(past)
        x = self.layers_from(0, x, position_ids, attention_mask, past, presents, per_layer, layer_outputs, lookahead)
        return (self.head(x), *presents)

    def embed(self, input_ids, spliced=None):
        """The scaled token embeddings and (Gemma 4) the per-layer inputs, else None. spliced
        (spliced_embeds [B, N, H], spliced_columns [B, N]): those rows replace their columns'
        embeddings, and the columns are looked up as the pad token in the per-layer table (as
        transformers does at placeholder positions)."""
        cfg = self.cfg
        if spliced is not None:
            embeds, columns = spliced
            hit = columns[:, :, None] == torch.arange(input_ids.shape[1], device=input_ids.device)  # [B, N, S]
            # a sum, not any(): ONNX's ReduceMax of an empty set (a call that splices nothing, N = 0)
            # is the type's lowest value, which casts to True
            replaced = hit.to(torch.float32).sum(dim=1) > 0
            input_ids = torch.where(replaced, cfg.pad_token_id, input_ids)
        x = self.model.embed_tokens(input_ids)
        x = x * ops.embed_scale(cfg.hidden_size, x.dtype)
        if spliced is not None:  # one-hot rows: a MatMul places each given row at its column exactly
            x = torch.where(replaced[..., None], hit.transpose(1, 2).to(x.dtype) @ embeds.to(x.dtype), x)
        per_layer = self.model.per_layer_inputs(input_ids, x) if cfg.hidden_size_per_layer_input else None
        if cfg.altup_num_inputs:  # [N, B, S, H]: x, and each projection of x at x's RMS
            x = torch.stack([x, *(_rescaled(p(x), x) for p in self.model.altup_projections)])
        return x, per_layer

    def layers_from(self, start: int, x, position_ids, attention_mask, past, presents: list, per_layer,
                    layer_outputs: list | None = None, lookahead=None):
        """The residual stream after decoder layers start, start + 1, ... (x enters layer start).
        presents (cache_tensors() order) is filled in place; a KV-shared layer reads its source
        layer's entry, written in this call or, for a source before start, already there."""
        cfg = self.cfg
        for i, (k, v) in enumerate(layer_caches(cfg)):
            if i < start:
                continue
            layer = self.model.layers[i]
            extra = (None if per_layer is None else per_layer[:, :, i], lookahead)
            if cfg.kv_source(i) == i:
                x, presents[k], presents[v] = layer(x, position_ids, attention_mask, past[k], past[v], *extra)
            else:  # this step's cache of the source layer, its new keys included
                x, _, _ = layer(x, position_ids, attention_mask, presents[k], presents[v], *extra)
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x

    def head(self, x):
        """Logits (at least fp32) of the residual stream: the final norm, the tied lm_head, whose
        input passes lm_head_input (an identity: a place for a hook), and the final softcap."""
        cfg = self.cfg
        if cfg.altup_num_inputs:  # the mean of the streams, each brought back and to stream 0's RMS
            x = torch.stack([x[0], *(_rescaled(p(x[i + 1]), x[0])
                                     for i, p in enumerate(self.model.altup_unembed_projections))]).mean(dim=0)
        x = self.lm_head_input(self.model.norm(x))
        logits = x @ self.model.embed_tokens.weight.t()
        logits = logits.to(ops.compute_dtype(logits.dtype))
        if cfg.final_softcap:
            logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        return logits


def _rescaled(y, like):
    """y scaled to like's RMS over the hidden axis (y's own RMS at least 1e-5 ** 0.5), as
    transformers' Gemma 3n computes it."""
    target = like.pow(2).mean(-1, keepdim=True) ** 0.5
    return y * target / torch.sqrt(y.pow(2).mean(-1, keepdim=True).clamp(min=1e-5))


def io_names(cfg: GemmaConfig) -> tuple[list[str], list[str]]:
    """Graph input and output names, in forward's order."""
    caches = cache_tensors(cfg)
    return decoder_input_names(caches, cfg.media_inputs), decoder_output_names(caches)


def parameter_shapes(cfg: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model reads (HF names) with its shape: the module's own, built on the meta device."""
    with torch.device("meta"):
        model = GemmaForCausalLM(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def load_reference(cfg: GemmaConfig, weights, dtype: torch.dtype = torch.float32) -> GemmaForCausalLM:
    """The eager reference with every weight read from a WeightSource."""
    with torch.device("meta"):
        model = GemmaForCausalLM(cfg)
    state = {}
    for name, p in model.named_parameters():
        arr = weights.read_rows(name, 0, p.shape[0])
        state[name] = torch.from_numpy(np.array(arr)).to(dtype)
    model.load_state_dict(state, assign=True)
    return model.eval()


def unread_parameters(cfg: GemmaConfig) -> set[str]:
    """Tensors a checkpoint may hold that the model does not read: a KV-shared layer's key and
    value projections and key norm (published Gemma 4 checkpoints keep them; re-saved ones do not)."""
    return {f"model.layers.{i}.self_attn.{name}.weight" for i in range(cfg.num_layers) if cfg.kv_source(i) != i
            for name in ("k_proj", "v_proj", "k_norm", "v_norm")}
