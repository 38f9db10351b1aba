import numpy as np
import pytest
import onnx_ir as ir

from gemma_export.passes import activation_scaling, quantize_embedding, quantize_matmuls
from gemma_export.passes.tied_lm_head import EMBEDDING
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
    assert any(v.name == f"{EMBEDDING}.lookup_scale" for v in scaled.graph.initializers.values())
    # every scale a power of two: the scaled fp32 graph computes the same bits as the unscaled one
    scales = np.concatenate(list(ctx.input_scales.values()))
    assert len(ctx.input_scales) == count and np.array_equal(scales, 2.0 ** np.round(np.log2(scales)))
    assert scales.min() < 1 < scales.max()
    f = inputs(ctx.config, model)
    ref = run(model, f)["logits"]
    np.testing.assert_array_equal(run(scaled, f)["logits"], ref)
    errors = []
    for calibrated in (False, True):
        ctx.options = type(ctx.options)(**{**ctx.options.__dict__, "calibrate": calibrated})
        quantized, _ = apply(scaled if calibrated else model, ctx, quantize_matmuls, quantize_embedding)
        errors.append(np.abs(run(quantized, f)["logits"] - ref).mean())
    assert errors[1] < errors[0]
