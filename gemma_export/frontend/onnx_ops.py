"""The ONNX form of graphs/ops.py: one node per op in the project's domain, each carrying a
function body of standard ops, so any ONNX runtime runs the export unmodified and the passes
see Gemma's building blocks whole.

Op names never repeat a standard op's name (TensorRT's parser matches by op_type alone).
"""

from __future__ import annotations

import onnx
import onnxscript
from onnx import TensorProto, helper
from onnxscript import FLOAT

DOMAIN = "gemma_export"
DOMAIN_VERSION = 1
OPSET = 20  # the default-domain opset of the traced model and of every function body

GEMMA = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

RMS_NORM, ROPE, GEGLU, ATTENTION = "GemmaRMSNorm", "GemmaRoPE", "GemmaGeGLU", "GemmaAttention"
# GemmaAttention with a seventh input, lookahead (a media decoder's layers where an image's tokens see
# each other both ways): a function body cannot test whether an optional input was given.
BLOCK_ATTENTION = "GemmaBlockAttention"
ATTENTIONS = (ATTENTION, BLOCK_ATTENTION)
LOOKAHEAD_INPUT = 6

# name -> (inputs, outputs, {attribute: type})
SIGNATURES = {
    RMS_NORM: (["X", "W"], ["Y"], {"epsilon": "float", "offset": "float"}),
    ROPE: (["X", "position_ids"], ["Y"], {"theta": "float", "scale": "float", "pairs": "int"}),
    GEGLU: (["gate", "up"], ["Y"], {}),
    ATTENTION: (
        ["Q", "K", "V", "past_key", "past_value", "attention_mask"],
        ["Y", "present_key", "present_value"],
        {"scale": "float", "softcap": "float", "window": "int"},
    ),
    BLOCK_ATTENTION: (
        ["Q", "K", "V", "past_key", "past_value", "attention_mask", "lookahead"],
        ["Y", "present_key", "present_value"],
        {"scale": "float", "softcap": "float", "window": "int"},
    ),
}
_ATTR_TYPES = {"float": onnx.defs.OpSchema.AttrType.FLOAT, "int": onnx.defs.OpSchema.AttrType.INT}


def register_schemas() -> None:
    """Make the ops known to onnx (and so to onnxscript) once per process."""
    for name, (inputs, outputs, attrs) in SIGNATURES.items():
        if onnx.defs.has(name, DOMAIN):
            continue
        schema = onnx.defs.OpSchema(
            name, DOMAIN, DOMAIN_VERSION,
            inputs=[onnx.defs.OpSchema.FormalParameter(i, "T") for i in inputs],
            outputs=[onnx.defs.OpSchema.FormalParameter(o, "T") for o in outputs],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(int64)"], "")],
            attributes=[onnx.defs.OpSchema.Attribute(a, _ATTR_TYPES[t], "") for a, t in attrs.items()],
        )
        onnx.defs.register_schema(schema)


# --- translations: what torch.onnx.export emits for each torch custom op -------------------

def rms_norm_onnx(x: FLOAT, weight: FLOAT, eps: float, offset: float) -> FLOAT:
    return GEMMA.GemmaRMSNorm(x, weight, epsilon=eps, offset=offset)


def rope_onnx(x: FLOAT, position_ids, theta: float, scale: float, pairs: int) -> FLOAT:
    return GEMMA.GemmaRoPE(x, position_ids, theta=theta, scale=scale, pairs=pairs)


def geglu_onnx(gate: FLOAT, up: FLOAT) -> FLOAT:
    return GEMMA.GemmaGeGLU(gate, up)


def attention_onnx(q: FLOAT, k: FLOAT, v: FLOAT, past_k: FLOAT, past_v: FLOAT, mask,
                   scale: float, softcap: float, window: int, lookahead=None) -> tuple[FLOAT, FLOAT, FLOAT]:
    if lookahead is None:
        return GEMMA.GemmaAttention(q, k, v, past_k, past_v, mask, scale=scale, softcap=softcap,
                                    window=window, _num_outputs=3)
    return GEMMA.GemmaBlockAttention(q, k, v, past_k, past_v, mask, lookahead, scale=scale, softcap=softcap,
                                     window=window, _num_outputs=3)


def translation_table() -> dict:
    import torch

    register_schemas()
    return {
        torch.ops.gemma.rms_norm.default: rms_norm_onnx,
        torch.ops.gemma.rope.default: rope_onnx,
        torch.ops.gemma.geglu.default: geglu_onnx,
        torch.ops.gemma.attention.default: attention_onnx,
    }


# --- function bodies ------------------------------------------------------------------------

class _Body:
    """A small builder for a FunctionProto: n('Op', inputs, **attrs) -> output name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def n(self, op: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [f"t{self._count}_{i}" for i in range(outputs)]
        self._count += 1
        self.nodes.append(helper.make_node(op, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=TensorProto.INT64) -> str:
        values = value if isinstance(value, list) else [value]
        tensor = helper.make_tensor("c", dtype, [len(values)] if isinstance(value, list) else [], values)
        return self.n("Constant", value=tensor)

    def attr_const(self, attr: str, kind: str) -> str:
        """A scalar Constant whose value is the calling node's attribute."""
        field, ty = {"float": ("value_float", onnx.AttributeProto.FLOAT),
                     "int": ("value_int", onnx.AttributeProto.INT)}[kind]
        out = f"attr_{attr}"
        self.nodes.append(helper.make_node("Constant", [], [out]))
        self.nodes[-1].attribute.append(helper.make_attribute_ref(field, ty))
        self.nodes[-1].attribute[-1].ref_attr_name = attr
        return out

    def finish(self, name: str, outputs: list[str]) -> onnx.FunctionProto:
        inputs, output_names, attrs = SIGNATURES[name]
        # rename the final values to the declared output names
        for node_out, declared in zip(outputs, output_names):
            self.nodes.append(helper.make_node("Identity", [node_out], [declared]))
        return helper.make_function(
            DOMAIN, name, inputs, output_names, self.nodes,
            [helper.make_opsetid("", OPSET)], attributes=list(attrs))


def _rms_norm_body() -> onnx.FunctionProto:
    b = _Body()
    x = b.n("Cast", "X", to=TensorProto.FLOAT)
    mean = b.n("ReduceMean", b.n("Mul", x, x), b.const([-1]), keepdims=1)
    inv = b.n("Reciprocal", b.n("Sqrt", b.n("Add", mean, b.attr_const("epsilon", "float"))))
    w = b.n("Add", b.n("Cast", "W", to=TensorProto.FLOAT), b.attr_const("offset", "float"))
    y = b.n("Mul", b.n("Mul", x, inv), w)
    return b.finish(RMS_NORM, [b.n("CastLike", y, "X")])


def _rope_body() -> onnx.FunctionProto:
    b = _Body()
    f32 = TensorProto.FLOAT
    d = b.n("Shape", "X", start=-1)
    d_scalar = b.n("Squeeze", d, b.const([0]))
    half = b.n("Div", d, b.const([2]))
    idx = b.n("Range", b.const(0), d_scalar, b.const(2))
    exponent = b.n("Div", b.n("Cast", idx, to=f32), b.n("Cast", d_scalar, to=f32))
    denom = b.n("Pow", b.attr_const("theta", "float"), exponent)
    inv_freq = b.n("Div", b.n("Reciprocal", denom), b.attr_const("scale", "float"))
    kept = b.n("Less", b.n("Div", idx, b.const(2)), b.attr_const("pairs", "int"))  # proportional RoPE
    inv_freq = b.n("Where", kept, inv_freq, b.const(0.0, f32))
    pos = b.n("Unsqueeze", b.n("Cast", "position_ids", to=f32), b.const([-1]))
    freqs = b.n("Mul", pos, inv_freq)
    emb = b.n("Unsqueeze", b.n("Concat", freqs, freqs, axis=-1), b.const([2]))
    cos = b.n("CastLike", b.n("Cos", emb), "X")
    sin = b.n("CastLike", b.n("Sin", emb), "X")
    x1 = b.n("Slice", "X", b.const([0]), half, b.const([-1]))
    x2 = b.n("Slice", "X", half, d, b.const([-1]))
    rotated = b.n("Concat", b.n("Neg", x2), x1, axis=-1)
    y = b.n("Add", b.n("Mul", "X", cos), b.n("Mul", rotated, sin))
    return b.finish(ROPE, [y])


def _geglu_body() -> onnx.FunctionProto:
    b = _Body()
    return b.finish(GEGLU, [b.n("Mul", b.n("Gelu", "gate", approximate="tanh"), "up")])


def _attention_body(name: str) -> onnx.FunctionProto:
    b = _Body()
    f32 = TensorProto.FLOAT
    present_k = b.n("Concat", "past_key", b.n("Transpose", "K", perm=[0, 2, 1, 3]), axis=2)
    present_v = b.n("Concat", "past_value", b.n("Transpose", "V", perm=[0, 2, 1, 3]), axis=2)
    batch = b.n("Shape", "Q", start=0, end=1)
    seq = b.n("Shape", "Q", start=1, end=2)
    heads = b.n("Shape", "Q", start=2, end=3)
    dim = b.n("Shape", "Q", start=3, end=4)
    kv_heads = b.n("Shape", "K", start=2, end=3)
    total = b.n("Shape", present_k, start=2, end=3)
    # q grouped per KV head: [B, Hkv, G, S, D]; keys broadcast over G, never repeated in memory
    q5 = b.n("Reshape", b.n("Transpose", "Q", perm=[0, 2, 1, 3]),
             b.n("Concat", batch, kv_heads, b.const([-1]), seq, dim, axis=0))
    k5 = b.n("Transpose", b.n("Unsqueeze", present_k, b.const([2])), perm=[0, 1, 2, 4, 3])
    scores = b.n("Mul", b.n("MatMul", b.n("Cast", q5, to=f32), b.n("Cast", k5, to=f32)),
                 b.attr_const("scale", "float"))
    cap = b.attr_const("softcap", "float")
    has_cap = b.n("Greater", cap, b.const(0.0, f32))
    safe_cap = b.n("Where", has_cap, cap, b.const(1.0, f32))
    capped = b.n("Mul", b.n("Tanh", b.n("Div", scores, safe_cap)), safe_cap)
    scores = b.n("Where", has_cap, capped, scores)
    # visibility: causal (bottom-right aligned), sliding window, key padding
    total_s = b.n("Squeeze", total, b.const([0]))
    q_pos = b.n("Unsqueeze", b.n("Range", b.n("Squeeze", b.n("Sub", total, seq), b.const([0])),
                                  total_s, b.const(1)), b.const([-1]))
    k_pos = b.n("Range", b.const(0), total_s, b.const(1))
    until = q_pos if name == ATTENTION else b.n("Add", q_pos, b.n("Unsqueeze", "lookahead", b.const([1, 2, -1])))
    causal = b.n("LessOrEqual", k_pos, until)
    window = b.attr_const("window", "int")
    in_window = b.n("Or", b.n("Equal", window, b.const(0)),
                    b.n("Less", b.n("Sub", q_pos, k_pos), window))
    key_real = b.n("Unsqueeze", b.n("Cast", "attention_mask", to=TensorProto.BOOL), b.const([1, 2, 3]))
    visible = b.n("And", b.n("And", causal, in_window), key_real)
    scores = b.n("Where", visible, scores, b.const(-3.0e38, f32))
    probs = b.n("Softmax", scores, axis=-1)
    v5 = b.n("Cast", b.n("Unsqueeze", present_v, b.const([2])), to=f32)
    out = b.n("MatMul", probs, v5)
    out = b.n("Reshape", out, b.n("Concat", batch, heads, seq, dim, axis=0))
    out = b.n("Reshape", b.n("Transpose", out, perm=[0, 2, 1, 3]),
              b.n("Concat", batch, seq, b.const([-1]), axis=0))
    return b.finish(name, [b.n("CastLike", out, "Q"), present_k, present_v])


def function_bodies() -> list[onnx.FunctionProto]:
    return [_rms_norm_body(), _rope_body(), _geglu_body(), *map(_attention_body, ATTENTIONS)]
