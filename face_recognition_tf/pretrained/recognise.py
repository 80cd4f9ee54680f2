"""Which of our architectures an ONNX graph is, read from its structure alone.

IR-ResNet: one stride-1 3x3 stem conv from 3 to 64 channels, four stages each opened by a stride-2 3x3
conv, one residual Add per block, one dense layer: the Adds per stage give the depth (r18 ... r200).
MobileFaceNet: a stride-2 stem to ``64 * scale`` channels, grouped/depthwise convs, three stages opened
by stride-2 depthwise convs, one Add per residual unit: the Adds before the first stage and per stage
give ``blocks``.  Anything else (ReLU6, a pooling head, several outputs) is reported with what was found.
"""

from __future__ import annotations

from collections import Counter

from face_recognition_tf.errors import PretrainedModelError
from face_recognition_tf.models.iresnet import IRESNET_LAYERS, STAGE_WIDTHS
from face_recognition_tf.pretrained import ops as O

SUPPORTED = ("IR-ResNet 18/34/50/100/200 (insightface iresnet) and MobileFaceNet "
             "(insightface mbf / mbf_large)")


def _fail(path, found: str):
    raise PretrainedModelError(f"{path}: not a supported face recognition architecture: {found}; "
                               f"supported: {SUPPORTED}")


def _summary(ops, facts) -> str:
    kinds = Counter(op.kind for op in ops)
    dense = [op for op in ops if op.kind == O.DENSE]
    parts = [f"{kinds[O.CONV]} convolutions", f"{kinds[O.ADD]} residual adds"]
    if facts.get("other"):
        parts.insert(0, "operators " + ", ".join(facts["other"]))
    if dense:
        parts.append(f"a {dense[-1].arrays['weight'].shape[0]}-D output")
    return ", ".join(parts)


def _epsilon(ops) -> float:
    """The BatchNorms' epsilon (PyTorch's 1e-5 when every BatchNorm was folded away)."""
    found = Counter(op.attrs["epsilon"] for op in ops if op.kind == O.BATCH_NORM)
    return float(f"{found.most_common(1)[0][0]:.6g}") if found else 1e-5  # float32 attrs: 9.99999974e-06


def input_side(path, facts, ops) -> int:
    dims = facts.get("input_dims") or []
    if len(dims) != 4 or dims[1] not in (3, None):
        _fail(path, f"input of shape {dims} (expected N x 3 x H x W, RGB, channels first)")
    height, width = dims[2], dims[3]
    if height is None or width is None:
        return 112
    if height != width:
        _fail(path, f"a {height}x{width} input (expected a square face crop such as 112x112)")
    return int(height)


def recognise_onnx(path, ops, facts) -> dict:
    """``build_backbone`` arguments for the graph, or a one-line error saying what was found."""
    if facts.get("other"):
        _fail(path, _summary(ops, facts))
    convs = [op for op in ops if op.kind == O.CONV]
    dense = [op for op in ops if op.kind == O.DENSE]
    if not convs or len(dense) != 1 or ops[-1].kind not in (O.DENSE, O.BATCH_NORM, O.AFFINE):
        _fail(path, _summary(ops, facts))
    side = input_side(path, facts, ops)
    spec = {"embedding_size": int(dense[0].arrays["weight"].shape[0]), "input_shape": [side, side, 3],
            "bn_epsilon": _epsilon(ops)}
    if any(op.attrs["groups"] > 1 for op in convs):
        return {**spec, **_mobilefacenet(path, ops, facts)}
    return {**spec, **_iresnet(path, ops, facts)}


def _stage_adds(ops, opens_stage) -> list[int]:
    """Residual adds before the first stage opener, then per stage."""
    counts = [0]
    for op in ops:
        if op.kind == O.CONV and opens_stage(op):
            counts.append(0)
        elif op.kind == O.ADD:
            counts[-1] += 1
    return counts


def _iresnet(path, ops, facts) -> dict:
    stem = next(op for op in ops if op.kind == O.CONV)
    out, cin, kh, kw = stem.arrays["weight"].shape
    if cin != 3 or (kh, kw) != (3, 3) or out != STAGE_WIDTHS[0]:
        _fail(path, f"{_summary(ops, facts)}; first convolution {cin}->{out} channels {kh}x{kw} "
                    f"(an IR-ResNet starts with a 3x3 conv from 3 to {STAGE_WIDTHS[0]})")
    counts = _stage_adds(ops, lambda op: op.attrs["stride"] == (2, 2) and op.arrays["weight"].shape[2:] == (3, 3))
    stages = tuple(counts[1:])
    if counts[0] != 0 or len(stages) != 4:
        _fail(path, f"{_summary(ops, facts)} in {len(stages)} stride-2 stages (an IR-ResNet has 4)")
    for name, layers in IRESNET_LAYERS.items():
        if tuple(layers) == stages:
            return {"name": name}
    known = ", ".join(f"{n} {tuple(v)}" for n, v in IRESNET_LAYERS.items())
    _fail(path, f"an IR-ResNet with {stages} blocks per stage (known depths: {known})")


def _mobilefacenet(path, ops, facts) -> dict:
    stem = next(op for op in ops if op.kind == O.CONV)
    out, cin, kh, kw = stem.arrays["weight"].shape
    if cin != 3 or stem.attrs["stride"] != (2, 2) or out % 64:
        _fail(path, f"{_summary(ops, facts)}; first convolution {cin}->{out} channels stride "
                    f"{stem.attrs['stride']} (a MobileFaceNet starts with a stride-2 conv to 64 x scale)")

    def depthwise_down(op):
        groups = op.attrs["groups"]
        return groups > 1 and groups == op.arrays["weight"].shape[0] and op.attrs["stride"] == (2, 2)

    counts = _stage_adds(ops, lambda op: op is not stem and depthwise_down(op))
    if len(counts) != 4 or min(counts[1:]) < 1:
        _fail(path, f"{_summary(ops, facts)} in {len(counts) - 1} stride-2 depthwise stages "
                    "(a MobileFaceNet has 3)")
    blocks = [counts[0] or 1] + counts[1:]
    return {"name": "mobilefacenet", "blocks": blocks, "scale": out // 64}
