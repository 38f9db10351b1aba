import onnx_ir as ir
from onnx import TensorProto, helper

from gemma_export.passes import constant_axes


def _model(axes_from_reshape: bool) -> ir.Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])
    nodes = [helper.make_node("Constant", [], ["axes_flat"], value_ints=[-1]),
             helper.make_node("Constant", [], ["one"], value_ints=[1])]
    if axes_from_reshape:  # what torch.onnx writes for mean(dim=-1)
        nodes.append(helper.make_node("Reshape", ["axes_flat", "one"], ["axes"]))
    else:  # computed at run time: nothing to fold
        nodes.append(helper.make_node("Shape", ["x"], ["axes"], start=-1))
    nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1))
    graph = helper.make_graph(nodes, "g", [x], [y])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


def test_axes_made_from_constants_become_an_initializer():
    model = _model(axes_from_reshape=True)
    assert constant_axes.run(model, None) == 1
    mean = next(n for n in model.graph if n.op_type == "ReduceMean")
    assert mean.inputs[1].is_initializer() and mean.inputs[1].const_value.numpy().tolist() == [-1]


def test_axes_computed_at_run_time_are_left_alone():
    model = _model(axes_from_reshape=False)
    assert constant_axes.run(model, None) == 0
    mean = next(n for n in model.graph if n.op_type == "ReduceMean")
    assert mean.inputs[1].producer().op_type == "Shape"
