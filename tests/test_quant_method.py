"""--quant parsed once (gemma_export/quantization/method.py)."""

import pytest

from gemma_export.errors import GemmaExportError
from gemma_export.targets import QUANTS
from gemma_export.quantization.method import QuantMethod


@pytest.mark.parametrize("text", QUANTS)
def test_every_method_reads_back_as_written(text):
    assert str(QuantMethod.parse(text)) == text


def test_the_properties_say_what_each_method_does():
    recipe, uniform = QuantMethod.parse("int4"), QuantMethod.parse("int8-uniform")
    source, kept = QuantMethod.parse("source"), QuantMethod.parse("source-uniform")
    none = QuantMethod.parse("none")
    assert (recipe.kind, recipe.bits, recipe.width, recipe.widths) == ("recipe", 4, "int4", ("int4", "int8", "float"))
    assert (uniform.kind, uniform.bits, uniform.widths) == ("uniform", 8, ("int8", "float"))
    assert source.width == kept.width == "source" and source.widths == ("source", "float") and source.bits is None
    assert [m.measured for m in (recipe, uniform, source, kept, none)] == [True, False, True, False, False]
    assert [m.uniform for m in (recipe, uniform, source, kept)] == [False, True, False, True]
    assert [m.precision for m in (recipe, uniform, kept)] == ["int4", "int8", "source"]
    assert not none.quantizes and none.width is None and none.widths == ()


@pytest.mark.parametrize("text", ["int2", "int4-uniform-uniform", "fp8", "", "Int4", "sourceint4"])
def test_an_unknown_method_is_refused_in_one_line(text):
    with pytest.raises(GemmaExportError, match="not a quantization method") as error:
        QuantMethod.parse(text)
    assert "\n" not in str(error.value)
