"""Training: one custom loop for every tf.distribute strategy (see trainer.py and train_step.py for why).

Importing this package is cheap; TensorFlow is imported by the submodules when used.
"""

_LAZY = {
    "Trainer": "face_recognition_tf.training.trainer",
    "TrainStep": "face_recognition_tf.training.train_step",
    "NonFiniteLossError": "face_recognition_tf.training.trainer",
    "train": "face_recognition_tf.training.trainer",
    "make_strategy": "face_recognition_tf.training.strategy",
    "build_schedule": "face_recognition_tf.training.schedules",
    "build_optimizer": "face_recognition_tf.training.optim",
    "Validator": "face_recognition_tf.training.validation",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'face_recognition_tf.training' has no attribute {name!r}")
