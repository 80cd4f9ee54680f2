"""Put a foreign model's ops into the Keras backbone built for it, exactly.

Keras creates our layers in the canonical order the readers produce (residual branch, then shortcut),
so the backbone's weighted layers and the file's weighted ops are walked side by side, every shape
checked.  Exact rewrites cover what exporters change:

* a conv with a bias where we have conv -> BN: the BatchNorm was folded into the conv; the bias moves
  into the BN (an identity BN, ``gamma 1, beta = bias, mean 0, var 1 - eps``, when no BN is left; or
  ``mean - bias`` when the BN is still there);
* an affine op (Mul + Add) where we have a BN: ``gamma = scale, beta = shift, mean 0, var 1 - eps``;
* a BN with another epsilon: ``var + eps_file - eps_ours`` gives the same ``sqrt(var + eps)``;
* the dense layer after an NCHW flatten: rows reordered to our NHWC flatten;
* a bias-free dense layer (MobileFaceNet) given a bias: it moves into the following BN.
"""

from __future__ import annotations

import keras
import numpy as np

from face_recognition_tf.errors import PretrainedModelError
from face_recognition_tf.models.layers import GroupedConv2D
from face_recognition_tf.models.normalization import BatchNorm
from face_recognition_tf.pretrained import ops as O


def _kind(layer) -> str | None:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, (keras.layers.Conv2D, GroupedConv2D)):
        return O.CONV
    if isinstance(layer, BatchNorm):
        return O.BATCH_NORM
    if isinstance(layer, keras.layers.PReLU):
        return O.PRELU
    if isinstance(layer, keras.layers.Dense):
        return O.DENSE
    return None


class _Cursor:
    def __init__(self, path, ops):
        self.path, self.ops, self.index = path, [op for op in ops if op.kind in O.WEIGHTED], 0

    def peek(self):
        return self.ops[self.index] if self.index < len(self.ops) else None

    def take(self, layer, *kinds):
        op = self.peek()
        if op is None or op.kind not in kinds:
            found = op.describe() if op else "nothing more"
            raise PretrainedModelError(f"{self.path}: does not match the recognised architecture: layer "
                                       f"{layer.name} needs a {' or '.join(kinds)}, the file has {found}")
        self.index += 1
        return op


def _check_shape(path, layer, op, name, expected, found):
    if tuple(expected) != tuple(found):
        raise PretrainedModelError(f"{path}: does not match the recognised architecture: layer {layer.name} "
                                   f"{name} is {tuple(expected)}, {op.describe()} gives {tuple(found)}")


def _conv(path, layer, op, kind):
    weight = O.as_float32(op.arrays["weight"])  # (out, in/groups, kh, kw)
    if kind == "depthwise":
        kernel = weight.transpose(2, 3, 0, 1)      # (kh, kw, C, 1)
    else:
        kernel = weight.transpose(2, 3, 1, 0)      # (kh, kw, in/groups, out)
    _check_shape(path, layer, op, "kernel", layer.kernel.shape, kernel.shape)
    stride = op.attrs.get("stride")
    if stride is not None and tuple(stride) != tuple(layer.strides):
        raise PretrainedModelError(f"{path}: does not match the recognised architecture: layer {layer.name} "
                                   f"has stride {tuple(layer.strides)}, {op.describe()} stride {tuple(stride)}")
    layer.kernel.assign(kernel)
    return op.arrays.get("bias")


def _batch_norm(path, layer, op, pending_bias):
    eps = float(layer.epsilon)
    channels = int(layer.gamma.shape[0])
    if op is None:  # folded away: an identity BN carrying the bias
        gamma, beta = np.ones(channels), np.zeros(channels)
        mean, var = np.zeros(channels), np.full(channels, 1.0 - eps)
    elif op.kind == O.AFFINE:
        gamma, beta = np.broadcast_to(op.arrays["scale"], (channels,)), np.broadcast_to(op.arrays["shift"], (channels,))
        mean, var = np.zeros(channels), np.full(channels, 1.0 - eps)
    else:
        gamma, beta, mean = op.arrays["gamma"], op.arrays["beta"], op.arrays["mean"]
        var = np.asarray(op.arrays["var"], dtype=np.float64) + op.attrs["epsilon"] - eps
    values = [np.asarray(v, dtype=np.float64).reshape(-1) for v in (gamma, beta, mean, var)]
    for name, value in zip(("gamma", "beta", "moving_mean", "moving_variance"), values):
        _check_shape(path, layer, op or O.Op(O.BATCH_NORM, where="(folded)"), name, (channels,), value.shape)
    gamma, beta, mean, var = values
    if pending_bias is not None:
        bias = np.asarray(pending_bias, dtype=np.float64).reshape(-1)
        if op is None or op.kind == O.BATCH_NORM:
            mean = mean - bias       # BN(x + b) normalises x + b - mean
        else:
            beta = beta + gamma * bias  # scale * (x + b) + shift
    if np.any(var + eps <= 0):
        raise PretrainedModelError(f"{path}: {op.describe() if op else layer.name}: a BatchNorm variance "
                                   "is negative; the file is corrupt")
    for weight, value in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
                             (gamma, beta, mean, var)):
        weight.assign(O.as_float32(value))


def _dense(path, layer, op, flattened):
    weight = O.as_float32(op.arrays["weight"])  # (out, in), `in` in PyTorch's NCHW flatten order
    units, fan_in = layer.kernel.shape[1], layer.kernel.shape[0]
    _check_shape(path, layer, op, "kernel", (units, fan_in), weight.shape)
    if flattened is not None and len(flattened) == 3:  # our Flatten saw (H, W, C)
        h, w, c = flattened
        weight = weight.reshape(units, c, h, w).transpose(0, 2, 3, 1).reshape(units, fan_in)
    layer.kernel.assign(weight.T)


def flatten_inputs(model) -> dict:
    """Dense layer name -> the (H, W, C) its Flatten flattened."""
    shapes = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Flatten):
            for consumer in model.layers:
                if isinstance(consumer, keras.layers.Dense) and _feeds(model, layer, consumer):
                    shapes[consumer.name] = tuple(int(d) for d in layer.input.shape[1:])
    return shapes


def _feeds(model, producer, consumer) -> bool:
    """Whether `consumer` reads `producer`'s output, directly or through weightless layers (dropout)."""
    tensor = consumer.input
    for _ in range(len(model.layers)):
        owner = tensor._keras_history.operation
        if owner is producer:
            return True
        if _kind(owner) is not None or not hasattr(owner, "input") or isinstance(owner, keras.layers.InputLayer):
            return False
        tensor = owner.input
    return False


def canonical_layers(model) -> list:
    """The model's layers in the readers' canonical order (Keras lists them by depth instead, which
    puts a block's shortcut conv between its residual convs)."""
    index = {id(layer): i for i, layer in enumerate(model.layers)}
    inputs_of = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            inputs_of.append([])
            continue
        tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        sources = [tensor._keras_history.operation for tensor in tensors]
        inputs_of.append([O.INPUT if isinstance(src, keras.layers.InputLayer) else index[id(src)]
                          for src in sources])
    output = index[id(model.outputs[0]._keras_history.operation)]
    return [model.layers[i] for i in O.canonical_order(inputs_of, output)]


def load_ops(path, model, ops) -> dict:
    """Assign ``ops`` into ``model`` (raise a one-line error at the first mismatch); counts for the report."""
    flattened = flatten_inputs(model)
    cursor = _Cursor(path, ops)
    pending = None
    folded = 0
    for layer in canonical_layers(model):
        kind = _kind(layer)
        if kind is None:
            continue
        if pending is not None and kind != O.BATCH_NORM:
            raise PretrainedModelError(f"{path}: does not match the recognised architecture: a bias before "
                                       f"layer {layer.name} has no BatchNorm to carry it")
        if kind in (O.CONV, "depthwise"):
            pending = _conv(path, layer, cursor.take(layer, O.CONV), kind)
        elif kind == O.BATCH_NORM:
            # after a conv/dense that has a bias, the BN was folded into it, unless the next op reads
            # that conv directly (the next BN may otherwise be the next block's first)
            nxt = cursor.peek()
            own = nxt is not None and nxt.kind in (O.BATCH_NORM, O.AFFINE) and (
                pending is None or nxt.attrs.get("reads_previous", False))
            op = cursor.take(layer, O.BATCH_NORM, O.AFFINE) if own else None
            folded += op is None
            _batch_norm(path, layer, op, pending)
            pending = None
        elif kind == O.PRELU:
            op = cursor.take(layer, O.PRELU)
            channels = int(layer.alpha.shape[-1])
            slope = O.as_float32(op.arrays["slope"]).reshape(-1)
            if slope.size == 1:
                slope = np.full(channels, slope[0], np.float32)
            _check_shape(path, layer, op, "slopes", (channels,), slope.shape)
            layer.alpha.assign(slope.reshape(layer.alpha.shape))
        elif kind == O.DENSE:
            op = cursor.take(layer, O.DENSE)
            _dense(path, layer, op, flattened.get(layer.name))
            bias = op.arrays.get("bias")
            if layer.use_bias:
                layer.bias.assign(O.as_float32(bias if bias is not None else np.zeros(layer.units)))
                pending = None
            else:
                pending = bias
    if cursor.peek() is not None:
        raise PretrainedModelError(f"{path}: does not match the recognised architecture: "
                                   f"{len(cursor.ops) - cursor.index} weighted operations left over, "
                                   f"starting with {cursor.peek().describe()}")
    return {"batch_norms_folded_in_file": folded}
