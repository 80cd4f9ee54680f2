"""Start a backbone from a trained model and freeze part of it.

The seeds fine-tune pretrained recognizers on 10-500 people of their own: the embedding model comes
from a run, checkpoint or `.keras` file (loaded through `model_io`, the same loader evaluation uses),
a *new* head is built for the new classes, and optionally the first layers, or everything but the
head, stay frozen.  A frozen Keras 3 BatchNormalization also runs in inference mode, which is what a
small fine-tuning set needs (its batch statistics would be too noisy to replace ImageNet-scale ones).
"""

from __future__ import annotations

from pathlib import Path

from face_recognition_tf.errors import CheckpointError

# what fine-tuning may change; every other build_backbone argument is the starting model's architecture
TRAINING_KEYS = ("dropout", "weight_decay", "bn_momentum", "renorm_momentum")


def init_spec(init: str) -> dict | None:
    """The ``backbone.json`` of the model fine-tuning starts from (a run folder, one of its checkpoints,
    or a folder written by ``frtf import``), or None for a bare ``.keras`` file."""
    from face_recognition_tf.model_io import BACKBONE_SPEC, CHECKPOINT_DIR, read_backbone_spec

    path = Path(init)
    for folder in (path, path.parent.parent if path.parent.name == CHECKPOINT_DIR else None):
        if folder is not None and (folder / BACKBONE_SPEC).is_file():
            return read_backbone_spec(folder)
    return None


# config keys (model.*) that follow the starting model's backbone.json
_CONFIG_KEYS = {"backbone": "name", "embedding_size": "embedding_size", "normalization": "normalization",
                "width_multiplier": "width_multiplier", "bn_epsilon": "bn_epsilon", "groups": "groups"}


def adopt_init_architecture(cfg) -> list[str]:
    """Set ``model.*`` to the starting model's architecture (so the head, the data check and the saved
    config agree with it); returns what changed, for the log."""
    source = init_spec(cfg.finetune.init) if cfg.finetune.init else None
    if source is None:
        return []
    changed = []
    for key, spec_key in _CONFIG_KEYS.items():
        if spec_key in source and cfg.model[key] != source[spec_key]:
            changed.append(f"model.{key} {cfg.model[key]} -> {source[spec_key]}")
            cfg.model[key] = source[spec_key]
    side = int(source.get("input_shape", [cfg.model.input_size])[0])
    if side != int(cfg.model.input_size):
        changed.append(f"model.input_size {cfg.model.input_size} -> {side}")
        cfg.model.input_size = side
    return changed


def backbone_spec(configured: dict, init: str | None) -> dict:
    """The backbone to build: the starting model's architecture (its depth, embedding size, BN epsilon,
    input normalisation...) with the config's training settings, so an imported insightface model is
    rebuilt as it was imported whatever ``model.backbone`` says."""
    source = init_spec(init) if init else None
    if source is None:
        return configured
    spec = {k: v for k, v in source.items() if k != "model_name"}
    spec.update({k: configured[k] for k in TRAINING_KEYS if k in configured})
    return spec


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
