"""Embed verification images with a model, and score a model on pair sets.

The trainer validates every few thousand steps on the same pair sets, so the expensive parts are kept
out of the repeated path: the `.bin` files are decoded once by the caller and passed in as arrays, and an
`Embedder` holds one traced `tf.function` per model (pass the same `Embedder` again to skip retracing).
Each batch runs the images and their horizontal flips through the model in a single call, which is what
insightface's protocol needs and keeps an accelerator busy with one larger batch instead of two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from face_recognition_tf.evaluation.verification import (
    VerificationInputError,
    VerificationResult,
    evaluate_embeddings,
)


class Embedder:
    """A model plus its compiled embedding functions (with and without flips).

    The one embedding forward pass: `frtf evaluate`, `frtf calibrate`, validation during training and
    `FaceRecognizer` (inference, the demo) all embed through it, so a threshold measured by one holds
    for the others.
    """

    def __init__(self, model):
        import tensorflow as tf

        from face_recognition_tf.data.input.pipeline import normalize_images as normalize  # the one definition
        from face_recognition_tf.model_io import embedding_output  # a SavedModel's dict of outputs

        self.model = model
        spec = [tf.TensorSpec([None, None, None, 3], tf.uint8)]

        def embed(images):
            return tf.cast(embedding_output(model(normalize(images), training=False)), tf.float32)

        def with_flip(images):  # image and mirror in one call (one larger batch), split after
            both = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
            return tf.split(embed(both), 2, axis=0)

        self._plain = tf.function(embed, input_signature=spec)
        self._with_flip = tf.function(with_flip, input_signature=spec)

    def __call__(self, images_uint8, *, batch_size: int = 64, flip: bool = True, progress: bool = False,
                 desc: str | None = None):
        """`(embeddings float32 (M, D), flip_embeddings or None)` for RGB uint8 images `(M, H, W, 3)`."""
        from tqdm.auto import tqdm

        images = np.asarray(images_uint8)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise VerificationInputError(
                f"images must be uint8 RGB of shape (M, H, W, 3), got {images.dtype} {images.shape}"
            )
        if batch_size < 1:
            raise VerificationInputError(f"batch_size must be at least 1, got {batch_size}")
        chunks, flip_chunks = [], []
        with tqdm(total=len(images), unit="img", desc=desc, disable=not progress, leave=False) as bar:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                if flip:
                    out, out_flip = self._with_flip(batch)
                    flip_chunks.append(out_flip.numpy())
                else:
                    out = self._plain(batch)
                chunks.append(out.numpy())
                bar.update(len(batch))
        if not chunks:
            raise VerificationInputError("no images to embed")
        embeddings = np.concatenate(chunks)
        if embeddings.ndim != 2:
            raise VerificationInputError(f"the model returned shape {embeddings.shape[1:]} per image; expected (D,)")
        return embeddings, (np.concatenate(flip_chunks) if flip else None)


def embed_images(model, images_uint8, *, batch_size: int = 64, flip: bool = True, progress: bool = False):
    """Embeddings (and flip embeddings) of uint8 RGB images; `model` may be an `Embedder` to reuse its trace."""
    embedder = model if isinstance(model, Embedder) else Embedder(model)
    return embedder(images_uint8, batch_size=batch_size, flip=flip, progress=progress)


def evaluate_model(model, pair_sets: Mapping[str, object], *, batch_size: int = 64, progress: bool = False,
                   flip: bool = True, folds: int = 10) -> dict[str, VerificationResult]:
    """insightface's figures for each pair set: name -> `.bin` path, or (images uint8, issame) already loaded."""
    embedder = model if isinstance(model, Embedder) else Embedder(model)
    results = {}
    for name, source in pair_sets.items():
        images, issame = _pair_set(name, source)
        embeddings, flips = embedder(images, batch_size=batch_size, flip=flip, progress=progress, desc=name)
        try:
            results[name] = evaluate_embeddings(embeddings, issame, folds=folds, flip_embeddings=flips)
        except VerificationInputError as exc:
            raise VerificationInputError(f"{name}: {exc}") from None
    return results


def _pair_set(name, source):
    if isinstance(source, (str, Path)):
        from face_recognition_tf.data import load_bin

        return load_bin(source)
    try:
        images, issame = source
    except (TypeError, ValueError):
        raise VerificationInputError(
            f"{name}: expected a .bin path or an (images, issame) pair, got {type(source).__name__}"
        ) from None
    return images, issame
