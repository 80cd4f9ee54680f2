"""`frtf export MODEL OUT --format savedmodel|tflite|onnx`: the embedding model for deployment.

Every format exposes the same contract, so the preprocessing written once for training applies:

- input `images`: float32 (batch, 112, 112, 3), RGB, aligned crops normalised as (pixel - 127.5) / 128;
- output `embedding`: float32 (batch, D), not normalised unless `--l2-normalize`; the flip protocol
  (embedding of the crop plus its mirror) is left to the caller, as in insightface's exported models.

The SavedModel's `serving_default` signature has exactly that input and output, so `model_io` (and so
`frtf evaluate`, `FaceRecognizer`) load it back.  TFLite is converted from that SavedModel; ONNX uses
tf2onnx, an optional extra (`pip install 'face_recognition_tf[onnx]'`).  After writing, the export is
run on a test batch and compared with the source model (skip with `--no-check`).  Outputs are written
to a temporary name beside the target and renamed into place (`face_recognition_tf.atomic`), so a failed
export leaves nothing behind and the result carries the user's umask.

OUT says what it is, and must agree with `--format`: a folder name without a file suffix is a SavedModel,
`NAME.tflite` TFLite, `NAME.onnx` ONNX.  Anything else (`exported/ --format tflite`, `model.pt`) is
refused before any work, because a silent guess wrote a file named like a folder, or a folder named like
a PyTorch file.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from face_recognition_tf.atomic import check_writable_dir, dir_mode, replace_path, temporary_dir_beside
from face_recognition_tf.errors import CheckpointError, ConfigError, FaceRecognitionError, OutputError
from face_recognition_tf.model_io import embedding_output, model_image_size  # the one lookup / unwrapping

FORMATS = ("savedmodel", "tflite", "onnx")
# "ours": the contract above; "insightface": ONNX as insightface's model zoo loads a recognition model
# (input `data` float32 (N, 3, H, W) raw RGB pixels, normalisation inside the graph; pretrained/onnx_writer.py)
LAYOUTS = ("ours", "insightface")
QUANTIZATIONS = ("none", "float16", "dynamic")
INPUT_NAME, OUTPUT_NAME = "images", "embedding"
ONNX_INSTALL_HINT = "pip install 'face_recognition_tf[onnx]' (installs tf2onnx and onnx)"


_FILE_SUFFIXES = {".tflite": "tflite", ".onnx": "onnx"}
_OUT_FORMS = {"savedmodel": "a folder name without a file suffix", "tflite": "a file name ending in .tflite",
              "onnx": "a file name ending in .onnx"}
ACCEPTED_OUTS = "a folder name without suffix (SavedModel), NAME.tflite (TFLite) or NAME.onnx (ONNX)"


def infer_format(out) -> str:
    """The format of an existing export, read leniently from its suffix (see `output_format` for OUT)."""
    return _FILE_SUFFIXES.get(Path(out).suffix.lower(), "savedmodel")


def output_format(out, format: str | None = None) -> str:
    """The format OUT names, which an explicit `format` must agree with; ConfigError otherwise.

    A trailing slash or an existing folder names a folder (SavedModel) whatever dots the name holds.
    """
    text = os.fspath(out)
    path = Path(text)
    suffix = path.suffix.lower()
    is_folder = text.endswith(("/", os.sep)) or path.is_dir()
    if is_folder or not suffix:
        named = "savedmodel"  # a folder, even one called x.tflite: only a SavedModel can go there
    elif suffix in _FILE_SUFFIXES:
        named = _FILE_SUFFIXES[suffix]
    else:
        raise ConfigError(f"{text}: unknown export suffix {path.suffix!r}; OUT must be {ACCEPTED_OUTS}")
    if format is None:
        if is_folder and suffix in _FILE_SUFFIXES:
            raise ConfigError(f"{text}: is a folder, but {suffix} names a {_FILE_SUFFIXES[suffix]} file; "
                              f"OUT must be {ACCEPTED_OUTS}")
        return named
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if format != named:
        raise ConfigError(f"export format {format} needs OUT to be {_OUT_FORMS[format]}, got {text!r} "
                          f"(which names a {named} export); OUT must be {ACCEPTED_OUTS}")
    return format


def _input_spec(image_size: int):
    import tensorflow as tf

    return tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME)


def _serving_fn(model, l2_normalize: bool):
    """The deployment contract as a function of the normalised images (see the module docstring)."""
    import tensorflow as tf

    def serve(images):
        embedding = tf.cast(embedding_output(model(images, training=False)), tf.float32)
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


def tflite_interpreter(path, num_threads: int | None = None):
    """A TFLite interpreter for `path`: LiteRT's (`ai_edge_litert`, the maintained one) when installed.

    Otherwise TensorFlow's `tf.lite.Interpreter`, which still works in TF 2.21 but warns on every
    construction that it is deprecated; that one warning is silenced here, where we chose it knowingly,
    so exports and checks do not print a warning the user can do nothing about.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated",
                                    category=UserWarning)
            return tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
    return Interpreter(model_path=str(path), num_threads=num_threads)


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


def _apply_umask_to_folders(root: Path) -> None:
    """TensorFlow creates SavedModel folders 0755 whatever the umask; give them the mode `mkdir` would."""
    mode = dir_mode()
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.chmod(folder, mode)


def check_request(out, format: str | None, quantize: str, overwrite: bool, layout: str = "ours") -> str:
    """Refuse an impossible export before any slow work (loading the model); returns the format.

    Checks that OUT and `format` agree (see `output_format`), that the quantization applies, that OUT
    does not exist unless `overwrite`, that its folder can be written, and that tf2onnx is there for ONNX.
    """
    format = output_format(out, format)
    out = Path(out)
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANTIZATIONS)}")
    if quantize != "none" and format != "tflite":
        raise ConfigError(f"--quantize applies to TFLite exports only (format is {format})")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown export layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "insightface" and format != "onnx":
        raise ConfigError(f"--layout insightface is an ONNX layout; OUT must be NAME.onnx (got a {format} export)")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
    check_writable_dir(out.parent)
    if layout == "insightface":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise FaceRecognitionError(f"ONNX export needs onnx, which is not installed: {ONNX_INSTALL_HINT}") from None
    elif format == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise FaceRecognitionError(f"ONNX export needs tf2onnx, which is not installed: {ONNX_INSTALL_HINT}") from None
    return format


def export_model(model, out, format: str | None = None, *, quantize: str = "none", opset: int = 17,
                 l2_normalize: bool = False, overwrite: bool = False, layout: str = "ours") -> Path:
    """Export an embedding model (a path `model_io` loads, or a Keras model) to `out`; returns `out`."""
    format = check_request(out, format, quantize, overwrite, layout)
    out = Path(out)
    if isinstance(model, (str, Path)):
        from face_recognition_tf.model_io import load_embedding_model

        model = load_embedding_model(model)
    image_size = model_image_size(model)
    serve = _serving_fn(model, l2_normalize)
    work = temporary_dir_beside(out)
    try:
        saved = work / "saved_model"
        if format in ("savedmodel", "tflite"):
            _write_saved_model(model, serve, image_size, saved)
        if format == "savedmodel":
            _apply_umask_to_folders(saved)
            replace_path(saved, out, overwrite=overwrite)
        else:
            if layout == "insightface":
                if not hasattr(model, "layers"):
                    raise FaceRecognitionError("--layout insightface needs a Keras model (a run, checkpoint, "
                                               ".keras file or imported model folder), not a SavedModel")
                from face_recognition_tf.pretrained.onnx_writer import graph_bytes

                data = graph_bytes(model, opset=opset, l2_normalize=l2_normalize)
            elif format == "tflite":
                data = _tflite_bytes(saved, quantize)
            else:
                data = _onnx_bytes(serve, image_size, opset)
            tmp_file = work / "model.bin"
            tmp_file.write_bytes(data)  # a new file: 0666 less the umask, as the user expects
            replace_path(tmp_file, out, overwrite=overwrite)
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
        interpreter = tflite_interpreter(path)
        runner = interpreter.get_signature_runner("serving_default")
        return np.asarray(runner(**{INPUT_NAME: images})[OUTPUT_NAME])
    try:
        import onnxruntime
    except ImportError:
        raise FaceRecognitionError("checking an ONNX export needs onnxruntime (pip install onnxruntime)") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    if graph_input.shape[1] == 3:  # insightface layout: raw RGB pixels, channels first
        from face_recognition_tf.models.input_normalization import pixels_from_normalized

        images = pixels_from_normalized(images).transpose(0, 3, 1, 2)
    return np.asarray(session.run(None, {graph_input.name: images})[0])


def check_export(model, path, format: str | None = None, *, batch: int = 4, seed: int = 0,
                 l2_normalize: bool = False) -> float:
    """Largest absolute difference between the source model and its export on a random batch."""
    import tensorflow as tf

    if isinstance(model, (str, Path)):
        from face_recognition_tf.model_io import load_embedding_model

        model = load_embedding_model(model)
    from face_recognition_tf.models.input_normalization import normalize_pixels

    size = model_image_size(model)
    rng = np.random.default_rng(seed)
    images = normalize_pixels(rng.integers(0, 256, (batch, size, size, 3)))
    reference = np.asarray(embedding_output(model(tf.constant(images), training=False)), np.float32)
    if l2_normalize:
        reference = reference / np.maximum(np.linalg.norm(reference, axis=-1, keepdims=True), 1e-12)
    exported = run_exported(path, images, format)
    if exported.shape != reference.shape:
        raise CheckpointError(f"{path}: export returns shape {exported.shape}, the model {reference.shape}")
    return float(np.abs(exported - reference).max())


def configure_parser(parser) -> None:
    parser.description = (
        "Export the embedding model. Input `images` float32 (N,112,112,3) RGB normalised as (x-127.5)/128 "
        "(or, with --layout insightface, `data` (N,3,112,112) raw RGB pixels); output `embedding` float32 (N,D)."
    )
    parser.add_argument("model", metavar="MODEL",
                        help="run folder, imported model folder, checkpoint prefix, .keras file or SavedModel folder")
    parser.add_argument("out", metavar="OUT",
                        help="a folder name without suffix (SavedModel), NAME.tflite or NAME.onnx")
    parser.add_argument("--format", choices=FORMATS,
                        help="default: what OUT names; given, it must agree with OUT (tflite: NAME.tflite, "
                             "onnx: NAME.onnx, savedmodel: a folder name without suffix)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="TFLite only: float16 halves the file, dynamic stores int8 weights (default none)")
    parser.add_argument("--layout", choices=LAYOUTS, default="ours",
                        help="ONNX only: 'insightface' writes what insightface's model zoo loads (input 'data' "
                             "float32 (N,3,H,W) raw RGB pixels, the model's normalisation inside the graph)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--l2-normalize", action="store_true", help="normalise the embedding inside the exported graph")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-check", action="store_true", help="skip comparing the export with the source model")


def run(args) -> int:
    from face_recognition_tf.model_io import load_embedding_model

    format = check_request(args.out, args.format, args.quantize, args.overwrite, args.layout)
    model = load_embedding_model(args.model)
    out = export_model(model, args.out, format, quantize=args.quantize, opset=args.opset,
                       l2_normalize=args.l2_normalize, overwrite=args.overwrite, layout=args.layout)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    side = model_image_size(model)
    if args.layout == "insightface":
        from face_recognition_tf.pretrained.onnx_writer import INPUT_NAME as DATA

        shape = f"input '{DATA}' float32 (N,3,{side},{side}) raw RGB pixels"
    else:
        shape = f"input '{INPUT_NAME}' float32 (N,{side},{side},3)"
    print(f"wrote {format} export to {out} ({size / 1e6:.1f} MB): {shape}, output '{OUTPUT_NAME}'")
    if not args.no_check:
        try:
            diff = check_export(model, out, format, l2_normalize=args.l2_normalize)
        except FaceRecognitionError as exc:
            print(f"check skipped: {exc}")
        else:
            print(f"check: max |export - model| = {diff:.2e} on a random batch")
    return 0
