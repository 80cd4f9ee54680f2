"""Write a backbone as the ONNX graph insightface's model zoo loader expects of a recognition model.

insightface (``model_zoo.get_model`` -> ``ArcFaceONNX``) routes a file to recognition when its one input
is ``[N, 3, 112, 112]``, feeds ``cv2.dnn.blobFromImages`` output (NCHW, RGB, float32), and reads the
input normalisation from the graph: if one of the first nodes is named ``Sub...`` and one ``Mul...`` it
feeds raw pixels, otherwise ``(x - 127.5) / 127.5``.  So the graph here starts with ``Sub`` (the
model's mean) and ``Mul`` (1 / its std) on raw RGB pixels, whatever normalisation the model was trained
on, and then has the layers as arcface_torch's export would: Conv, BatchNormalization, PRelu with
(C, 1, 1) slopes, Add, Flatten in NCHW order (the dense rows reordered from our NHWC flatten), Gemm.
It is written layer by layer from the Keras weights with ``onnx.helper`` (no converter in between), so
``frtf import`` of the file rebuilds exactly the same model.
"""

from __future__ import annotations

import keras
import numpy as np

from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.models.input_normalization import MODEL_INPUT_MEAN, MODEL_INPUT_STD, InputNormalization
from face_recognition_tf.models.layers import GroupedConv2D
from face_recognition_tf.models.normalization import BatchNorm
from face_recognition_tf.pretrained.weights import flatten_inputs

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
_PASS_THROUGH = (keras.layers.Dropout, keras.layers.Activation)


class _Writer:
    def __init__(self, opset: int):
        self.nodes, self.initializers, self.opset = [], [], opset
        self.count = 0

    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        from onnx import helper

        output = f"{name}_output"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


def _normalisation(model):
    """(mean, std) per channel the weights expect, and the InputNormalization layer to skip."""
    mean, std = np.full(3, MODEL_INPUT_MEAN), np.full(3, MODEL_INPUT_STD)
    for layer in model.layers:
        if isinstance(layer, InputNormalization):
            return np.broadcast_to(layer.mean, (3,)), np.broadcast_to(layer.std, (3,)), layer
    return mean, std, None


def graph_bytes(model, *, opset: int = 17, l2_normalize: bool = False) -> bytes:
    """The serialized ONNX model (see the module docstring)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise FaceRecognitionError("insightface-layout ONNX export needs the onnx package: "
                                   "pip install 'face_recognition_tf[onnx]'") from None
    if not 9 <= int(opset) <= 21:
        raise FaceRecognitionError(f"ONNX opset {opset} is not supported for the insightface layout (9 to 21)")
    height, width = int(model.input_shape[1]), int(model.input_shape[2])
    w = _Writer(int(opset))
    mean, std, skip = _normalisation(model)
    x = w.node("Sub", [INPUT_NAME, w.const("input_mean", mean.reshape(1, 3, 1, 1))], "Sub_mean")
    x = w.node("Mul", [x, w.const("input_scale", (1.0 / std).reshape(1, 3, 1, 1))], "Mul_scale")
    tensors = {}  # id(KerasTensor) -> onnx tensor name
    pads: dict = {}  # id(KerasTensor) -> pending (top, left, bottom, right) of a ZeroPadding2D
    flattened = flatten_inputs(model)  # Dense layer name -> the (H, W, C) before our Flatten
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            tensors[id(layer.output)] = x
            continue
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        src = [tensors[id(t)] for t in inputs]
        out_id = id(layer.output)
        name = layer.name
        if layer is skip or isinstance(layer, _PASS_THROUGH):
            tensors[out_id] = src[0]
            pads.update({out_id: pads[id(inputs[0])]} if id(inputs[0]) in pads else {})
            continue
        if isinstance(layer, keras.layers.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            tensors[out_id] = src[0]
            pads[out_id] = (top, left, bottom, right)
            continue
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, GroupedConv2D)):
            tensors[out_id] = _conv(w, layer, src[0], pads.get(id(inputs[0])))
        elif isinstance(layer, BatchNorm):
            eps = float(layer.epsilon)
            gamma = layer.gamma.numpy() if layer.gamma is not None else np.ones(layer.moving_mean.shape)
            beta = layer.beta.numpy() if layer.beta is not None else np.zeros(layer.moving_mean.shape)
            tensors[out_id] = w.node("BatchNormalization", [
                src[0], w.const(f"{name}.weight", gamma), w.const(f"{name}.bias", beta),
                w.const(f"{name}.running_mean", layer.moving_mean.numpy()),
                w.const(f"{name}.running_var", layer.moving_variance.numpy())], name, epsilon=eps)
        elif isinstance(layer, keras.layers.PReLU):
            alpha = layer.alpha.numpy().reshape(-1)
            rank = len(layer.input.shape)
            slope = alpha.reshape(-1, 1, 1) if rank == 4 else alpha
            tensors[out_id] = w.node("PRelu", [src[0], w.const(f"{name}.weight", slope)], name)
        elif isinstance(layer, keras.layers.Add):
            tensors[out_id] = w.node("Add", src, name)
        elif isinstance(layer, keras.layers.Flatten):
            tensors[out_id] = w.node("Flatten", src, name, axis=1)
        elif isinstance(layer, keras.layers.Dense):
            kernel = layer.kernel.numpy()  # (in, out), `in` in our NHWC flatten order
            shape = flattened.get(name)
            if shape is not None and len(shape) == 3:
                h, wd, c = shape
                kernel = kernel.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
            args = [src[0], w.const(f"{name}.weight", kernel.T)]
            if layer.use_bias:
                args.append(w.const(f"{name}.bias", layer.bias.numpy()))
            tensors[out_id] = w.node("Gemm", args, name, transB=1)
        elif isinstance(layer, InputNormalization):
            scale = np.asarray(layer._scale).reshape(1, -1, 1, 1)
            shift = np.asarray(layer._shift).reshape(1, -1, 1, 1)
            y = w.node("Mul", [src[0], w.const(f"{name}.scale", scale)], f"{name}_mul")
            tensors[out_id] = w.node("Add", [y, w.const(f"{name}.shift", shift)], f"{name}_add")
        else:
            raise FaceRecognitionError(f"layer {name} ({type(layer).__name__}) cannot be written in "
                                       "insightface's ONNX layout (batch-norm IR-ResNets and MobileFaceNets can)")
    output = tensors[id(model.outputs[0])]
    if l2_normalize:
        output = w.node("LpNormalization", [output], "l2_normalize", axis=1, p=2)
    w.nodes.append(helper.make_node("Identity", [output], [OUTPUT_NAME], name="output"))
    dim = int(model.outputs[0].shape[-1])
    graph = helper.make_graph(
        w.nodes, "face_recognition_tf",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["None", 3, height, width])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["None", dim])],
        initializer=w.initializers)
    proto = helper.make_model(graph, producer_name="face_recognition_tf",
                              opset_imports=[helper.make_opsetid("", int(opset))])
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime releases of the last years
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _conv(w: _Writer, layer, source: str, pads):
    kernel = layer.kernel.numpy()
    kh, kw = kernel.shape[:2]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        weight = kernel.transpose(2, 3, 0, 1).reshape(-1, 1, kh, kw)  # (C, 1, kh, kw)
        groups = weight.shape[0]
    else:
        weight = kernel.transpose(3, 2, 0, 1)  # (out, in/groups, kh, kw)
        groups = int(getattr(layer, "groups", 1))
    if layer.padding == "same":
        pads = (kh // 2, kw // 2, kh // 2, kw // 2)
    pads = tuple(int(p) for p in (pads or (0, 0, 0, 0)))
    args = [source, w.const(f"{layer.name}.weight", weight)]
    if getattr(layer, "use_bias", False):
        args.append(w.const(f"{layer.name}.bias", layer.bias.numpy()))
    return w.node("Conv", args, layer.name, kernel_shape=[kh, kw], strides=list(layer.strides),
                  pads=list(pads), group=groups)
