"""Start a backbone from a trained model and freeze part of it.

The seeds fine-tune pretrained recognizers on 10-500 people of their own: the embedding model comes
from a run, checkpoint or `.keras` file (loaded through `model_io`, the same loader evaluation uses),
a *new* head is built for the new classes, and optionally the first layers, or everything but the
head, stay frozen.  A frozen Keras 3 BatchNormalization also runs in inference mode, which is what a
small fine-tuning set needs (its batch statistics would be too noisy to replace ImageNet-scale ones).
"""

from __future__ import annotations

from face_recognition_tf.errors import CheckpointError


def load_initial_weights(backbone, init: str) -> None:
    """Copy the weights of the model at `init` into `backbone`, refusing another architecture."""
    from face_recognition_tf.model_io import load_embedding_model

    source = load_embedding_model(init)
    if not hasattr(source, "get_weights"):
        raise CheckpointError(f"{init}: a SavedModel cannot seed fine-tuning; use a run, checkpoint or .keras file")
    src_weights = source.get_weights()
    dst_weights = backbone.get_weights()
    if len(src_weights) != len(dst_weights):
        raise CheckpointError(
            f"{init}: another architecture ({len(src_weights)} weight tensors, the configured backbone has "
            f"{len(dst_weights)}); check model.backbone / normalization / width_multiplier"
        )
    for index, (src, dst) in enumerate(zip(src_weights, dst_weights)):
        if src.shape != dst.shape:
            name = backbone.weights[index].path if hasattr(backbone.weights[index], "path") else index
            raise CheckpointError(
                f"{init}: another architecture (weight {name} is {tuple(src.shape)} there, "
                f"{tuple(dst.shape)} in the configured backbone; check model.embedding_size / width_multiplier)"
            )
    backbone.set_weights(src_weights)


def freeze(backbone, mode: str, first_layers: int = 0) -> int:
    """Freeze per `finetune.freeze`; returns the number of backbone layers left frozen."""
    if mode == "none":
        return 0
    if mode == "all_but_head":
        backbone.trainable = False
        return len(backbone.layers)
    if mode == "first_layers":
        layers = [layer for layer in backbone.layers if layer.weights]
        count = min(int(first_layers), len(layers))
        for layer in layers[:count]:
            layer.trainable = False
        return count
    raise ValueError(f"unknown freeze mode {mode!r}")
