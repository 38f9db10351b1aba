import numpy as np
import pytest

from gemma_export.passes import activation_scaling, quantize_embedding, quantize_matmuls
from gemma_export.quantization import activation_scales
from gemma_graphs.roles import roles
from pass_harness import apply, run
from test_pass_precision import fused, inputs


@pytest.mark.parametrize("bits", ["int4", "int8"])
def test_scaling_changes_no_output_and_lowers_the_quantization_error(precision_checkpoints, bits):
    model, ctx = fused(precision_checkpoints["peaked"], "ort-cpu", "fp32")
    ctx.options = type(ctx.options)(**{**ctx.options.__dict__, "quant": bits, "calibrate": True})
    scaled, (count,) = apply(model, ctx, activation_scaling)
    layers = ctx.config.num_layers
    assert count == 4 * layers + 1  # q/k/v, o, gate/up, down per layer, and the lm_head
    assert len(ctx.report["calibration"]["alpha"]) == count and ctx.report["calibration"]["tokens"] > 0
    # o and down take a Mul in front; q/k/v and gate/up fold into their norms; the lookup is undone
    assert sum(n.op_type == "Mul" and n.inputs[1].name.endswith("input_scale") for n in scaled.graph) >= 2 * layers
    assert any(v.name == f"{roles(ctx.config).embedding}.lookup_scale" for v in scaled.graph.initializers.values())
    # every scale on the grid 2^(k / 8), spread around 1
    steps = np.log2(np.concatenate(list(ctx.input_scales.values()))) * activation_scales.STEPS_PER_OCTAVE
    assert len(ctx.input_scales) == count and np.allclose(steps, np.round(steps), rtol=0, atol=1e-5)
    assert steps.min() < 0 < steps.max()
    f = inputs(ctx.config, model)
    ref = run(model, f)["logits"]
    np.testing.assert_allclose(run(scaled, f)["logits"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    errors = []
    for calibrated in (False, True):
        ctx.options = type(ctx.options)(**{**ctx.options.__dict__, "calibrate": calibrated})
        quantized, _ = apply(scaled if calibrated else model, ctx, quantize_matmuls, quantize_embedding)
        errors.append(np.abs(run(quantized, f)["logits"] - ref).mean())
    assert errors[1] < errors[0]


def test_the_scale_grid_is_the_same_float32_values_on_every_host():
    """The grid's eight mantissas lie far from float32 rounding boundaries (so every host's
    2^(j / 8) rounds to them), and any log2 scale maps onto them exactly."""
    exact = 2.0 ** (np.arange(activation_scales.STEPS_PER_OCTAVE) / activation_scales.STEPS_PER_OCTAVE)
    for margin in (1 - 1e-9, 1 + 1e-9):
        np.testing.assert_array_equal((exact * margin).astype(np.float32), activation_scales.MANTISSAS)
    s = activation_scales.grid_scales(np.array([-3.0, -1.0 / 8, 0.0, 0.5 + 1 / 8, 3.0]))
    np.testing.assert_array_equal(s, np.float32([2.0 ** -3, 2 ** -0.125, 1.0, 2 ** 0.625, 8.0]))
