"""Chat and stop tokens come from the artifact's tokenizer: Gemma 1 numbers them 106/107
(Gemma 3: 105/106, checked on the real model in test_real_model.py)."""

import shutil

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_runtime.chat import render
from sentencepiece import sentencepiece_model_pb2 as sp_pb2


def gemma1_like_tokenizer(special: dict[int, str] | None = None) -> bytes:
    """A small SentencePiece model laid out like Gemma 1's: pad 0, eos 1, bos 2, unk 3,
    <start_of_turn> 106, <end_of_turn> 107. special: id -> piece, user-defined pieces put in place
    of those ids' (a multimodal model's image tokens, another family's turn pieces)."""
    proto = sp_pb2.ModelProto()
    t = sp_pb2.ModelProto.SentencePiece.Type
    pieces = [("<pad>", t.CONTROL), ("<eos>", t.CONTROL), ("<bos>", t.CONTROL), ("<unk>", t.UNKNOWN)]
    pieces += [(f"<unused{i}>", t.USER_DEFINED) for i in range(4, 106)]
    pieces += [("<start_of_turn>", t.USER_DEFINED), ("<end_of_turn>", t.USER_DEFINED)]
    pieces += [(f"<0x{b:02X}>", t.BYTE) for b in range(256)]
    pieces += [(c, t.NORMAL) for c in "\u2581abcdefghijklmnopqrs"]  # 384 pieces: the tiny vocab
    for i, piece in (special or {}).items():
        pieces[i] = (piece, t.USER_DEFINED)
    for i, (piece, kind) in enumerate(pieces):
        proto.pieces.add(piece=piece, score=-float(i), type=kind)
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 3, 2, 1, 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    return proto.SerializeToString()


def with_tokenizer(checkpoint, folder):
    """A copy of a tiny checkpoint at folder, with gemma1_like_tokenizer() as its tokenizer.model."""
    folder = shutil.copytree(checkpoint, folder)
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    return folder


def test_gemma1_chat_and_stop_tokens(tiny_checkpoints, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["gemma-mqa"], folder)
    (folder / "tokenizer.model").write_bytes(gemma1_like_tokenizer())
    export(folder, tmp_path / "out", ExportOptions(target="generic"))
    model = gemma_runtime.load(tmp_path / "out")
    assert model.manifest.tokens.start_of_turn == 106
    assert model.manifest.tokens.end_of_turn == 107
    assert model.stop_ids == {1, 107}
    ids = model.tokenizer.encode(render([{"role": "user", "content": "hi"}], model.chat_format()))
    assert ids[:2] == [2, 106] and 107 in ids
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
