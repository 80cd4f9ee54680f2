"""Backbones (embedding models) and training heads, built by name.

``build_backbone("r50")`` gives insightface's IR-ResNet50 as a Keras model from normalised RGB
images to float32 embeddings; ``build_head("arcface", num_classes)`` the margin head used only to
train it.  Both are registries (``register_backbone`` / ``register_head``) so configs name them
by string and new architectures plug in without touching the trainer.
"""

from face_recognition_tf.models.factory import (
    backbone_names,
    build_backbone,
    build_head,
    head_names,
    register_backbone,
    register_head,
)
from face_recognition_tf.models.heads import (
    ArcFace,
    CombinedMargin,
    CosFace,
    MarginHead,
    SoftmaxHead,
    SphereFace,
)
from face_recognition_tf.models.normalization import BatchNorm, GroupNorm
from face_recognition_tf.models.triplet import TripletHead

__all__ = [
    "ArcFace",
    "BatchNorm",
    "CombinedMargin",
    "CosFace",
    "GroupNorm",
    "MarginHead",
    "SoftmaxHead",
    "SphereFace",
    "TripletHead",
    "backbone_names",
    "build_backbone",
    "build_head",
    "head_names",
    "register_backbone",
    "register_head",
]
