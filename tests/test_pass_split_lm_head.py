import numpy as np
import onnx
import onnxruntime as ort

from gemma_export.emit.artifact import save_model
from gemma_export.passes import split_lm_head, tied_lm_head
from gemma_graphs.roles import roles
from pass_harness import apply, feeds, op_types, run, traced


def test_lm_head_slices_read_the_tables_bytes_in_place(tiny_checkpoints, tmp_path, monkeypatch):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    tied, _ = apply(model, ctx, tied_lm_head)
    embedding = roles(ctx.config).embedding
    table = tied.graph.initializers[embedding].const_value
    vocab = table.shape[0]
    monkeypatch.setattr(split_lm_head, "SLICE_BYTES", table.nbytes // 3 - 1)  # 4 slices, the last shorter
    after, (count,) = apply(tied, ctx, split_lm_head)
    assert count == 4 and op_types(after).count("Gemm") == 4 and "Concat" in op_types(after)
    f = feeds(ctx.config, past=3)
    np.testing.assert_allclose(run(after, f)["logits"], run(tied, f)["logits"], rtol=1e-6, atol=1e-6)

    # saved: the slices are references into the table's bytes, which the data file holds once
    for graph, folder in ((tied, tmp_path / "whole"), (after, tmp_path / "sliced")):
        folder.mkdir()
        save_model(graph, folder)
    data_size = {f.parent.name: f.stat().st_size for f in tmp_path.glob("*/model.onnx.data")}
    assert data_size["sliced"] == data_size["whole"]
    proto = onnx.load(str(tmp_path / "sliced" / "model.onnx"), load_external_data=False)
    places = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer}
    start = int(places[embedding]["offset"])
    slices = sorted((int(p["offset"]), int(p["length"])) for n, p in places.items() if n.startswith("lm_head.rows_"))
    assert [o for o, _ in slices][0] == start and sum(n for _, n in slices) == table.nbytes
    assert all(a + n == b for (a, n), (b, _) in zip(slices, slices[1:]))  # contiguous, in vocabulary order
    assert vocab == sum(int(n.split("_")[-1]) - int(n.split("_")[-2]) for n in places if n.startswith("lm_head.rows_"))
    session = ort.InferenceSession(str(tmp_path / "sliced" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    logits = session.run(["logits"], {k: v for k, v in f.items() if k in names})[0]
    np.testing.assert_allclose(logits, run(tied, f)["logits"], rtol=1e-6, atol=1e-6)


def test_a_table_within_one_slice_is_left_whole(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    after, (_, count) = apply(model, ctx, tied_lm_head, split_lm_head)
    assert count == 0 and op_types(after).count("Gemm") == 1
