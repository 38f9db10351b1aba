"""A tiny random EmbeddingGemma saved by sentence-transformers in its real folder layout: a
bidirectional Gemma 3 body (3 heads, 1 KV head, as the 300M model), mean pooling, two dense
layers, Normalize, query/document prompts and a SentencePiece tokenizer that frames a text with
BOS and EOS (as EmbeddingGemma's does)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from test_chat_tokens import gemma1_like_tokenizer
from tiny import randomise

HIDDEN, WIDE = 48, 96  # the dense layers: 48 -> 96 -> 48 (EmbeddingGemma: 768 -> 3072 -> 768)
MAX_SEQ_LENGTH = 64
PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
# sliding layers see 3 positions either side (sliding_window 6), so texts over 4 tokens cross the window
BODY = dict(vocab_size=384, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=3, head_dim=32,
            num_attention_heads=3, num_key_value_heads=1, sliding_window=6, query_pre_attn_scalar=32,
            max_position_embeddings=256, use_bidirectional_attention=True,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"])


def sentence_transformer(folder: Path, seed: int = 0):
    """The model, built from a transformers folder written beside `folder` (sentence-transformers
    loads its Transformer module from one)."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    body_folder = folder.parent / f"{folder.name}-body"
    torch.manual_seed(seed)
    body = transformers.Gemma3TextModel(transformers.Gemma3TextConfig(**BODY)).eval()
    randomise(body)
    body.save_pretrained(body_folder)
    # <mask> at id 4, as in Gemma's vocabulary (else transformers appends it beyond the model's)
    (body_folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer({4: "<mask>"}))
    (body_folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": True, "padding_side": "right",
         "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    dense = [Dense(HIDDEN, WIDE, bias=False, activation_function=torch.nn.Identity()),
             Dense(WIDE, HIDDEN, bias=False, activation_function=torch.nn.Identity())]
    with torch.no_grad():
        for layer in dense:
            layer.linear.weight.normal_(0.0, 0.15)
    return SentenceTransformer(modules=[Transformer(str(body_folder), max_seq_length=MAX_SEQ_LENGTH),
                                        Pooling(HIDDEN, "mean"), *dense, Normalize()], prompts=PROMPTS, device="cpu")


def write_embedding_checkpoint(folder: Path, seed: int = 0) -> Path:
    sentence_transformer(folder, seed).save(str(folder))
    return folder


# EmbeddingGemma 2: a Gemma 4 body as an encoder (sliding layers of radius 3, full layers of head_dim 64
# and 1 KV head), per-layer inputs of width 8 from the projection alone, a projection to 40 dimensions
EG2_TEXT = dict(vocab_size=384, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, global_head_dim=64, num_global_key_value_heads=1, sliding_window=3,
                hidden_size_per_layer_input=8, embedding_dim=40, max_position_embeddings=256,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
EG2_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def embedding_gemma2(seed: int = 0, vision: bool = True):
    """transformers' EmbeddingGemma2Model, random, with a tiny image tower the export skips."""
    import transformers

    vision_config = transformers.Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, patch_size=4, pooling_kernel_size=2, position_embedding_size=64) if vision else None
    cfg = transformers.EmbeddingGemma2Config(text_config=transformers.EmbeddingGemma2TextConfig(**EG2_TEXT),
                                             vision_config=vision_config)
    cfg._attn_implementation = cfg.text_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.EmbeddingGemma2Model(cfg).eval()
    randomise(model)
    return model


def write_embedding_gemma2(folder: Path, seed: int = 0) -> Path:
    """The model's transformers folder with a SentencePiece tokenizer (BOS and EOS around a text) and
    sentence-transformers' prompts file."""
    embedding_gemma2(seed).save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer({4: "<mask>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": True, "padding_side": "right",
         "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": EG2_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}))
    return folder
