"""Find and load embedding models, whatever form the user points at.

People evaluate and use models in several forms: a training run folder, one checkpoint of it, the
final or best `.keras` file, a model folder written by `frtf import` (`backbone.json` + `embedding.keras`,
the same shape as a run folder), or an exported SavedModel.  This module turns any of those into a callable
embedding model `(B, 112, 112, 3) float32 -> (B, D)`, so evaluation, inference and fine-tuning share
one loader.  A checkpoint holds weights only; the architecture is rebuilt from the run's
`backbone.json` (the exact `build_backbone` arguments the trainer wrote), which keeps checkpoints
loadable without the config library.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import json
import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

from face_recognition_tf.errors import CheckpointError
from face_recognition_tf.run_folder import BEST_DIR, CHECKPOINT_DIR, FINAL_MODEL, RunFolder



DEFAULT_IMAGE_SIZE = 112  # the ArcFace crop, for a model that does not state its input shape


def model_image_size(model) -> int:
    """The side S of the square (B, S, S, 3) images a loaded model takes: its Keras `input_shape`,
    else 112 (a SavedModel wrapper, or any callable without a usable shape).  The one lookup that
    inference, export and the demo use."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return DEFAULT_IMAGE_SIZE


def embedding_output(outputs):
    """The embedding tensor of a model call's result: a SavedModel signature (or a `TFSMLayer`)
    returns a dict of named outputs; one output is the embedding, several must include
    "embedding" (what `frtf export` names it).  A tensor passes through.  Works inside a traced
    function (it only looks at the dict's keys)."""
    if not isinstance(outputs, Mapping):
        return outputs
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    if "embedding" in outputs:
        return outputs["embedding"]
    raise CheckpointError(f"the model returns {sorted(outputs)}; expected one embedding output")


def expand_model_paths(paths: list[str]) -> list[str]:
    """Expand globs and run folders into the individual models to evaluate, in a stable order.

    A run folder stands for every checkpoint it kept (step order); a folder holding a SavedModel, a
    `.keras` file or a checkpoint prefix stands for itself.
    """
    expanded: list[str] = []
    for raw in paths:
        matches = sorted(glob.glob(raw), key=_natural_key) if glob.has_magic(raw) else [raw]
        if not matches:
            raise CheckpointError(f"{raw}: no file or folder matches this pattern")
        for item in matches:
            path = Path(item)
            if item.endswith(".index"):  # a shell glob like ckpt-* lists the .index/.data files
                path = Path(item[: -len(".index")])
            elif re.search(r"\.data-\d+-of-\d+$", item):
                continue
            if RunFolder.is_run_folder(path):
                checkpoints = RunFolder(path).checkpoints(newest_first=False)
                if checkpoints:
                    expanded.extend(str(c) for c in checkpoints)
                elif RunFolder(path).final_model.is_file():  # an imported model folder, or a run's final model
                    expanded.append(str(path))
                else:
                    raise CheckpointError(f"{path}: run folder holds no checkpoint in {CHECKPOINT_DIR}/")
            elif _exists(path):
                expanded.append(str(path))
            else:
                raise CheckpointError(
                    f"{path}: not found (expected a run folder, a checkpoint prefix like RUN/checkpoints/ckpt-100, "
                    "a .keras file or a SavedModel folder)"
                )
    # keep order, drop repeats (a glob and an explicit path may name the same checkpoint)
    return list(dict.fromkeys(expanded))


def _natural_key(path: str):
    """Sort `ckpt-5` before `ckpt-10`, as a person reads them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def describe(path: str | Path) -> str:
    """A short display name: `run/ckpt-1200`, `run/best`, `model.keras`."""
    path = Path(path)
    if RunFolder.is_checkpoint_prefix(path):
        return f"{path.parent.parent.name}/{path.name}"
    if path.name == FINAL_MODEL and path.parent.name:
        return f"{path.parent.name}/{path.stem}" if path.parent.name != BEST_DIR else f"{path.parent.parent.name}/best"
    return path.name


def load_embedding_model(path: str | Path):
    """Load an embedding model from a run folder, checkpoint prefix, `.keras` file or SavedModel.

    Returns a Keras model (or, for a SavedModel, a Keras layer wrapping its serving signature) that
    maps normalised `(B, 112, 112, 3)` float32 images to `(B, D)` embeddings.
    """
    path = Path(path)
    if RunFolder.is_run_folder(path):
        checkpoints = RunFolder(path).checkpoints(newest_first=True)
        if checkpoints:
            return _load_checkpoint(checkpoints[0])
        final = RunFolder(path).final_model
        if final.is_file():
            return _load_keras_file(final)
        raise CheckpointError(f"{path}: run folder holds neither checkpoints nor embedding.keras")
    if path.suffix == ".keras":
        return _load_keras_file(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return _load_saved_model(path)
    if Path(str(path) + ".index").is_file():
        return _load_checkpoint(path)
    raise CheckpointError(
        f"{path}: not a run folder, checkpoint prefix, .keras file or SavedModel folder"
    )


def _exists(path: Path) -> bool:
    return path.exists() or Path(str(path) + ".index").is_file()


def _load_keras_file(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    # Keras answers "File not found" for any file that is not a zip (a truncated download, an .h5
    # renamed .keras): say what is actually wrong with the file
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a valid .keras archive (not a complete zip file: truncated, "
                              "still being written, or another format)")
    import keras

    import face_recognition_tf.models  # noqa: F401  (registers the custom layers for deserialisation)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise CheckpointError(f"{path}: cannot load Keras model ({type(exc).__name__}: {exc})") from exc


def _load_saved_model(path: Path):
    import keras

    try:
        layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load SavedModel ({type(exc).__name__}: {exc})") from exc
    return _SavedModelEmbedder(layer)


class _SavedModelEmbedder:
    """Calls a SavedModel's serving signature and returns its single output tensor."""

    def __init__(self, layer):
        self._layer = layer

    def __call__(self, images, training=False):
        return embedding_output(self._layer(images))


def read_backbone_spec(run_dir: Path) -> dict:
    spec_path = RunFolder(run_dir).backbone_spec
    try:
        spec = json.loads(spec_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{spec_path}: missing; cannot rebuild the architecture of this run") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{spec_path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{spec_path}: expected an object with at least a 'name' key")
    return spec


def build_backbone_from_spec(spec: dict):
    from face_recognition_tf.models import build_backbone

    kwargs = dict(spec)
    name = kwargs.pop("name")
    if isinstance(kwargs.get("input_shape"), list):
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    return build_backbone(name, **kwargs)


def _load_checkpoint(prefix: Path):
    """Rebuild the run's backbone and restore `prefix` into it; a CheckpointError if they do not fit.

    A restore that fails half-way (a shape mismatch raises in the middle) leaves TensorFlow's restore
    coordinator without `expect_partial`; when it is garbage collected it logs one "Value in checkpoint
    could not be found" warning per unrestored value (hundreds for a ResNet), burying the one-line
    error.  So on failure the model and checkpoint are dropped and collected with TensorFlow's
    warnings muted, and only then is the error raised, with no chained traceback keeping them alive.
    """
    import tensorflow as tf

    run = RunFolder.of_checkpoint(prefix)
    model = build_backbone_from_spec(read_backbone_spec(run.path))
    checkpoint = tf.train.Checkpoint(backbone=model)
    failure = restore_checkpoint(checkpoint, prefix, fits=f"the architecture in {run.backbone_spec}", partial=True)
    if failure is None:
        return model
    with _tensorflow_warnings_muted():
        del model, checkpoint
        gc.collect()
    raise failure


def restore_checkpoint(checkpoint, prefix, *, fits: str, partial: bool = False) -> CheckpointError | None:
    """Restore the checkpoint `prefix` into `checkpoint` (a tf.train.Checkpoint); None when it worked,
    else the one-line CheckpointError saying why: unreadable, or not fitting `fits` (what the objects
    were built from).  `partial`: the checkpoint may hold more than these objects (a training
    checkpoint restored into a backbone alone).

    The error is returned, not raised, and is built inside the `except` without the exception it
    translates: a caller can drop its half-restored objects (and the restore coordinator the
    traceback would keep alive) before raising it.  The one restore-and-translate of checkpoints:
    model loading and resuming a run both use it.
    """
    import tensorflow as tf

    try:
        status = checkpoint.restore(str(prefix))
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.NotFoundError, tf.errors.DataLossError) as exc:
        return CheckpointError(f"{prefix}: checkpoint unreadable ({_first_line(exc)})")
    except (ValueError, AssertionError) as exc:  # shape mismatch, or objects the checkpoint lacks
        return CheckpointError(f"{prefix}: checkpoint does not fit {fits} ({_first_line(exc)})")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _tensorflow_warnings_muted():
    """Raise the `tensorflow` Python logger to ERROR for the block (its restore warnings log there)."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
