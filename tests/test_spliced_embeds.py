"""Spliced embeddings (interface.SPLICED_EMBEDS / SPLICED_COLUMNS), on a hand-made decoder: ids are
embedded by a Gather, the given rows overwrite their columns (a one-hot MatMul, so that column -1
matches nothing), a MatMul gives the logits of the kept columns; its one in-place cache input is
passed through. The logits at a spliced column come from the given embedding, the others from the
token's; a decoder without the inputs refuses splices; one with them and none given gets an empty
[rows, 0, hidden] feed."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import gemma_runtime
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import (DECODER, INPUT_IDS, LOGITS, LOOKAHEAD, LOGITS_INDEX, PAST_LENGTHS, POSITION_IDS,
                                     SEQ_LENGTHS, SPLICED_COLUMNS, SPLICED_EMBEDS, CacheTensor, Splice)
from gemma_runtime.manifest import (FORMAT_VERSION, MODEL_FILE, ChatFormat, Execution, Graph, KVCache, Manifest,
                                    TensorSpec, Tokens, write_manifest)

VOCAB, HIDDEN, LENGTH = 8, 4, 16
rng = np.random.default_rng(0)
EMBEDDING = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
HEAD = rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32)
CACHE = CacheTensor("kv.0", "key", ("batch", 1, LENGTH, 1), written_by=(0,), read_by=(0,), layout="full")


def decoder(media: bool) -> tuple[onnx.ModelProto, dict[str, TensorSpec]]:
    ints = {INPUT_IDS: ["batch", "seq"], POSITION_IDS: ["batch", "seq"], PAST_LENGTHS: ["batch"],
            SEQ_LENGTHS: ["batch"], LOGITS_INDEX: ["batch", "keep"]}
    if media:
        ints[SPLICED_COLUMNS] = ["batch", "spliced"]
        ints[LOOKAHEAD] = ["batch", "seq"]  # read by attention in a real decoder; this one has none
    nodes = [helper.make_node("Gather", ["embedding", INPUT_IDS], ["embedded"])]
    hidden = "embedded"
    if media:
        nodes += [
            helper.make_node("Shape", [INPUT_IDS], ["ids_shape"]),
            helper.make_node("Gather", ["ids_shape", "one"], ["width"]),
            helper.make_node("Range", ["zero", "width", "one"], ["columns"]),
            helper.make_node("Unsqueeze", [SPLICED_COLUMNS, "axes_1"], ["targets"]),  # [B, 1, N]
            helper.make_node("Unsqueeze", ["columns", "axes_0_2"], ["positions"]),  # [1, S, 1]
            helper.make_node("Equal", ["targets", "positions"], ["hits"]),  # [B, S, N]
            helper.make_node("Cast", ["hits"], ["onehot"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["onehot", SPLICED_EMBEDS], ["spliced"]),  # [B, S, H]
            helper.make_node("ReduceSum", ["onehot", "axes_2"], ["covered"], keepdims=1),  # [B, S, 1]
            helper.make_node("Sub", ["one_f", "covered"], ["uncovered"]),
            helper.make_node("Mul", ["embedded", "uncovered"], ["kept"]),
            helper.make_node("Add", ["kept", "spliced"], ["hidden"]),
        ]
        hidden = "hidden"
    nodes += [
        helper.make_node("MatMul", [hidden, "head"], ["all_logits"]),  # [B, S, V]
        helper.make_node("Unsqueeze", [LOGITS_INDEX, "axes_2"], ["gather_index"]),
        helper.make_node("GatherND", ["all_logits", "gather_index"], [LOGITS], batch_dims=1),
        helper.make_node("Identity", [CACHE.input_name], [CACHE.output_name]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, d) for n, d in ints.items()]
    inputs.append(helper.make_tensor_value_info(CACHE.input_name, TensorProto.FLOAT, list(CACHE.shape)))
    if media:
        inputs.append(helper.make_tensor_value_info(SPLICED_EMBEDS, TensorProto.FLOAT, ["batch", "spliced", HIDDEN]))
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "keep", VOCAB]),
               helper.make_tensor_value_info(CACHE.output_name, TensorProto.FLOAT, list(CACHE.shape))]
    constants = [numpy_helper.from_array(EMBEDDING, "embedding"), numpy_helper.from_array(HEAD, "head"),
                 numpy_helper.from_array(np.array(0, np.int64), "zero"),
                 numpy_helper.from_array(np.array(1, np.int64), "one"),
                 numpy_helper.from_array(np.array(1, np.float32), "one_f"),
                 numpy_helper.from_array(np.array([1], np.int64), "axes_1"),
                 numpy_helper.from_array(np.array([2], np.int64), "axes_2"),
                 numpy_helper.from_array(np.array([0, 2], np.int64), "axes_0_2")]
    graph = helper.make_graph(nodes, "spliced-decoder", inputs, outputs, initializer=constants)
    specs = {i.name: TensorSpec("int64" if i.type.tensor_type.elem_type == TensorProto.INT64 else "float",
                                tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim))
             for i in inputs}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), specs


def artifact(folder, media: bool):
    folder.mkdir()
    model, specs = decoder(media)
    onnx.save(model, str(folder / MODEL_FILE))
    write_manifest(folder, Manifest(
        format_version=FORMAT_VERSION, producer="test", family="gemma3", config={"vocab_size": VOCAB},
        target="onnx", dtype="fp32", quant={"method": "none"},
        graphs={DECODER: Graph(DECODER, MODEL_FILE, None, specs, {LOGITS: TensorSpec("float", ("batch", "keep", VOCAB))})},
        kv_cache=KVCache("inplace", LENGTH, (CACHE,)), execution=Execution(("ort",), ("cpu",)),
        tokens=Tokens(bos=2, eos=1, pad=0), generation_config=None, passes=[], report={}, sources={}, source="test",
        chat=ChatFormat("<start_of_turn>", "<end_of_turn>", "model", "first_user_turn")))
    return folder


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    backend = gemma_runtime.load(artifact(tmp_path_factory.mktemp("spliced") / "media", media=True), threads=1).backend
    backend.reserve(2)
    return backend


def test_logits_at_spliced_columns_come_from_the_given_embeddings(backend):
    ids = np.array([[2, 5, 6, 7], [2, 3, 0, 0]])
    image = rng.standard_normal((2, HIDDEN)).astype(np.float32)
    audio = rng.standard_normal((1, HIDDEN)).astype(np.float32)
    keep = np.tile(np.arange(4), (2, 1))
    logits = backend.step(ids, [0, 0], [4, 2], keep, spliced=[Splice(np.array([1, 2]), image),
                                                              Splice(np.array([1]), audio)])
    expected = EMBEDDING[ids] @ HEAD
    expected[0, 1:3] = image @ HEAD
    expected[1, 1] = audio @ HEAD
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    one_row = backend.step(ids, [4, 2], [4, 4], keep, spliced=[None, Splice(np.array([3]), audio)])
    expected = EMBEDDING[ids] @ HEAD
    expected[1, 3] = audio @ HEAD
    np.testing.assert_allclose(one_row, expected, rtol=1e-5, atol=1e-5)


def test_no_splice_feeds_an_empty_one(backend):
    ids = np.array([[2, 5], [2, 6]])
    np.testing.assert_allclose(backend.step(ids, [0, 0], [2, 2], [[0, 1], [0, 1]]), EMBEDDING[ids] @ HEAD,
                               rtol=1e-5, atol=1e-5)


def test_bad_splices_are_refused_in_one_line(backend, tmp_path):
    ids = np.array([[2, 5], [2, 6]])
    with pytest.raises(RuntimeInputError, match=r"row 0: a splice takes columns \[n\] and embeds \[n, 4\]"):
        backend.step(ids, [0, 0], [2, 2], spliced=[Splice(np.array([1]), np.zeros((1, 3), np.float32)), None])
    with pytest.raises(RuntimeInputError, match=r"row 1: spliced columns \[2\] outside the call's 2 columns"):
        backend.step(ids, [0, 0], [2, 2], spliced=[None, Splice(np.array([2]), np.zeros((1, HIDDEN), np.float32))])
    text_only = gemma_runtime.load(artifact(tmp_path / "text", media=False), threads=1).backend
    text_only.reserve(1)
    with pytest.raises(RuntimeInputError, match="takes token ids only .* cannot splice embeddings"):
        text_only.step([[2, 5]], [0], [2], spliced=[Splice(np.array([1]), np.zeros((1, HIDDEN), np.float32))])
    np.testing.assert_allclose(text_only.step([[2, 5]], [0], [2])[0, 0], EMBEDDING[5] @ HEAD, rtol=1e-5, atol=1e-5)


def test_a_call_continuing_several_rows_runs_row_by_row_each_with_its_splice(tmp_path):
    """Several rows continuing their caches by more than one token each run one row at a time
    (GroupQueryAttention before onnxruntime 1.32 takes no per-row query lengths): each row keeps its
    own splice, and a kept column beyond a row's tokens reads its last one."""
    backend = gemma_runtime.load(artifact(tmp_path / "rows", media=True), threads=1).backend
    backend.reserve(3)
    image = rng.standard_normal((1, HIDDEN)).astype(np.float32)
    backend.step([[2, 5, 6], [2, 5, 0]], [0, 0], [3, 2])
    logits = backend.step([[7, 1, 3], [2, 4, 0]], [3, 2], [3, 2], [[0, 1, 2], [0, 1, 2]],
                          first_row=1, spliced=[Splice(np.array([1]), image), None])
    expected = EMBEDDING[[7, 1, 3]] @ HEAD
    expected[1] = image[0] @ HEAD
    assert logits.shape == (2, 3, VOCAB)
    np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[1], EMBEDDING[[2, 4, 4]] @ HEAD, rtol=1e-5, atol=1e-5)
