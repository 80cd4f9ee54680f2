"""Face detection (MTCNN), 5-point alignment to insightface's 112x112 ArcFace crop, and galleries.

Everything here works on RGB uint8 images.  Importing this package does not import TensorFlow; the
detector loads it (and MTCNN's bundled weights) the first time it runs.
"""

from face_recognition_tf.faces.align import (
    ARCFACE_TEMPLATE,
    LANDMARK_NAMES,
    align_face,
    estimate_transform,
    template_for_size,
    transform_points,
    warp_face,
)
from face_recognition_tf.faces.detect import (
    IMAGE_SUFFIXES,
    Face,
    FaceDetector,
    NoFaceError,
    as_rgb_image,
    list_images,
    load_rgb,
    read_image,
)
from face_recognition_tf.faces.gallery import Gallery, Match, l2_normalize
from face_recognition_tf.faces.images import aligned_tree, identity_folders, read_rgb

__all__ = [
    "ARCFACE_TEMPLATE",
    "IMAGE_SUFFIXES",
    "LANDMARK_NAMES",
    "Face",
    "FaceDetector",
    "Gallery",
    "Match",
    "NoFaceError",
    "align_face",
    "aligned_tree",
    "as_rgb_image",
    "estimate_transform",
    "identity_folders",
    "l2_normalize",
    "list_images",
    "load_rgb",
    "read_image",
    "read_rgb",
    "template_for_size",
    "transform_points",
    "warp_face",
]
