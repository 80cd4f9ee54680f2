"""``frtf import SRC OUT``: an insightface / arcface_torch model becomes one of ours, proven equal.

The file is read (ONNX graph or PyTorch state dict), its architecture recognised, our backbone built
with the file's numbers (PyTorch's BN epsilon, the input normalisation the model was trained on), the
weights loaded exactly, and then, before anything is written, our embeddings of a random batch are
compared with the original's (onnxruntime on the ONNX file; PyTorch on the state dict when torch is
installed).  OUT is a model folder like a run folder (``backbone.json`` + ``embedding.keras``, plus
``model.json`` saying where it came from and what was measured), written to a temporary folder and
renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from face_recognition_tf import atomic
from face_recognition_tf.data.records.tfrecord import file_sha256
from face_recognition_tf.errors import PretrainedModelError
from face_recognition_tf.models import input_normalization as norm
from face_recognition_tf.run_folder import RunFolder

PARITY_TOLERANCE = 1e-4
PARITY_BATCH = 4
# insightface's convention for its ONNX / PyTorch models (arcface_torch trains on it)
INSIGHTFACE_MEAN = 127.5
INSIGHTFACE_STD = 127.5
INFO_FILE = "model.json"
PYTORCH_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".tar")


def _fail(path, message):
    raise PretrainedModelError(f"{path}: {message}")


def source_format(path: Path) -> str:
    """"onnx" or "pytorch", by suffix, else by content (a zip is a PyTorch file)."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in PYTORCH_SUFFIXES:
        return "pytorch"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        _fail(path, "file not found")
    except OSError as exc:
        _fail(path, f"cannot read ({exc.strerror})")
    return "pytorch" if head[:2] in (b"PK", b"\x80\x02") else "onnx"


def _compose(outer, inner):
    """The graph input is (x - m1) / s1 and the graph then computes (g - m2) / s2 itself: together
    (x - (m1 + m2 s1)) / (s1 s2)."""
    m1, s1, m2, s2 = (np.broadcast_to(np.asarray(v, dtype=float), (3,)) for v in (*outer, *inner))
    return _compact(m1 + m2 * s1), _compact(s1 * s2)


def _compact(values):
    values = [float(v) for v in np.atleast_1d(values)]
    return values[0] if len(set(values)) == 1 else values


def _read(path: Path, fmt: str):
    """(ops, spec, facts) for either format."""
    if fmt == "onnx":
        from face_recognition_tf.pretrained.onnx_reader import read_onnx
        from face_recognition_tf.pretrained.recognise import recognise_onnx

        ops, facts = read_onnx(path)
        spec = recognise_onnx(path, ops, facts)
        return ops, spec, facts
    from face_recognition_tf.pretrained.state_dict_reader import read_pytorch

    return read_pytorch(path)


def _graph_input_normalisation(fmt, facts, input_mean, input_std):
    """(what the file's input expects, what the whole model expects, where that came from)."""
    stated = input_mean is not None or input_std is not None
    inner = facts.get("normalisation") if fmt == "onnx" else None
    if stated:
        outer = (INSIGHTFACE_MEAN if input_mean is None else input_mean,
                 INSIGHTFACE_STD if input_std is None else input_std)
        source = "stated with --input-mean/--input-std"
    elif inner is not None:
        outer = (0.0, 1.0)  # the graph normalises raw pixels itself (MXNet-converted models)
        source = "computed by the graph itself (Sub/Mul on its input)"
    else:
        outer = (INSIGHTFACE_MEAN, INSIGHTFACE_STD)
        source = "insightface's convention (x - 127.5) / 127.5"
    total = _compose(outer, inner) if inner is not None else (_compact(outer[0]), _compact(outer[1]))
    return outer, total, source


def _random_batch(side: int) -> np.ndarray:
    rng = np.random.default_rng(20190)
    # smooth random images: noise alone sits far from faces and saturates few units
    low = rng.integers(0, 256, (PARITY_BATCH, side // 8, side // 8, 3)).astype(np.float32)
    images = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)
    images += rng.normal(0, 20, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def _l2(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _reference_embeddings(path, fmt, images, outer, spec):
    """The original's embeddings of ``images`` and what computed them, or (None, reason)."""
    mean = np.asarray(outer[0], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(outer[1], np.float32).reshape(1, -1, 1, 1)
    nchw = (images.astype(np.float32).transpose(0, 3, 1, 2) - mean) / std
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return None, "onnxruntime is not installed"
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            outputs = [session.run(None, {name: nchw[i:i + 1]})[0] for i in range(len(nchw))]
        except Exception as exc:
            _fail(path, f"onnxruntime cannot run this model ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return np.concatenate(outputs).reshape(len(nchw), -1), f"onnxruntime {onnxruntime.__version__}"
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed (pip install torch to check a .pth import against it)"
    from face_recognition_tf.pretrained.torch_models import build_torch_model
    from face_recognition_tf.pretrained.torch_pickle import read_state_dict

    module = build_torch_model(spec)
    state = {k: torch.from_numpy(np.array(v)) for k, v in read_state_dict(path).items()}
    module.load_state_dict(state, strict=True)
    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(nchw)).numpy()
    return out, f"PyTorch {torch.__version__}"


def import_model(src, out, *, input_mean=None, input_std=None, name=None, embedding_size=None,
                 progress=None) -> dict:
    """Import ``src`` (ONNX / PyTorch state dict) into the model folder ``out``; returns the report
    (also written to ``out/model.json``).  ``input_mean`` / ``input_std`` state the normalisation the
    file's input expects when the file cannot; ``embedding_size`` refuses a model of another size."""
    src, out = Path(src), Path(out)
    say = progress or (lambda message: None)
    if out.exists():
        raise PretrainedModelError(f"{out}: already exists; choose a new folder for the imported model")
    if not src.is_file():
        _fail(src, "file not found" if not src.exists() else "not a file")
    atomic.check_writable_dir(out.parent if str(out.parent) else Path("."))
    fmt = source_format(src)
    say(f"reading {src} ({'ONNX' if fmt == 'onnx' else 'PyTorch state dict'})")
    ops, spec, facts = _read(src, fmt)
    if embedding_size is not None and int(embedding_size) != spec["embedding_size"]:
        _fail(src, f"gives {spec['embedding_size']}-D embeddings, {int(embedding_size)}-D were expected")
    outer, (mean, std), norm_source = _graph_input_normalisation(fmt, facts, input_mean, input_std)
    spec = {**spec, "input_mean": mean, "input_std": std}
    if name:
        spec["model_name"] = str(name)
    arch = spec["name"] if spec["name"] != "mobilefacenet" else \
        f"mobilefacenet (blocks {tuple(spec['blocks'])}, scale {spec['scale']})"
    say(f"recognised {arch}, {spec['embedding_size']}-D, input {norm.describe(mean, std)} ({norm_source})")

    from face_recognition_tf.model_io import build_backbone_from_spec
    from face_recognition_tf.pretrained.weights import load_ops

    model = build_backbone_from_spec(spec)
    counts = load_ops(src, model, ops)

    side = int(spec["input_shape"][0])
    images = _random_batch(side)
    ours = np.asarray(model(norm.normalize_pixels(images), training=False))
    reference, checked_with = _reference_embeddings(src, fmt, images, outer, spec)
    parity = {"reference": checked_with, "batch": PARITY_BATCH, "tolerance": PARITY_TOLERANCE,
              "max_abs_diff": None}
    if reference is not None:
        if reference.shape != ours.shape:
            _fail(src, f"the original gives embeddings of shape {reference.shape[1:]}, ours {ours.shape[1:]}")
        diff = float(np.max(np.abs(_l2(ours) - _l2(reference))))
        parity["max_abs_diff"] = diff
        if not diff <= PARITY_TOLERANCE:
            _fail(src, f"imported model differs from the original ({checked_with}): max |difference| of "
                       f"L2-normalised embeddings {diff:.2e} > {PARITY_TOLERANCE:g}; nothing was written")
        say(f"parity with {checked_with}: max |difference| {diff:.2e} on {PARITY_BATCH} images")
    else:
        say(f"parity not checked: {checked_with}")

    report = {
        "kind": "imported model",
        "name": name or src.stem,
        "architecture": spec["name"],
        "backbone": spec,
        "input_normalization": {"mean": mean, "std": std, "formula": norm.describe(mean, std),
                                "source": norm_source},
        "source": {"file": src.name, "path": str(src.resolve()), "sha256": file_sha256(src), "format": fmt,
                   **{k: facts[k] for k in ("opset", "producer") if facts.get(k)}},
        "parity": parity,
        "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **counts,
    }
    work = atomic.temporary_dir_beside(out)
    try:
        folder = RunFolder(work)  # a model folder: the run folder's names, so every command reads it
        model.save(folder.final_model)
        atomic.write_json(folder.backbone_spec, spec)
        atomic.write_json(work / INFO_FILE, report)
        atomic.replace_path(work, out, overwrite=False)
    except BaseException:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return report


def read_model_info(folder) -> dict | None:
    """``model.json`` of an imported model folder, or None for other folders."""
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedModelError(f"{path}: unreadable ({exc})") from None
