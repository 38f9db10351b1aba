"""The runtime allocates and binds the manifest's cache buffers, not one per layer: a hand-made
in-place graph whose single buffer is written by layer 0 and read by layers 0 and 1 (as a shared
KV cache is) runs with that buffer bound once and kept across calls."""

import numpy as np
import onnx
from onnx import TensorProto, helper

import gemma_runtime
from gemma_runtime.interface import DECODER, CacheTensor
from gemma_runtime.manifest import (FORMAT_VERSION, MODEL_FILE, Execution, Graph, KVCache, Manifest, TensorSpec,
                                    Tokens, write_manifest)

LENGTH = 8  # the buffer's positions


def _graph() -> onnx.ModelProto:
    """logits[b, k] = (sum, max) of every id row b has written so far: layer 0 writes the ids into
    the buffer and sums it; layer 1 reads the same buffer and takes its maximum."""
    ints = lambda name, *dims: helper.make_tensor_value_info(name, TensorProto.INT64, list(dims))
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["x", "axes_1_3"], ["new"]),
        helper.make_node("TensorScatter", ["past_kv.0", "new", "past_lengths"], ["present_kv.0"], axis=2),
        helper.make_node("ReduceSum", ["present_kv.0", "axes_1_2_3"], ["layer0"], keepdims=0),
        helper.make_node("ReduceMax", ["present_kv.0", "axes_1_2_3"], ["layer1"], keepdims=0),
        helper.make_node("Unsqueeze", ["layer0", "axes_1"], ["l0"]),
        helper.make_node("Unsqueeze", ["layer1", "axes_1"], ["l1"]),
        helper.make_node("Concat", ["l0", "l1"], ["pair"], axis=1),
        helper.make_node("Unsqueeze", ["pair", "axes_1"], ["rows"]),  # [B, 1, 2]
        helper.make_node("Cast", ["logits_index"], ["keep"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["keep", "zero"], ["zeros"]),
        helper.make_node("Unsqueeze", ["zeros", "axes_2"], ["columns"]),  # [B, K, 1]
        helper.make_node("Add", ["rows", "columns"], ["logits"]),
    ]
    constants = [helper.make_tensor("axes_1_3", TensorProto.INT64, [2], [1, 3]),
                 helper.make_tensor("axes_1_2_3", TensorProto.INT64, [3], [1, 2, 3]),
                 helper.make_tensor("axes_1", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("axes_2", TensorProto.INT64, [1], [2]),
                 helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    cache = ["batch", 1, LENGTH, 1]
    graph = helper.make_graph(
        nodes, "shared-cache",
        [ints("input_ids", "batch", "seq"), ints("position_ids", "batch", "seq"), ints("past_lengths", "batch"),
         ints("seq_lengths", "batch"), ints("logits_index", "batch", "keep"),
         helper.make_tensor_value_info("past_kv.0", TensorProto.FLOAT, cache)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "keep", 2]),
         helper.make_tensor_value_info("present_kv.0", TensorProto.FLOAT, cache)],
        initializer=constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])


def _artifact(folder):
    folder.mkdir()
    onnx.save(_graph(), str(folder / MODEL_FILE))
    buffer = CacheTensor("kv.0", "key", ("batch", 1, LENGTH, 1), written_by=(0,), read_by=(0, 1), layout="full")
    specs = {"input_ids": TensorSpec("int64", ("batch", "seq"))}
    write_manifest(folder, Manifest(
        format_version=FORMAT_VERSION, producer="test", family="gemma", config={"vocab_size": 2},
        target="onnx", dtype="fp32", quant={"method": "none"}, graphs={DECODER: Graph(DECODER, MODEL_FILE, None, specs, {})},
        kv_cache=KVCache("inplace", LENGTH, (buffer,)), execution=Execution(("ort",), ("cpu",)),
        tokens=Tokens(bos=2, eos=9, pad=0), generation_config=None, passes=[], report={}, sources={}, source="test"))
    return folder


def test_two_layers_reading_one_buffer_bind_it_once(tmp_path):
    model = gemma_runtime.load(_artifact(tmp_path / "shared"), threads=1)
    backend = model.backend
    backend.reserve(1)
    np.testing.assert_array_equal(backend.step([[3, 1, 4]], [0], [3])[:, 0], [[8, 4]])
    assert len(backend.cache) == 1  # one array for the one buffer, read by both layers
    pointer = backend.cache[0].ctypes.data
    np.testing.assert_array_equal(backend.step([[5]], [3], [1])[:, 0], [[13, 5]])  # the buffer kept its ids
    np.testing.assert_array_equal(backend.step([[2]], [4], [1])[:, 0], [[15, 5]])
    assert backend.cache[0].ctypes.data == pointer
    assert model.manifest.kv_cache.buffers[0].read_by == (0, 1)
