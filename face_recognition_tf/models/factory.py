"""Name -> model registry, so configs name a backbone and a head by string (timm-style).

The embedding model (what users keep, export and embed with) and the head (only needed to train)
are built separately: ``build_backbone`` returns a ``keras.Model`` from images to embeddings,
``build_head`` a layer from (embeddings, labels) to logits.

Weight decay: ``weight_decay > 0`` puts ``keras.regularizers.L2(weight_decay)`` on every
convolution / depthwise / dense kernel (and on a head's ``kernel``), so a custom loop can add
``sum(model.losses)`` to its loss.  L2(wd) adds ``wd * ||w||^2`` whose gradient is ``2 * wd * w``:
insightface's SGD ``weight_decay=5e-4`` corresponds to ``weight_decay=2.5e-4`` here, applied to
kernels only (insightface also decays BN and PReLU parameters).  A trainer using decoupled weight
decay (AdamW / SGDW) should pass 0 here instead.

Head hyper-parameters: ``m=None`` means the head's own default (arcface 0.5, cosface 0.35,
sphereface 4, triplet 0.5); ``combined`` uses ``m1, m2, m3`` and ignores ``m``; ``softmax`` ignores
``s`` and the margins.  ``gradient`` (exact | straight_through) is taken by arcface, combined and
cosface (where both are the same); ``sphereface_form`` and the ``lambda_*`` schedule by sphereface;
``mining`` by triplet, which has no class centres (no ``kernel``: it returns per-anchor losses).
Extra keyword ``options`` go to the head class (``lambda_`` for sphereface).
"""

from __future__ import annotations

import inspect
from typing import Callable

import keras

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.models import heads as _heads
from face_recognition_tf.models import margins as _margins
from face_recognition_tf.models import triplet as _triplet_module
from face_recognition_tf.models.iresnet import IRESNET_LAYERS, build_iresnet
from face_recognition_tf.models.input_normalization import MODEL_INPUT_MEAN, MODEL_INPUT_STD, is_standard
from face_recognition_tf.models.mobilefacenet import (
    MBF_BLOCKS,
    MBF_LARGE_BLOCKS,
    MBF_LARGE_SCALE,
    MBF_SCALE,
    build_mobilefacenet,
)
from face_recognition_tf.models.normalization import NORMALIZATIONS, NormFactory

_BACKBONES: dict[str, Callable[..., keras.Model]] = {}
_HEADS: dict[str, Callable[..., keras.layers.Layer]] = {}


def register_backbone(name: str):
    """Decorator registering ``fn(embedding_size, *, norm, input_shape, dropout, width_multiplier,
    weight_decay, input_mean, input_std, name, **options) -> keras.Model`` under ``name``.

    ``options`` are the architecture's own settings (MobileFaceNet's ``blocks`` and ``scale``); a
    builder that takes none rejects them."""

    def decorate(fn):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = fn
        return fn

    return decorate


def register_head(name: str):
    """Decorator registering ``fn(num_classes, embedding_size, *, s, m, m1, m2, m3, easy_margin,
    weight_decay, **options) -> keras.layers.Layer`` under ``name``."""

    def decorate(fn):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        _HEADS[name] = fn
        return fn

    return decorate


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def head_names() -> list[str]:
    return sorted(_HEADS)


def _iresnet_builder(arch):
    def build(embedding_size, **kwargs):
        kwargs["name"] = kwargs.get("name") or f"iresnet{arch[1:]}"
        return build_iresnet(IRESNET_LAYERS[arch], embedding_size, **kwargs)

    build.__doc__ = f"insightface IR-ResNet{arch[1:]} (stages {IRESNET_LAYERS[arch]})."
    return build


for _arch in IRESNET_LAYERS:
    register_backbone(_arch)(_iresnet_builder(_arch))


@register_backbone("mobilefacenet")
def _mobilefacenet(embedding_size, *, blocks=MBF_BLOCKS, scale=MBF_SCALE, **kwargs):
    """insightface's ``mbf``: blocks (1, 4, 6, 2), scale 2, unless given."""
    kwargs["name"] = kwargs.get("name") or "mobilefacenet"
    return build_mobilefacenet(embedding_size, blocks=blocks, scale=scale, **kwargs)


@register_backbone("mbf_large")
def _mbf_large(embedding_size, *, blocks=MBF_LARGE_BLOCKS, scale=MBF_LARGE_SCALE, **kwargs):
    """insightface's ``mbf_large``: MobileFaceNet with blocks (2, 8, 12, 4), scale 4."""
    kwargs["name"] = kwargs.get("name") or "mobilefacenet_large"
    return build_mobilefacenet(embedding_size, blocks=blocks, scale=scale, **kwargs)


def _check(condition, message):
    if not condition:
        raise ConfigError(message)


def build_backbone(
    name: str,
    embedding_size: int = 512,
    normalization: str = "batch",
    *,
    input_shape=(112, 112, 3),
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    weight_decay: float = 0.0,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 2e-5,
    renorm_clipping: dict | None = None,
    renorm_momentum: float = 0.99,
    groups: int = 32,
    input_mean=MODEL_INPUT_MEAN,
    input_std=MODEL_INPUT_STD,
    model_name: str | None = None,
    **options,
) -> keras.Model:
    """Embedding model: float32 images ``(x - 127.5) / 128`` (RGB, NHWC) -> (B, embedding_size) float32.

    Built under whatever mixed-precision policy is global; the output is always float32.
    ``groups`` (group norm) is clamped per layer to the largest divisor of its channel count.
    ``input_mean`` / ``input_std``: the normalisation the weights were trained on, when it is not
    ours (imported insightface models: 127.5 / 127.5); the model then converts its input itself
    (models/input_normalization.py).  ``options``: the architecture's own settings, e.g.
    MobileFaceNet's ``blocks`` and ``scale``.
    """
    _check(name in _BACKBONES, f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")
    _check(normalization in NORMALIZATIONS,
           f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    _check(int(embedding_size) >= 1, f"embedding_size must be >= 1, got {embedding_size}")
    _check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
    _check(width_multiplier > 0, f"width_multiplier must be > 0, got {width_multiplier}")
    _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
    _check(0.0 <= bn_momentum < 1.0, f"bn_momentum must be in [0, 1), got {bn_momentum}")
    _check(bn_epsilon > 0, f"bn_epsilon must be > 0, got {bn_epsilon}")
    _check(int(groups) >= 1, f"groups must be >= 1, got {groups}")
    shape = tuple(input_shape)
    _check(len(shape) == 3 and shape[2] == 3 and all(int(d) >= 16 for d in shape[:2]),
           f"input_shape must be (height, width, 3) with sides >= 16, got {input_shape}")
    clipping = dict(renorm_clipping or {})
    norm = NormFactory(
        normalization,
        momentum=bn_momentum,
        epsilon=bn_epsilon,
        renorm_clipping=clipping,
        renorm_momentum=renorm_momentum,
        groups=groups,
    )
    rc = norm.renorm_clipping
    _check(rc["rmin"] <= 1.0 <= rc["rmax"] and rc["dmax"] >= 0,
           f"renorm_clipping needs rmin <= 1 <= rmax and dmax >= 0, got {rc}")
    builder = _BACKBONES[name]
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(k for k in options if k not in accepted)  # a builder names the options it takes
    _check(not unknown, f"backbone {name!r} takes no option {', '.join(unknown)}")
    if takes_any or "input_mean" in accepted:
        options.update(input_mean=input_mean, input_std=input_std)
    else:  # a builder registered before models carried their normalisation
        _check(is_standard(input_mean, input_std),
               f"backbone {name!r} cannot take another input normalisation (input_mean / input_std)")
    try:
        return builder(
            int(embedding_size),
            norm=norm,
            input_shape=tuple(int(d) for d in shape),
            dropout=float(dropout),
            width_multiplier=float(width_multiplier),
            weight_decay=float(weight_decay),
            name=model_name,
            **options,
        )
    except ValueError as err:
        raise ConfigError(f"backbone {name!r}: {err}") from err


@register_head("arcface")
def _arcface(num_classes, embedding_size, *, s, m, easy_margin, gradient, weight_decay, **options):
    return _heads.ArcFace(num_classes, embedding_size, s=s, m=0.5 if m is None else m,
                          easy_margin=easy_margin, gradient=gradient, weight_decay=weight_decay, **options)


@register_head("cosface")
def _cosface(num_classes, embedding_size, *, s, m, gradient, weight_decay, **options):
    return _heads.CosFace(num_classes, embedding_size, s=s, m=0.35 if m is None else m,
                          gradient=gradient, weight_decay=weight_decay, **options)


@register_head("sphereface")
def _sphereface(num_classes, embedding_size, *, s, m, sphereface_form, lambda_base, lambda_gamma, lambda_power,
                lambda_min, weight_decay, **options):
    return _heads.SphereFace(num_classes, embedding_size, s=s, m=4 if m is None else m, form=sphereface_form,
                             lambda_base=lambda_base, lambda_gamma=lambda_gamma, lambda_power=lambda_power,
                             lambda_min=lambda_min, weight_decay=weight_decay, **options)


@register_head("combined")
def _combined(num_classes, embedding_size, *, s, m1, m2, m3, easy_margin, gradient, weight_decay, **options):
    return _heads.CombinedMargin(num_classes, embedding_size, s=s, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin,
                                 gradient=gradient, weight_decay=weight_decay, **options)


@register_head("triplet")
def _triplet(num_classes, embedding_size, *, m, mining, weight_decay, **options):
    # no class centres: num_classes, embedding_size and weight_decay have nothing to act on
    return _triplet_module.TripletHead(margin=0.5 if m is None else m, mining=mining, **options)


@register_head("softmax")
def _softmax(num_classes, embedding_size, *, weight_decay, **options):
    return _heads.SoftmaxHead(num_classes, embedding_size, weight_decay=weight_decay, **options)



def build_head(
    name: str,
    num_classes: int,
    embedding_size: int = 512,
    *,
    s: float = 64.0,
    m: float | None = None,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    easy_margin: bool = False,
    gradient: str = "exact",
    sphereface_form: str = "normalized",
    lambda_base: float = 1000.0,
    lambda_gamma: float = 0.12,
    lambda_power: float = 1.0,
    lambda_min: float = 5.0,
    mining: str = "batch_hard",
    weight_decay: float = 0.0,
    **options,
) -> keras.layers.Layer:
    """Training head ``head(embeddings, labels) -> float32 logits (B, num_classes)`` with margin.

    ``head.class_logits(embeddings)`` gives logits without margin; the class centres are
    ``head.kernel`` of shape (embedding_size, num_classes).  The exception is ``triplet``: no
    centres, and ``head(embeddings, labels)`` is the (B,) per-anchor loss.  Every head has
    ``per_example_loss`` and ``hits``, which is all the trainer uses.  See the module docstring
    for the per-head defaults and which arguments each head reads.
    """
    _check(name in _HEADS, f"unknown head {name!r}; choose one of {', '.join(head_names())}")
    _check(int(num_classes) >= 1, f"num_classes must be >= 1, got {num_classes}")
    _check(int(embedding_size) >= 1, f"embedding_size must be >= 1, got {embedding_size}")
    _check(s > 0, f"head scale s must be > 0, got {s}")
    _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
    if name == "sphereface" and m is not None:
        _check(float(m).is_integer() and m >= 1, f"sphereface needs an integer margin m >= 1, got {m}")
    if name == "combined":
        _check(m1 > 0, f"combined margin m1 must be > 0, got {m1}")
    _check(gradient in _margins.GRADIENTS,
           f"head gradient must be one of {', '.join(_margins.GRADIENTS)}, got {gradient!r}")
    builder = _HEADS[name]
    accepted = inspect.signature(builder).parameters
    _check(gradient == "exact" or "gradient" in accepted,
           f"head {name!r} has no straight-through form (gradient: straight_through is for arcface, combined "
           "and cosface); set head.gradient=exact")
    values = dict(s=float(s), m=m, m1=float(m1), m2=float(m2), m3=float(m3), easy_margin=bool(easy_margin),
                  gradient=gradient, sphereface_form=sphereface_form, lambda_base=float(lambda_base),
                  lambda_gamma=float(lambda_gamma), lambda_power=float(lambda_power), lambda_min=float(lambda_min),
                  mining=mining)
    kwargs = {k: v for k, v in values.items() if k in accepted}
    try:
        return builder(int(num_classes), int(embedding_size), weight_decay=float(weight_decay),
                       **kwargs, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"head {name!r}: {err}") from err
