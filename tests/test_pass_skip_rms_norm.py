import numpy as np
import pytest

from gemma_export.passes import rms_norm, skip_rms_norm
from gemma_export.passes.context import LEFT_ALONE
from gemma_export.passes.ir_utils import add_initializer
from pass_harness import apply, feeds, op_types, run, traced


# Every residual add feeds a norm: Gemma 1 the pre-MLP and the next layer's input norm, Gemma 2/3
# (sandwich) the pre-FFW and the next input norm; the last add feeds the final norm.
@pytest.mark.parametrize("name", ["gemma-mqa", "gemma2"])
def test_residual_add_and_norm_become_one_skip_norm(name, tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints[name])
    adds = op_types(model).count("Add")
    normed, (_, count) = apply(model, ctx, rms_norm, skip_rms_norm)
    assert count == adds == 2 * ctx.config.num_layers
    assert op_types(normed).count("SkipSimplifiedLayerNormalization") == count and "Add" not in op_types(normed)
    plain = 1 + (2 * ctx.config.num_layers if ctx.config.sandwich_norms else 0)  # first input norm, post norms
    assert op_types(normed).count("SimplifiedLayerNormalization") == plain
    f = feeds(ctx.config, past=3)
    before, now = run(model, f), run(normed, f)
    for key in before:
        np.testing.assert_allclose(now[key], before[key], rtol=1e-5, atol=1e-5)


def test_an_add_with_a_constant_operand_is_left_alone_with_the_reason(tiny_checkpoints):
    """The kernel adds two same-shaped activations: a residual Add whose skip is a stored bias stays."""
    model, ctx = traced(tiny_checkpoints["gemma-mqa"])
    adds = op_types(model).count("Add")
    normed, _ = apply(model, ctx, rms_norm)
    first, norm = [n for n in normed.graph if n.op_type == "SimplifiedLayerNormalization"][:2]
    bias = add_initializer(normed.graph, "bias", np.zeros(ctx.config.hidden_size, np.float32))
    norm.inputs[0].producer().replace_input_with(1, bias)
    after, (count,) = apply(normed, ctx, skip_rms_norm)
    assert count == adds - 1 and op_types(after).count("Add") == 1
    assert ctx.report[skip_rms_norm.NAME][LEFT_ALONE] == {
        "the Add has a constant operand": {"count": 1, "examples": [norm.name]},
        "its input is not an Add": {"count": 1, "examples": [first.name]}}  # it reads the scaled embedding
