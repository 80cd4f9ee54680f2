"""`frtf export MODEL OUT --format savedmodel|tflite|onnx`: the embedding model for deployment.

Every format exposes the same contract, so the preprocessing written once for training applies:

- input `images`: float32 (batch, 112, 112, 3), RGB, aligned crops normalised as (pixel - 127.5) / 128;
- output `embedding`: float32 (batch, D), not normalised unless `--l2-normalize`; the flip protocol
  (embedding of the crop plus its mirror) is left to the caller, as in insightface's exported models.

The SavedModel's `serving_default` signature has exactly that input and output, so `model_io` (and so
`frtf evaluate`, `FaceRecognizer`) load it back.  TFLite is converted from that SavedModel; ONNX uses
tf2onnx, an optional extra (`pip install 'face_recognition_tf[onnx]'`).  After writing, the export is
run on a test batch and compared with the source model (skip with `--no-check`).  Outputs are written
to a temporary name beside the target and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import CheckpointError, ConfigError, FaceRecognitionError

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic")
INPUT_NAME, OUTPUT_NAME = "images", "embedding"
ONNX_INSTALL_HINT = "pip install 'face_recognition_tf[onnx]' (installs tf2onnx and onnx)"


def infer_format(out) -> str:
    suffix = Path(out).suffix.lower()
    return {".tflite": "tflite", ".onnx": "onnx"}.get(suffix, "savedmodel")


def _image_size(model) -> int:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return 112


def _input_spec(image_size: int):
    import tensorflow as tf

    return tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME)


def _serving_fn(model, l2_normalize: bool):
    """The deployment contract as a function of the normalised images (see the module docstring)."""
    import tensorflow as tf

    def serve(images):
        outputs = model(images, training=False)
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        embedding = tf.cast(outputs, tf.float32)
        if l2_normalize:
            embedding = tf.math.l2_normalize(embedding, axis=-1)
        return {OUTPUT_NAME: embedding}

    return serve


def _write_saved_model(model, serve, image_size: int, folder: Path) -> None:
    """Write through Keras' ExportArchive, which tracks a Keras 3 model's variables the way the TFLite
    converter expects (a plain `tf.Module` holding the model saves and reloads, but its TFLite
    conversion keeps the weights as uninitialised variables and returns NaN)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(getattr(model, "_layer", model))  # model_io wraps a loaded SavedModel in a layer
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=[_input_spec(image_size)])
    archive.write_out(str(folder), verbose=False)


def _tflite_bytes(saved_model_dir: Path, quantize: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    if quantize in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and friends with long logs
        raise FaceRecognitionError(f"TFLite conversion failed: {str(exc).strip().splitlines()[0]}") from None


def _onnx_bytes(serve, image_size: int, opset: int) -> bytes:
    try:
        import tf2onnx
    except ImportError:
        raise FaceRecognitionError(f"ONNX export needs tf2onnx, which is not installed: {ONNX_INSTALL_HINT}") from None
    import tensorflow as tf

    spec = (_input_spec(image_size),)
    try:
        function = tf.function(serve, input_signature=spec, autograph=False)
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    except Exception as exc:
        raise FaceRecognitionError(f"ONNX conversion failed: {str(exc).strip().splitlines()[0]}") from None
    _rename_onnx_io(proto)
    return proto.SerializeToString()


def _rename_onnx_io(proto) -> None:
    """tf2onnx names tensors after the TF graph (`images:0`, `Identity:0`); give them the contract's names."""
    graph = proto.graph
    renames = {}
    if len(graph.input) == 1:
        renames[graph.input[0].name] = INPUT_NAME
    if len(graph.output) == 1:
        renames[graph.output[0].name] = OUTPUT_NAME
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


def _replace_path(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a finished export into place; with `overwrite` the previous one is removed only afterwards."""
    if out.exists() and not overwrite:
        raise FaceRecognitionError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.is_dir():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def check_request(out: Path, format: str | None, quantize: str, overwrite: bool) -> str:
    """Refuse an impossible export before any slow work; returns the format."""
    format = format or infer_format(out)
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANTIZATIONS)}")
    if quantize != "none" and format != "tflite":
        raise ConfigError(f"--quantize applies to TFLite exports only (format is {format})")
    if out.exists() and not overwrite:
        raise FaceRecognitionError(f"{out}: already exists (pass --overwrite to replace it)")
    if format == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise FaceRecognitionError(f"ONNX export needs tf2onnx, which is not installed: {ONNX_INSTALL_HINT}") from None
    return format


def export_model(model, out, format: str | None = None, *, quantize: str = "none", opset: int = 17,
                 l2_normalize: bool = False, overwrite: bool = False) -> Path:
    """Export an embedding model (a path `model_io` loads, or a Keras model) to `out`; returns `out`."""
    out = Path(out)
    format = check_request(out, format, quantize, overwrite)
    if isinstance(model, (str, Path)):
        from face_recognition_tf.model_io import load_embedding_model

        model = load_embedding_model(model)
    image_size = _image_size(model)
    serve = _serving_fn(model, l2_normalize)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        saved = work / "saved_model"
        if format in ("savedmodel", "tflite"):
            _write_saved_model(model, serve, image_size, saved)
        if format == "savedmodel":
            _replace_path(saved, out, overwrite)
        else:
            data = _tflite_bytes(saved, quantize) if format == "tflite" else _onnx_bytes(serve, image_size, opset)
            tmp_file = work / "model.bin"
            tmp_file.write_bytes(data)
            _replace_path(tmp_file, out, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_exported(path, images: np.ndarray, format: str | None = None) -> np.ndarray:
    """Embeddings from an exported model (SavedModel, TFLite, or ONNX through onnxruntime)."""
    path = Path(path)
    format = format or ("savedmodel" if path.is_dir() else infer_format(path))
    images = np.asarray(images, np.float32)
    if format == "savedmodel":
        from face_recognition_tf.model_io import load_embedding_model

        return np.asarray(load_embedding_model(path)(images))
    if format == "tflite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner("serving_default")
        return np.asarray(runner(**{INPUT_NAME: images})[OUTPUT_NAME])
    try:
        import onnxruntime
    except ImportError:
        raise FaceRecognitionError("checking an ONNX export needs onnxruntime (pip install onnxruntime)") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])


def check_export(model, path, format: str | None = None, *, batch: int = 4, seed: int = 0,
                 l2_normalize: bool = False) -> float:
    """Largest absolute difference between the source model and its export on a random batch."""
    import tensorflow as tf

    if isinstance(model, (str, Path)):
        from face_recognition_tf.model_io import load_embedding_model

        model = load_embedding_model(model)
    size = _image_size(model)
    rng = np.random.default_rng(seed)
    images = ((rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32)) - 127.5) / 128.0
    reference = model(tf.constant(images), training=False)
    if isinstance(reference, dict):
        reference = next(iter(reference.values()))
    reference = np.asarray(reference, np.float32)
    if l2_normalize:
        reference = reference / np.maximum(np.linalg.norm(reference, axis=-1, keepdims=True), 1e-12)
    exported = run_exported(path, images, format)
    if exported.shape != reference.shape:
        raise CheckpointError(f"{path}: export returns shape {exported.shape}, the model {reference.shape}")
    return float(np.abs(exported - reference).max())


def configure_parser(parser) -> None:
    parser.description = (
        "Export the embedding model. Input `images` float32 (N,112,112,3) RGB normalised as (x-127.5)/128; "
        "output `embedding` float32 (N,D)."
    )
    parser.add_argument("model", metavar="MODEL", help="run folder, checkpoint prefix, .keras file or SavedModel folder")
    parser.add_argument("out", metavar="OUT", help="output folder (SavedModel) or file (.tflite, .onnx)")
    parser.add_argument("--format", choices=FORMATS, help="default: from OUT's suffix (.tflite, .onnx, else savedmodel)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="TFLite only: float16 halves the file, dynamic stores int8 weights (default none)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--l2-normalize", action="store_true", help="normalise the embedding inside the exported graph")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-check", action="store_true", help="skip comparing the export with the source model")


def run(args) -> int:
    from face_recognition_tf.model_io import load_embedding_model

    format = check_request(Path(args.out), args.format, args.quantize, args.overwrite)
    model = load_embedding_model(args.model)
    out = export_model(model, args.out, format, quantize=args.quantize, opset=args.opset,
                       l2_normalize=args.l2_normalize, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    print(f"wrote {format} export to {out} ({size / 1e6:.1f} MB): input '{INPUT_NAME}' float32 "
          f"(N,{_image_size(model)},{_image_size(model)},3), output '{OUTPUT_NAME}'")
    if not args.no_check:
        try:
            diff = check_export(model, out, format, l2_normalize=args.l2_normalize)
        except FaceRecognitionError as exc:
            print(f"check skipped: {exc}")
        else:
            print(f"check: max |export - model| = {diff:.2e} on a random batch")
    return 0
