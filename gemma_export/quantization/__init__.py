"""Weight quantization (import name gemma_export.quantization): the `--quant` method parsed once
(method.py), the block maths (blocks.py), the units the quantizers take (units.py), the recipe that
chooses each unit's width (recipe.py) by its measured sensitivity (sensitivity.py), the search of
`--calibrate`'s activation-aware scales (activation_scales.py), and the float64 model both measure
with (float64_reference.py). The passes in gemma_export/passes/ (quant_recipe, activation_scaling,
quantize_matmuls, quantize_embedding, quantize_lookups) apply it to the graph.

Modules import in that order (method, blocks, units, float64_reference, sensitivity and
activation_scales, recipe): no cycle.
"""
