"""One exception family for everything a user can get wrong.

The command line turns these into a one-line message on stderr and a non-zero exit code, so each
message must name the file (and record, key or field) and say what is wrong with it.  Programming
errors stay ordinary Python exceptions and keep their traceback.
"""


class FaceRecognitionError(Exception):
    """Base class: bad input, bad config or a broken file, explained for a user."""


class DatasetError(FaceRecognitionError):
    """A dataset file (.rec, .idx, property, .bin, TFRecord, manifest, image) is missing or corrupt."""


class ConfigError(FaceRecognitionError):
    """A config file or command-line override is unknown, mistyped or inconsistent."""


class CheckpointError(FaceRecognitionError):
    """A checkpoint or saved model is missing, corrupt or belongs to another architecture."""


class OutputError(FaceRecognitionError, OSError):
    """An output cannot be written (read-only file system, a file where a folder must go, ...)."""


class PretrainedModelError(FaceRecognitionError):
    """A pretrained model file to import (ONNX, PyTorch state dict) is unreadable, unsafe, or not an
    architecture this package can rebuild."""
