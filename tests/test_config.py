"""config.json in both transformers forms; anything unknown or unsupported is an error."""

import pytest

from gemma_export.checkpoints.hf_config import parse_checkpoint_config, parse_hf_config
from gemma_export.errors import ConfigError

GEMMA3_V4 = {  # transformers 4.x form of a Gemma 3 270M config
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640, "initializer_range": 0.02, "intermediate_size": 2048,
    "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 18,
    "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": 512, "torch_dtype": "bfloat16", "transformers_version": "4.55.0",
    "use_cache": True, "vocab_size": 262144, "_sliding_window_pattern": 6,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
}


def test_gemma3_v4_form():
    cfg = parse_hf_config(GEMMA3_V4)
    assert cfg.family == "gemma3" and cfg.num_kv_heads == 1 and cfg.head_dim == 256
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full"] == [5, 11, 17]
    assert cfg.layer_rope(0) == (10000.0, 1.0, 128) and cfg.layer_rope(5) == (1_000_000.0, 1.0, 128)
    assert cfg.attn_softcap is None and cfg.final_softcap is None and cfg.sliding_window == 512


def test_gemma3_v5_form_with_linear_scaling():
    raw = {k: v for k, v in GEMMA3_V4.items() if k not in ("rope_local_base_freq", "rope_scaling", "rope_theta")}
    raw["rope_parameters"] = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                              "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}
    cfg = parse_hf_config(raw)
    assert cfg.layer_rope(5) == (1e6, 8.0, 128) and cfg.layer_rope(4) == (10000.0, 1.0, 128)


def test_gemma2_defaults_put_layer_zero_local():
    raw = {"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "num_hidden_layers": 4, "vocab_size": 100, "intermediate_size": 128,
           "sliding_window": 4096, "query_pre_attn_scalar": 144}
    cfg = parse_hf_config(raw)
    assert cfg.layer_types == ("sliding", "full", "sliding", "full")
    assert (cfg.attn_softcap, cfg.final_softcap) == (50.0, 30.0)
    assert cfg.query_scale == pytest.approx(144 ** -0.5)


def test_a_null_softcap_turns_the_family_default_off():
    raw = {"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "num_hidden_layers": 2, "vocab_size": 100, "intermediate_size": 128,
           "sliding_window": 4096, "attn_logit_softcapping": None, "final_logit_softcapping": 30.0}
    cfg = parse_hf_config(raw)
    assert (cfg.attn_softcap, cfg.final_softcap) == (None, 30.0)


def test_head_dim_is_never_derived():
    raw = {"model_type": "gemma", "hidden_size": 3072, "num_attention_heads": 16, "num_hidden_layers": 2,
           "vocab_size": 100, "intermediate_size": 128}
    with pytest.raises(ConfigError, match="head_dim"):
        parse_hf_config(raw)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "unknown model_type 'llama'"),
    ({"frobnicate": 3}, "frobnicate"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_activation": "relu"}, "activation"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"num_key_value_heads": 3}, "multiple"),
    ({"layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"head_dim": "256"}, "head_dim"),
])
def test_unknown_or_unsupported_fields_are_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_hf_config({**GEMMA3_V4, **change})


def test_multimodal_gemma3_gives_its_text_decoder_and_its_image_encoder():
    text = {k: v for k, v in GEMMA3_V4.items() if k != "model_type"}  # text_config may omit it
    vision = {"image_size": 896, "patch_size": 14}  # the published config states these; the rest are defaults
    cfg, multimodal = parse_checkpoint_config({"model_type": "gemma3", "text_config": text, "vision_config": vision,
                                               "image_token_index": 262144, "mm_tokens_per_image": 256})
    assert cfg == parse_hf_config(GEMMA3_V4)
    assert (multimodal.model_type, multimodal.towers, multimodal.placeholder_ids) == \
        ("gemma3", ("vision",), {"image_token_index": 262144})
    [(kind, vision)] = multimodal.encoders
    assert kind == "gemma3_vision" and (vision.image_size, vision.hidden_size, vision.mm_tokens_per_image) == (896, 768, 256)
    assert vision.text_hidden_size == cfg.hidden_size


def test_multimodal_wrapper_fields_are_checked_too():
    with pytest.raises(ConfigError, match="frobnicate"):
        parse_checkpoint_config({"model_type": "gemma3", "text_config": GEMMA3_V4, "frobnicate": 1})
    with pytest.raises(ConfigError, match="text_config.model_type 'gemma2'"):
        parse_checkpoint_config({"model_type": "gemma3", "text_config": {**GEMMA3_V4, "model_type": "gemma2"}})


GEMMA4 = {"model_type": "gemma4_text", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 32, "num_hidden_layers": 6, "vocab_size": 100, "intermediate_size": 128,
          "sliding_window": 8, "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": 100,
          "attention_k_eq_v": True, "num_kv_shared_layers": 2, "final_logit_softcapping": 30.0,
          "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                              "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                 "rope_theta": 1000000.0}}}


def test_gemma4_published_and_resaved_configs_agree():
    published = parse_hf_config({**GEMMA4, "global_head_dim": 64, "num_global_key_value_heads": 1})
    overrides = {"head_dim": 64, "num_key_value_heads": 1}
    resaved = parse_hf_config({**GEMMA4, "per_layer_config": {"2": overrides, "5": overrides}})
    assert published == resaved
    assert (published.layer_head_dim(5), published.layer_kv_heads(5), published.layer_head_dim(0)) == (64, 1, 32)
    assert published.layer_rope(5) == (1e6, 1.0, 8) and published.layer_rope(0) == (1e4, 1.0, 16)
    assert [published.kv_source(i) for i in range(6)] == [0, 1, 2, 3, 3, 2]  # 4 reads 3's cache, 5 reads 2's


@pytest.mark.parametrize("change, message", [
    ({"per_layer_config": {"5": {"sliding_window": 3}}}, "sliding_window"),
    ({"per_layer_config": {"2": {"head_dim": 64}, "5": {"head_dim": 128}}}, "different head_dim"),
    ({"layer_types": ["sliding_attention"] * 6}, "KV-shared layers of a type"),  # the last is made full
    ({"per_layer_config": {"1": {"head_dim": 64}}}, "sliding-window layer"),
    ({"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
    ({"vocab_size_per_layer_input": 50}, "vocab_size_per_layer_input"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn"}}}, "yarn"),
    ({"enable_moe_block": True}, "num_experts"),
])
def test_gemma4_fields_we_do_not_support_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_hf_config({**GEMMA4, **change})


def test_gemma4_image_only_bidirectional_attention_sets_the_media_blocks():
    """"vision": an image's tokens see each other on sliding layers (the only difference)."""
    import dataclasses

    vision = parse_hf_config({**GEMMA4, "use_bidirectional_attention": "vision"})
    assert vision.media_blocks == "sliding" and parse_hf_config(GEMMA4).media_blocks == "none"
    assert dataclasses.replace(vision, media_blocks="none") == parse_hf_config(GEMMA4)


def test_the_family_is_resolved_into_config_fields():
    """Every structural switch is a field of the config once the checkpoint is read, so the
    manifest's config alone describes the model; the model definition reads no family table."""
    import dataclasses

    from gemma_graphs.config import GemmaConfig, InvalidConfig
    from gemma_graphs.gemma import GemmaForCausalLM

    cfg = parse_hf_config(GEMMA3_V4)
    assert (cfg.qk_norm, cfg.sandwich_norms, cfg.norm_offset, cfg.unscaled_queries, cfg.v_norm, cfg.layer_scalar) \
        == (True, True, 1.0, False, False, False)
    assert GemmaConfig.from_dict(cfg.to_dict()) == cfg
    # a Gemma 1 label with Gemma 3's switches builds Gemma 3's modules: only the fields decide
    small = dataclasses.replace(cfg, family="gemma", num_layers=1, layer_types=("full",), vocab_size=16,
                                hidden_size=8, intermediate_size=8, num_heads=1, head_dim=8)
    names = {n for n, _ in GemmaForCausalLM(small).named_parameters()}
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"} <= names
    old = {k: v for k, v in cfg.to_dict().items() if k != "qk_norm"}  # a manifest from before the field
    with pytest.raises(InvalidConfig, match=r"lacks fields \['qk_norm'\].*export it again"):
        GemmaConfig.from_dict(old)
