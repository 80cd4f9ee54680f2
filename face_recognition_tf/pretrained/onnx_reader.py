"""Read a recognition ONNX graph (insightface's model zoo, arcface_torch's torch2onnx) into ops.

Nothing here trusts names: `torch.onnx.export` numbers its initializers, folds every BatchNorm that
follows a Conv into the Conv (which then has a bias), sometimes the final BatchNorm1d into the last
Gemm, writes PReLU slopes as (C,), (C,1,1) or (1,C,1,1), a Linear as Gemm or MatMul (+ Add), and a
``view(n, -1)`` flatten as a Shape/Gather/Concat/Reshape subgraph.  So the graph is *interpreted*:
constants are folded, shape arithmetic is recognised and dropped, each data node becomes an op, and the
ops are put in canonical order by a walk from the output that takes, at each residual Add, the branch
holding more nodes first (the residual branch before its shortcut), whatever order the exporter wrote.
A leading Sub/Mul/Div on the input is the graph's own normalisation (MXNet-converted models), returned
separately.  The architecture is then recognised from the ops (`recognise.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from face_recognition_tf.errors import PretrainedModelError
from face_recognition_tf.pretrained import ops as O

# nodes that only carry a value along
_PASS_THROUGH = {"Identity", "Dropout"}
# constant arithmetic worth folding (initializers reshaped or cast by the exporter)
_FOLDABLE = {"Identity", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Transpose", "Concat", "Gather",
             "Mul", "Add", "Sub", "Div", "Sqrt", "Reciprocal", "Neg", "Flatten"}
_ACTIVATIONS = {"Relu": "ReLU", "Clip": "ReLU6 (Clip)", "LeakyRelu": "LeakyReLU", "Sigmoid": "sigmoid",
                "HardSwish": "hard-swish", "HardSigmoid": "hard-sigmoid", "Tanh": "tanh", "Elu": "ELU"}


def _fail(path, message):
    raise PretrainedModelError(f"{path}: {message}")


def load_onnx(path: Path):
    """The ModelProto, or a one-line error for a missing, truncated or non-ONNX file."""
    try:
        import onnx
    except ImportError:
        _fail(path, "reading ONNX needs the onnx package: pip install 'face_recognition_tf[onnx]'")
    if not path.is_file():
        _fail(path, "file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        _fail(path, f"not a readable ONNX model (truncated or corrupt: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'cannot parse'})")
    if not model.graph.node:
        _fail(path, "not a readable ONNX model (truncated or corrupt: the graph has no nodes)")
    return model


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node):
    from onnx import numpy_helper

    attrs = _attrs(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None


def _fold(op_type, values, attrs):
    """Evaluate a constant-only node, or None when it is not one we fold."""
    a = values[0]
    if op_type in ("Identity",):
        return a
    if op_type == "Cast":
        return a  # weights stay float; only their shape matters for the few casts exporters insert
    if op_type == "Unsqueeze":
        axes = attrs.get("axes", values[1] if len(values) > 1 else None)
        out = a
        for axis in sorted(int(x) % (out.ndim + len(axes)) for x in np.atleast_1d(axes)):
            out = np.expand_dims(out, axis)
        return out
    if op_type == "Squeeze":
        axes = attrs.get("axes", values[1] if len(values) > 1 else None)
        return np.squeeze(a) if axes is None else np.squeeze(a, tuple(int(x) for x in np.atleast_1d(axes)))
    if op_type == "Reshape":
        shape = [int(s) for s in values[1]]
        shape = [a.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return a.reshape(shape)
    if op_type == "Flatten":
        axis = int(attrs.get("axis", 1))
        return a.reshape(int(np.prod(a.shape[:axis])), -1)
    if op_type == "Transpose":
        return np.transpose(a, attrs.get("perm"))
    if op_type == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in values], axis=int(attrs.get("axis", 0)))
    if op_type == "Gather":
        return np.take(a, values[1], axis=int(attrs.get("axis", 0)))
    binary = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}
    if op_type in binary:
        return binary[op_type](a, values[1])
    unary = {"Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Neg": np.negative}
    if op_type in unary:
        return unary[op_type](a)
    return None


class _Graph:
    """The interpreted graph: data ops by id, with their input op ids."""

    def __init__(self):
        self.ops: list[O.Op] = []
        self.inputs: list[list[int]] = []
        self.other: list[str] = []  # unsupported node types met on the data path

    def add(self, op: O.Op, inputs: list[int]) -> int:
        self.ops.append(op)
        self.inputs.append(inputs)
        return len(self.ops) - 1


INPUT = O.INPUT


def interpret(path: Path, model) -> tuple[_Graph, int, dict]:
    """Fold constants, drop shape arithmetic, turn data nodes into ops.  Returns the graph, the id of
    the output op, and facts (input shape, opset, number of outputs)."""
    from onnx import numpy_helper

    graph = model.graph
    const: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in const]
    if len(data_inputs) != 1:
        _fail(path, f"expected one image input, the graph has {len(data_inputs)} "
                    f"({', '.join(i.name for i in data_inputs) or 'none'})")
    image = data_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    facts = {"input_name": image.name, "input_dims": dims,
             "num_outputs": len(graph.output),
             "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
             "producer": f"{model.producer_name} {model.producer_version}".strip()}

    data: dict[str, int] = {image.name: INPUT}   # tensor name -> op id
    shape_like: set[str] = set()                  # tensors computed from Shape (dropped)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    g = _Graph()

    for node in graph.node:
        op_type, attrs = node.op_type, _attrs(node)
        ins = [n for n in node.input]
        if op_type == "Constant":
            value = _constant_value(node)
            if value is not None:
                const[node.output[0]] = value
            continue
        present = [n for n in ins if n]
        if all(n in const for n in present) and present:
            value = _fold(op_type, [const[n] for n in present], attrs)
            if value is None:
                shape_like.update(node.output)
            else:
                const[node.output[0]] = value
            continue
        if op_type == "Shape" or any(n in shape_like for n in present) and not any(n in data for n in present):
            shape_like.update(node.output)
            continue
        sources = [n for n in present if n in data]
        if not sources:
            shape_like.update(node.output)
            continue
        x = data[sources[0]]
        out = node.output[0]
        where = node.name or f"{op_type} #{len(g.ops)}"

        if op_type in _PASS_THROUGH:
            data[out] = x
        elif op_type == "Conv":
            weight = const.get(ins[1])
            if weight is None:
                _fail(path, f"node {where}: Conv weights are not constants")
            kh, kw = weight.shape[2:]
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                pads = [(kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2]
            if any(d != 1 for d in attrs.get("dilations", [1, 1])):
                g.other.append("dilated Conv")
            bias = const.get(ins[2]) if len(ins) > 2 and ins[2] else None
            data[out] = g.add(O.Op(O.CONV, {"weight": weight, "bias": bias},
                                   {"stride": tuple(attrs.get("strides", [1, 1])), "pads": tuple(pads),
                                    "groups": int(attrs.get("group", 1))}, where), [x])
        elif op_type == "BatchNormalization":
            gamma, beta, mean, var = (const.get(n) for n in ins[1:5])
            if any(v is None for v in (gamma, beta, mean, var)):
                _fail(path, f"node {where}: BatchNormalization parameters are not constants")
            data[out] = g.add(O.Op(O.BATCH_NORM, {"gamma": gamma, "beta": beta, "mean": mean, "var": var},
                                   {"epsilon": float(attrs.get("epsilon", 1e-5))}, where), [x])
        elif op_type == "PRelu":
            slope = const.get(ins[1])
            if slope is None:
                _fail(path, f"node {where}: PRelu slopes are not constants")
            data[out] = g.add(O.Op(O.PRELU, {"slope": slope.reshape(-1)}, {}, where), [x])
        elif op_type in ("Gemm", "MatMul"):
            weight = const.get(ins[1])
            if weight is None or len(sources) != 1 or (op_type == "Gemm" and attrs.get("transA", 0)):
                g.other.append(f"{op_type} on two data inputs")
                data[out] = g.add(O.Op("other", {}, {"type": op_type}, where), [x])
                continue
            if op_type == "MatMul" or not attrs.get("transB", 0):
                weight = weight.T  # (in, out) -> (out, in)
            weight = weight * float(attrs.get("alpha", 1.0))
            bias = const.get(ins[2]) if op_type == "Gemm" and len(ins) > 2 and ins[2] else None
            if bias is not None:
                bias = np.broadcast_to(bias * float(attrs.get("beta", 1.0)), (weight.shape[0],)).copy()
            data[out] = g.add(O.Op(O.DENSE, {"weight": weight, "bias": bias}, {}, where), [x])
        elif op_type in ("Add", "Sub", "Mul", "Div") and len(sources) == 1:
            other = [n for n in present if n not in data]
            value = const.get(other[0]) if other else None
            if value is None or (op_type in ("Sub", "Div") and ins[0] not in data):
                g.other.append(f"{op_type} with a computed operand")
                data[out] = g.add(O.Op("other", {}, {"type": op_type}, where), [x])
                continue
            value = np.asarray(value, dtype=np.float64).reshape(-1)
            scale, shift = {
                "Add": (np.ones_like(value), value), "Sub": (np.ones_like(value), -value),
                "Mul": (value, np.zeros_like(value)), "Div": (1.0 / value, np.zeros_like(value)),
            }[op_type]
            data[out] = g.add(O.Op(O.AFFINE, {"scale": scale, "shift": shift}, {}, where), [x])
        elif op_type in ("Add", "Sum") and len(sources) == 2:
            data[out] = g.add(O.Op(O.ADD, {}, {}, where), [data[s] for s in sources])
        elif op_type == "Flatten" or (op_type == "Reshape" and _is_flatten(node, const, consumers)):
            data[out] = g.add(O.Op(O.FLATTEN, {}, {}, where), [x])
        else:
            name = _ACTIVATIONS.get(op_type, op_type)
            g.other.append(name)
            data[out] = g.add(O.Op("other", {}, {"type": name}, where), [x] + [data[s] for s in sources[1:]])
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1 or outputs[0] not in data:
        return g, None, facts
    return g, data[outputs[0]], facts


def _is_flatten(node, const, consumers) -> bool:
    """A Reshape to (N, -1): a constant 2-long target, or a computed one feeding a Gemm/MatMul."""
    target = const.get(node.input[1]) if len(node.input) > 1 else None
    if target is not None:
        return np.asarray(target).size == 2
    return any(c.op_type in ("Gemm", "MatMul") for c in consumers.get(node.output[0], []))


def read_onnx(path: str | Path):
    """(ops in canonical order, facts).  Leading input affine ops are returned in facts as the graph's
    own normalisation; consecutive affine ops merge, and a MatMul's bias Add joins its dense op."""
    path = Path(path)
    model = load_onnx(path)
    g, output, facts = interpret(path, model)
    if facts["num_outputs"] != 1:
        _fail(path, f"a recognition model has one output, this graph has {facts['num_outputs']} "
                    "(a detector or a multi-task model?); supported: insightface IR-ResNet and MobileFaceNet")
    if output is None:
        _fail(path, "the graph's output is not computed from its input")
    sequence, normalisation = _merge_affine(g, O.canonical_order(g.inputs, output))
    if normalisation == "unusable":
        _fail(path, "the graph's first operations scale its input by something other than a per-channel "
                    "mean and std; it cannot be split into a normalisation and a model")
    facts["normalisation"] = normalisation
    facts["other"] = sorted(set(g.other))
    return sequence, facts


def _merge_affine(g: _Graph, order: list[int]):
    """Fold chains of affine ops (each fed only by the previous one); a chain fed by the graph input is
    the graph's own normalisation, returned as (mean, std); a shift right after a bias-free dense op is
    its bias (MatMul + Add)."""
    merged: list[O.Op] = []
    last_id: list[int] = []
    for index in order:
        op = g.ops[index]
        prev = merged[-1] if merged and g.inputs[index] == [last_id[-1]] else None
        if op.kind == O.AFFINE and prev is not None and prev.kind == O.AFFINE:
            a, b = prev.arrays, op.arrays
            prev.arrays = {"scale": a["scale"] * b["scale"], "shift": a["shift"] * b["scale"] + b["shift"]}
            last_id[-1] = index
            continue
        if (op.kind == O.AFFINE and prev is not None and prev.kind == O.DENSE and prev.arrays["bias"] is None
                and np.all(op.arrays["scale"] == 1)):
            prev.arrays["bias"] = np.broadcast_to(op.arrays["shift"], (prev.arrays["weight"].shape[0],)).copy()
            last_id[-1] = index
            continue
        # whether this op reads the weighted op just before it (a BN right after its conv)
        op.attrs["reads_previous"] = bool(merged) and merged[-1].kind in O.WEIGHTED \
            and g.inputs[index] == [last_id[-1]]
        merged.append(op)
        last_id.append(index)
    normalisation = None
    if merged and merged[0].kind == O.AFFINE and g.inputs[order[0]] == [INPUT]:
        lead = merged.pop(0)
        scale, shift = np.broadcast_arrays(lead.arrays["scale"], lead.arrays["shift"])
        if scale.size not in (1, 3) or np.any(scale == 0):
            normalisation = "unusable"
        else:
            std = 1.0 / scale  # a Mul by float32(1 / 127.5) gives back 127.49999...: keep 6 digits
            normalisation = (tuple(float(f"{v:.6g}") for v in -shift * std), tuple(float(f"{v:.6g}") for v in std))
    return merged, normalisation
