"""The weighted operations of a foreign model, in a form both readers produce and the loader consumes.

An ONNX graph and a PyTorch state dict describe the same network very differently (numbered
initializers and folded BatchNorms in one, module paths in the other).  Each reader turns its file
into a list of :class:`Op` in the network's canonical order (the residual branch of a block before its
shortcut, as arcface_torch registers them and as our Keras builders create layers), so one loader
(`weights.py`) maps them onto a Keras backbone.  Arrays keep PyTorch's layouts: conv weights
``(out, in/groups, kh, kw)``, dense weights ``(out, in)`` over an NCHW flatten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# op kinds
CONV = "conv"            # weight (O, I/g, kh, kw), bias or None; attrs: stride, pads, groups (None if unknown)
BATCH_NORM = "bn"        # gamma, beta, mean, var; attrs: epsilon
AFFINE = "affine"        # scale, shift: a per-channel y = x * scale + shift (a BatchNorm as Mul + Add)
PRELU = "prelu"          # slope (C,) (or (1,) shared)
DENSE = "dense"          # weight (out, in), bias or None
ADD = "add"              # a residual sum of two branches (ONNX only)
FLATTEN = "flatten"      # (ONNX only)

WEIGHTED = (CONV, BATCH_NORM, AFFINE, PRELU, DENSE)
INPUT = -1  # the id of a graph's input in `canonical_order`


@dataclass
class Op:
    kind: str
    arrays: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    where: str = ""  # node or module name, for messages

    def describe(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.arrays.items() if v is not None)
        return f"{self.kind} {self.where}" + (f" ({shapes})" if shapes else "")


@dataclass
class SourceModel:
    """What a reader found: the ops, the architecture spec (``build_backbone`` arguments) and facts
    for the report."""

    ops: list
    spec: dict
    format: str                       # "onnx" or "pytorch"
    input_mean: tuple | None = None   # the normalisation the file itself states (ONNX Sub/Mul/Div), else None
    input_std: tuple | None = None
    details: dict = field(default_factory=dict)


def as_float32(array) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


def canonical_order(inputs_of: list, output: int) -> list[int]:
    """Node ids (``inputs_of[i]``: the ids node i reads, ``INPUT`` for the graph input; nodes listed
    after their inputs) in the order both readers and our builders agree on: a walk back from
    ``output`` that takes, at each two-input node (a residual Add), the input with more nodes of its
    own first, i.e. the residual branch before the shortcut, whatever order a file lists them in."""
    ancestors: list[int] = []  # bitmask of each op's ancestors (itself included)
    for index, inputs in enumerate(inputs_of):
        mask = 1 << index
        for i in inputs:
            if i != INPUT:
                mask |= ancestors[i]
        ancestors.append(mask)

    order, seen = [], set()
    stack = [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if node == INPUT or node in seen:
            continue
        if expanded:
            seen.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        inputs = [i for i in inputs_of[node] if i != INPUT]
        if len(inputs) == 2:
            a, b = inputs
            own_a = bin(ancestors[a] & ~ancestors[b]).count("1")
            own_b = bin(ancestors[b] & ~ancestors[a]).count("1")
            inputs = [a, b] if own_a >= own_b else [b, a]
        for i in reversed(inputs):  # the first input is expanded first
            stack.append((i, False))
    return order
