"""Data layer: insightface datasets in (RecordIO, .bin pair sets), TFRecords out, tf.data on top.

Importing this package does not import TensorFlow (the converter's worker processes and the
command line stay light); the training input (`data.input`) imports it when first used.
"""

from face_recognition_tf.data.formats.verification_bin import find_bins, load_bin, save_bin
from face_recognition_tf.data.records.tfrecord import read_manifest

__all__ = ["find_bins", "load_bin", "read_manifest", "save_bin"]


def __getattr__(name):
    # The tf.data entry points import TensorFlow, so they load on first use only.
    if name in ("build_train_dataset", "decode_image", "normalize_images"):
        from face_recognition_tf.data.input import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'face_recognition_tf.data' has no attribute {name!r}")
