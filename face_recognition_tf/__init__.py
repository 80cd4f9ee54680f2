"""face_recognition_tf: train insightface-grade face recognizers with TensorFlow 2 / Keras 3.

Importing the package is cheap: TensorFlow is only imported by the submodules that need it, so the
command line can answer `--help` and report bad arguments without paying TensorFlow's start-up.
"""

from face_recognition_tf.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    FaceRecognitionError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "FaceRecognitionError",
    "FaceRecognizer",
    "__version__",
]


def __getattr__(name):
    # Lazy so that `import face_recognition_tf` does not import TensorFlow.
    if name == "FaceRecognizer":
        from face_recognition_tf.inference import FaceRecognizer

        return FaceRecognizer
    raise AttributeError(f"module 'face_recognition_tf' has no attribute {name!r}")
