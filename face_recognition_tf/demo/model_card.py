"""The demo's Model tab: which model answers, and the settings that decide its answers.

Why show this: a similarity of 0.41 means nothing without the model, its threshold and where that
threshold came from; and "it does not recognise me" is often a wrong model folder, an untrained
quickstart model, or a model fed the wrong normalisation.  Everything here is read from the files the
model came with (`backbone.json`, `model.json` of an imported model, the run's checkpoints) and from
the loaded recognizer, never guessed from names.
"""

from __future__ import annotations

from pathlib import Path

from face_recognition_tf import model_io
from face_recognition_tf.run_folder import RunFolder

# backbone.json keys worth showing beside the architecture name, with the value that goes unsaid
_ARCH_OPTIONS = {"normalization": "batch", "width_multiplier": 1.0, "blocks": None, "scale": None,
                 "model_name": None}


def _spec_folder(path: Path) -> Path | None:
    """The folder whose backbone.json describes MODEL: the model folder itself, the run of a
    checkpoint (RUN/checkpoints/ckpt-N) or of a .keras file (RUN/embedding.keras, RUN/best/...)."""
    candidates = [path] if path.is_dir() else []
    if RunFolder.is_checkpoint_prefix(path):
        candidates.append(RunFolder.of_checkpoint(path).path)
    if path.suffix == ".keras":
        candidates += [path.parent, path.parent.parent]
    return next((c for c in candidates if RunFolder.is_run_folder(c)), None)


def loaded_weights(path: Path) -> str:
    """The file whose weights are in use: a run folder loads its latest checkpoint."""
    if RunFolder.is_run_folder(path):
        checkpoints = RunFolder(path).checkpoints(newest_first=True)
        if checkpoints:
            return f"{checkpoints[0]} (latest of {len(checkpoints)} checkpoint(s))"
        return str(RunFolder(path).final_model)
    return str(path)


def architecture(spec: dict | None, model) -> str:
    if not spec:
        return f"{type(model).__name__} {getattr(model, 'name', '')} (no backbone.json beside it)".strip()
    extras = [f"{key} {spec[key]}" for key, default in _ARCH_OPTIONS.items()
              if spec.get(key) is not None and spec.get(key) != default]
    return spec["name"] + (f" ({', '.join(extras)})" if extras else "")


def normalisation(spec: dict | None) -> str:
    from face_recognition_tf.models import input_normalization as norm

    ours = norm.describe(norm.MODEL_INPUT_MEAN, norm.MODEL_INPUT_STD)
    mean, std = (spec or {}).get("input_mean"), (spec or {}).get("input_std")
    if mean is None or std is None or norm.is_standard(mean, std):
        return f"{ours} (this package's own)"
    return (f"{norm.describe(mean, std)}: what its weights were trained on; its first layer converts the "
            f"{ours} every command feeds it")


def source(folder: Path | None, path: Path) -> str:
    from face_recognition_tf.pretrained.importer import read_model_info

    info = read_model_info(folder) if folder is not None else None
    if info:
        src = info.get("source", {})
        parity = info.get("parity", {})
        text = f"imported with `frtf import` from {src.get('file', '?')} ({src.get('format', '?')}"
        text += f", opset {src['opset']}" if src.get("opset") else ""
        text += f", sha256 {str(src.get('sha256', ''))[:16]}...)" if src.get("sha256") else ")"
        if parity.get("max_abs_diff") is not None:
            text += f"; matches {parity.get('reference')} to {parity['max_abs_diff']:.1e}"
        return text
    if folder is not None and RunFolder(folder).config.is_file():
        return f"trained with `frtf train` (config: {RunFolder(folder).config})"
    if (path / "saved_model.pb").is_file():
        return "a SavedModel export"
    return "a model file (no record of where it came from)"


def model_facts(model_path, recognizer, *, embedding_size: int, gallery=None) -> list[tuple[str, str]]:
    """(what, value) rows for the Model tab; `gallery` an `EnrolledPeople` (or None)."""
    path = Path(model_path)
    folder = _spec_folder(path)
    spec = None
    if folder is not None:
        try:
            spec = model_io.read_backbone_spec(folder)
        except Exception:  # the model loaded without it (a .keras file): show what is known
            spec = None
    detector = recognizer.detector
    rows = [
        ("model", f"{path.resolve()} ({recognizer.model_name})"),
        ("weights in use", loaded_weights(path)),
        ("architecture", architecture(spec, recognizer.model)),
        ("embedding size", f"{embedding_size}-D, L2-normalised"),
        ("input", f"{recognizer.image_size}x{recognizer.image_size} RGB face, aligned on MTCNN's five landmarks"),
        ("input normalisation", normalisation(spec)),
        ("source", source(folder, path)),
        ("threshold", f"{recognizer.threshold:.4f} cosine similarity ({recognizer.threshold_source})"),
        ("comparison", "cosine similarity of the embeddings of the face"
                       + (" plus its mirror image (insightface's protocol)" if recognizer.flip else "")),
    ]
    if detector is not None:
        rows.append(("face detector", f"MTCNN, faces of {detector.min_face_size} px and up, photos over "
                                      f"{detector.max_size} px searched on a reduced copy; "
                                      f"the {detector.pick} face of a photo is the one compared"))
    if gallery is not None:
        count = len(gallery)
        rows.append(("enrolled people", f"{count} {'person' if count == 1 else 'people'} ({gallery.photos()} "
                                        f"photo(s)) in {gallery.path}"))
    return rows


def facts_markdown(rows) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| **{what}** | {str(value).replace('|', '/')} |" for what, value in rows]
    return "\n".join(lines)
