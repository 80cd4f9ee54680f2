"""The names a config may give `model.backbone`, `head.name` and `model.normalization`, known without TensorFlow.

Why this module: `models/factory.py` owns the backbone and head registries (`register_backbone`,
`register_head`), but importing anything under `face_recognition_tf.models` imports Keras, and a config
is checked before TensorFlow starts (a typo must be a one-line error at once, and commands that never
build a model must not pay for TensorFlow).  So the built-in names are listed here, the factory
registers its built-ins under exactly these names (tests/test_factory.py holds them equal), and the
choices below add whatever was registered since.  Registering needs the factory imported, so while it is
not, the built-ins are the whole registry and nothing needs importing to know it.
"""

from __future__ import annotations

import sys

BUILTIN_BACKBONES = ("r18", "r34", "r50", "r100", "r200", "mobilefacenet", "mbf_large")
BUILTIN_HEADS = ("arcface", "cosface", "sphereface", "combined", "softmax", "triplet")
# the layers models/normalization.py builds (NormFactory)
NORMALIZATIONS = ("batch", "batch_renorm", "group")

_FACTORY = "face_recognition_tf.models.factory"


def backbone_choices() -> list[str]:
    """Every backbone `build_backbone` would accept now: the registry's names if it is loaded."""
    factory = sys.modules.get(_FACTORY)
    return factory.backbone_names() if hasattr(factory, "backbone_names") else sorted(BUILTIN_BACKBONES)


def head_choices() -> list[str]:
    """Every head `build_head` would accept now: the registry's names if it is loaded."""
    factory = sys.modules.get(_FACTORY)
    return factory.head_names() if hasattr(factory, "head_names") else sorted(BUILTIN_HEADS)
