"""Read an arcface_torch state dict (``backbone.pth``) into ops and an architecture spec.

A state dict has no graph, only module paths, so here (unlike ONNX) the module structure of
arcface_torch's published ``iresnet.py`` / ``mobilefacenet.py`` *is* the evidence: parameters are grouped
by module, typed by their entries and shapes (a BatchNorm has running statistics, a conv a 4-D weight,
a PReLU a lone 1-D weight, a Linear a 2-D weight), kept in registration order (which is our builders'
layer order), and the depth is read from the block indices.  Strides are not stored, so the loader
checks shapes only and the parity check does the rest.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import PretrainedModelError
from face_recognition_tf.models.iresnet import IRESNET_LAYERS
from face_recognition_tf.pretrained import ops as O
from face_recognition_tf.pretrained.recognise import SUPPORTED

PYTORCH_BN_EPSILON = 1e-5


def _fail(path, message):
    raise PretrainedModelError(f"{path}: {message}")


def _modules(state: "OrderedDict[str, np.ndarray]") -> "OrderedDict[str, dict]":
    modules: OrderedDict[str, dict] = OrderedDict()
    for key, value in state.items():
        prefix, _, entry = key.rpartition(".")
        modules.setdefault(prefix, {})[entry] = value
    return modules


def to_ops(path, state) -> list:
    ops = []
    for prefix, entries in _modules(state).items():
        weight = entries.get("weight")
        if "running_mean" in entries:
            ops.append(O.Op(O.BATCH_NORM, {
                "gamma": entries.get("weight", np.ones_like(entries["running_mean"])),
                "beta": entries.get("bias", np.zeros_like(entries["running_mean"])),
                "mean": entries["running_mean"], "var": entries["running_var"],
            }, {"epsilon": PYTORCH_BN_EPSILON}, prefix))
        elif weight is None:
            continue
        elif weight.ndim == 4:
            ops.append(O.Op(O.CONV, {"weight": weight, "bias": entries.get("bias")},
                            {"stride": None, "pads": None, "groups": None}, prefix))
        elif weight.ndim == 2:
            ops.append(O.Op(O.DENSE, {"weight": weight, "bias": entries.get("bias")}, {}, prefix))
        elif weight.ndim == 1 and "bias" not in entries:
            ops.append(O.Op(O.PRELU, {"slope": weight}, {}, prefix))
        else:
            _fail(path, f"module {prefix} has a {weight.shape} weight that no supported layer has")
    return ops


def _count(state, pattern: str) -> int:
    """1 + the largest index matched by ``pattern`` (a regex with one group) over the keys."""
    found = [int(m.group(1)) for key in state for m in [re.match(pattern, key)] if m]
    return max(found) + 1 if found else 0


def recognise(path, state) -> dict:
    if all(k in state for k in ("layer1.0.conv1.weight", "fc.weight", "conv1.weight", "bn2.running_mean",
                                "features.running_mean")):
        stages = tuple(_count(state, rf"layer{s}\.(\d+)\.") for s in range(1, 5))
        name = next((n for n, layers in IRESNET_LAYERS.items() if tuple(layers) == stages), None)
        if name is None:
            known = ", ".join(f"{n} {tuple(v)}" for n, v in IRESNET_LAYERS.items())
            _fail(path, f"an IR-ResNet with {stages} blocks per stage (known depths: {known})")
        fc = state["fc.weight"]
        side = int(round((fc.shape[1] / state["bn2.running_mean"].shape[0]) ** 0.5)) * 16
        spec = {"name": name, "embedding_size": int(fc.shape[0])}
    elif "layers.0.layers.0.weight" in state and "conv_sep.layers.0.weight" in state \
            and "features.layers.2.weight" in state:
        stem = state["layers.0.layers.0.weight"]
        if stem.shape[0] % 64:
            _fail(path, f"a MobileFaceNet stem of {stem.shape[0]} channels (expected 64 x scale)")
        grouped = state.get("layers.1.layers.0.weight")
        first = 1 if grouped is not None and grouped.ndim == 4 else _count(state, r"layers\.1\.layers\.(\d+)\.")
        blocks = [first] + [_count(state, rf"layers\.{i}\.layers\.(\d+)\.layers\.") for i in (3, 5, 7)]
        if min(blocks) < 1:
            _fail(path, f"a MobileFaceNet with blocks {blocks} (each stage needs at least one)")
        gdc = state["features.layers.0.layers.0.weight"]
        side = int(gdc.shape[-1]) * 16
        spec = {"name": "mobilefacenet", "blocks": blocks, "scale": int(stem.shape[0] // 64),
                "embedding_size": int(state["features.layers.2.weight"].shape[0])}
    else:
        keys = list(state)
        shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        _fail(path, f"not a supported face recognition architecture: a state dict with {len(keys)} entries "
                    f"({shown}); supported: {SUPPORTED} as saved by arcface_torch")
    return {**spec, "input_shape": [side, side, 3], "bn_epsilon": PYTORCH_BN_EPSILON}


def read_pytorch(path: str | Path):
    """(ops in registration order, spec, facts) of an arcface_torch ``.pth`` / ``.pt`` state dict."""
    from face_recognition_tf.pretrained.torch_pickle import read_state_dict

    path = Path(path)
    state = read_state_dict(path)
    floats = OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in state.items()
                         if not k.endswith("num_batches_tracked"))
    spec = recognise(path, floats)
    return to_ops(path, floats), spec, {"entries": len(floats)}
