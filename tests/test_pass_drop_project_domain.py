import numpy as np
import pytest

from gemma_export.frontend.onnx_ops import DOMAIN
from gemma_export.passes import drop_project_domain
from gemma_export.targets import TARGETS, ExportOptions
from pass_harness import apply, feeds, inplace_feeds, run, traced

MAX = 16


@pytest.fixture(scope="module")
def gemma_mha(tiny_checkpoints):
    return traced(tiny_checkpoints["gemma-mha"], ExportOptions(target="onnx", max_seq_len=MAX))


def test_function_bodies_go_once_every_node_is_lowered(gemma_mha):
    model, ctx = gemma_mha
    onnx = TARGETS["onnx"].pass_modules()
    lowered, _ = apply(model, ctx, *onnx[: onnx.index(drop_project_domain)])
    assert len(lowered.functions) == 4 and DOMAIN in lowered.opset_imports
    after, (count,) = apply(lowered, ctx, drop_project_domain)
    assert count == 4 and not after.functions and DOMAIN not in after.opset_imports
    f = inplace_feeds(feeds(ctx.config, batch=1, seq=5, past=2), MAX)
    f["logits_index"] = np.asarray([[4]])
    np.testing.assert_array_equal(run(after, f)["logits"], run(lowered, f)["logits"])


def test_a_node_left_in_the_project_domain_is_an_error(gemma_mha):
    model, ctx = gemma_mha
    with pytest.raises(AssertionError, match="GemmaAttention, GemmaGeGLU, GemmaRMSNorm, GemmaRoPE"):
        apply(model, ctx, drop_project_domain)
