"""Verification evaluation: insightface's metric, batched embedding, reports and pair-set building.

`evaluate_embeddings` and `VerificationResult` need only numpy and sklearn; the model-facing helpers
(`embed_images`, `evaluate_model`, `Embedder`) import TensorFlow when first used, so code that only
scores embeddings does not pay for it.
"""

from face_recognition_tf.evaluation.verification import (
    TAR_FAR_TARGETS,
    VerificationInputError,
    VerificationResult,
    evaluate_embeddings,
    fold_sizes,
)

__all__ = [
    "TAR_FAR_TARGETS",
    "Embedder",
    "VerificationInputError",
    "VerificationResult",
    "embed_images",
    "evaluate_embeddings",
    "evaluate_model",
    "fold_sizes",
]


def __getattr__(name):
    if name in ("Embedder", "embed_images", "evaluate_model"):
        from face_recognition_tf.evaluation import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'face_recognition_tf.evaluation' has no attribute {name!r}")
