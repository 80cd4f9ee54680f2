"""`frtf embed`, `frtf verify` and `frtf identify`: the model on the user's own photos.

One module serves the three commands (they share the model, detector and protocol options); it reads
`parser.prog` ("frtf verify") to know which one it is configuring.  Errors a user can cause (missing
file, unreadable image, no face) raise FaceRecognitionError, which the dispatcher prints as one line
naming the file, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMMAND_NAMES = ("embed", "verify", "identify")


def _command(prog: str) -> str:
    name = prog.split()[-1] if prog else ""
    if name not in COMMAND_NAMES:
        raise ValueError(f"inference_cli serves {COMMAND_NAMES}, not {prog!r}")
    return name


def configure_parser(parser: argparse.ArgumentParser) -> None:
    command = _command(parser.prog)
    parser.set_defaults(inference_command=command)
    parser.add_argument("model", metavar="MODEL",
                        help="run folder, checkpoint prefix (RUN/checkpoints/ckpt-N), .keras file or SavedModel folder")
    if command == "embed":
        parser.description = "Embed the main face of each photo; writes an .npz with `embeddings` (N, D) and `paths`."
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos, or folders searched recursively")
        parser.add_argument("--out", required=True, help="output .npz file")
        parser.add_argument("--skip-errors", action="store_true",
                            help="skip unreadable photos and photos without a face (listed on stderr) instead of failing")
    elif command == "verify":
        parser.description = "Say whether two photos show the same person (prints similarity and SAME/DIFFERENT)."
        parser.add_argument("image_a", metavar="A", help="photo (an aligned 112x112 crop needs --aligned)")
        parser.add_argument("image_b", metavar="B", help="photo (an aligned 112x112 crop needs --aligned)")
    else:
        parser.description = "Rank the gallery identities closest to the face in a photo."
        parser.add_argument("image", metavar="IMAGE", help="photo of the person to identify")
        parser.add_argument("--gallery", required=True,
                            help="folder of identity sub-folders (GALLERY/NAME/*.jpg) or an .npz saved with --save-gallery")
        parser.add_argument("--top-k", type=int, default=5, help="identities to list (default 5)")
        parser.add_argument("--save-gallery", metavar="NPZ",
                            help="save the gallery built from a folder, to reuse it without re-embedding")
    if command in ("verify", "identify"):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--threshold", type=float,
                           help="cosine-similarity threshold for SAME / a match (default: the one `frtf calibrate` "
                                "stored with the model, else 0.3)")
        group.add_argument("--distance-threshold", type=float,
                           help="threshold as a squared L2 distance between normalised embeddings, e.g. "
                                "`threshold_mean` in `frtf evaluate`'s results.json (similarity = 1 - distance/2)")
        group.add_argument("--threshold-from", metavar="RESULTS_JSON",
                           help="use the threshold `frtf evaluate` found (its results.json; see --target, "
                                "--checkpoint) or a threshold.json from `frtf calibrate --out`")
        parser.add_argument("--target", help="with --threshold-from: the pair set whose threshold to use (default lfw)")
        parser.add_argument("--checkpoint", help="with --threshold-from: the checkpoint's name, if the file holds several")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--aligned", action="store_true",
                        help="every photo is already an aligned 112x112 crop (insightface's layout): skip face "
                             "detection. Without it every photo, 112x112 ones too, goes through MTCNN, and a photo "
                             "without a detectable face is an error")
    parser.add_argument("--no-flip", action="store_true",
                        help="do not add the horizontally flipped crop's embedding (the default matches `frtf evaluate`)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-face-size", type=int, default=20, help="smallest face MTCNN looks for, pixels")
    parser.add_argument("--pick", choices=("largest", "confident", "center"), default="largest",
                        help="which face to use when a photo holds several (default: largest)")


def _recognizer(args):
    import warnings

    from face_recognition_tf.inference import FaceRecognizer, threshold_from_results

    threshold = getattr(args, "threshold", None)
    if getattr(args, "threshold_from", None):
        threshold = threshold_from_results(args.threshold_from, args.target, args.checkpoint)
    with warnings.catch_warnings(record=True) as caught:  # a stale calibration is said once, as a note line
        warnings.simplefilter("always")
        recognizer = _build_recognizer(FaceRecognizer, args, threshold)
    for warning in caught:
        if str(warning.message) != recognizer.threshold_note:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if getattr(args, "threshold_from", None):
        recognizer.threshold_source = f"from {args.threshold_from}"
    if recognizer.threshold_note:
        name = getattr(args, "inference_command", None) or getattr(args, "command", "")
        print(f"frtf {name}: note: {recognizer.threshold_note}", file=sys.stderr)
    return recognizer


def threshold_text(recognizer) -> str:
    """'threshold 0.4120 (calibrated at FAR 0.001, RUN/threshold.json)': the value and where it came from."""
    return f"threshold {recognizer.threshold:.4f} ({recognizer.threshold_source})"


def _build_recognizer(FaceRecognizer, args, threshold):
    return FaceRecognizer(
        args.model,
        detector=None if args.aligned else "mtcnn",
        flip=not args.no_flip,
        batch_size=args.batch_size,
        threshold=threshold,
        distance_threshold=getattr(args, "distance_threshold", None),
        pick=args.pick,
        min_face_size=args.min_face_size,
    )


def _expand_images(entries: list[str]) -> list[Path]:
    from face_recognition_tf.errors import DatasetError
    from face_recognition_tf.faces.detect import list_images

    paths: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DatasetError(f"{path}: folder holds no image (.jpg, .png, ...)")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise DatasetError(f"{path}: image file not found")
    return list(dict.fromkeys(paths))


def _require_inputs(images=(), gallery=None) -> None:
    """Fail on a missing photo or gallery before paying for TensorFlow and the model."""
    from face_recognition_tf.errors import DatasetError

    for path in images:
        if not Path(path).exists():
            raise DatasetError(f"{path}: image file not found")
    if gallery is not None and not Path(gallery).exists():
        raise DatasetError(f"{gallery}: gallery not found (expected a folder of identity sub-folders or an .npz)")


def _npz_path(path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _check_output_file(path: Path) -> Path:
    """Fail on an output that cannot be written before the model is loaded and the photos embedded."""
    from face_recognition_tf.atomic import check_writable_dir
    from face_recognition_tf.errors import OutputError

    if path.is_dir():
        raise OutputError(f"{path}: is a folder; a file is needed here")
    check_writable_dir(path.parent)
    return path


def _run_embed(args) -> int:
    import numpy as np

    from face_recognition_tf.atomic import atomic_file

    out = _check_output_file(_npz_path(args.out))
    paths = _expand_images(args.images)
    recognizer = _recognizer(args)
    embeddings, kept, failures = recognizer.embed_many(
        paths, aligned=True if args.aligned else None, skip_errors=args.skip_errors, progress=len(paths) > 20
    )
    for _, message in failures:
        print(f"frtf embed: skipped {message}", file=sys.stderr)
    if not kept:
        from face_recognition_tf.errors import FaceRecognitionError

        raise FaceRecognitionError(f"no face could be embedded from {len(paths)} photo(s); nothing written")
    with atomic_file(out, "wb") as handle:
        np.savez(
            handle,
            embeddings=embeddings.astype(np.float32),
            paths=np.asarray([str(paths[i]) for i in kept], dtype=str),
            model=np.asarray(recognizer.model_name, dtype=str),
            flip=np.bool_(recognizer.flip),
        )
    print(f"wrote {len(kept)} embedding(s) of dimension {embeddings.shape[1]} to {out}"
          + (f" ({len(failures)} photo(s) skipped)" if failures else ""))
    return 0


def _run_verify(args) -> int:
    _require_inputs([args.image_a, args.image_b])
    recognizer = _recognizer(args)
    aligned = True if args.aligned else None
    result = recognizer.verify(args.image_a, args.image_b, aligned=aligned)
    verdict = "SAME" if result.same else "DIFFERENT"
    if args.json:
        print(json.dumps({"a": args.image_a, "b": args.image_b, "similarity": result.similarity,
                          "distance": result.distance, "threshold": result.threshold,
                          "threshold_source": recognizer.threshold_source, "same": result.same}))
    else:
        print(f"similarity {result.similarity:.4f} (squared L2 distance {result.distance:.4f}), "
              f"{threshold_text(recognizer)}: {verdict}")
    return 0


def _run_identify(args) -> int:
    _require_inputs([args.image], args.gallery)
    if args.save_gallery:
        _check_output_file(_npz_path(args.save_gallery))
    recognizer = _recognizer(args)
    aligned = True if args.aligned else None
    # the library's per-photo warnings are off: this command lists gallery.skipped itself, once
    gallery = recognizer.load_gallery(args.gallery, aligned=aligned, warn=False)
    for source, message in gallery.skipped:
        print(f"frtf identify: gallery: skipped {message}", file=sys.stderr)
    if args.save_gallery:
        saved = gallery.save(args.save_gallery)
        print(f"saved gallery ({len(gallery)} identities) to {saved}", file=sys.stderr)
    matches = recognizer.identify(args.image, gallery, top_k=args.top_k, aligned=aligned)
    if args.json:
        print(json.dumps({"image": args.image, "threshold": recognizer.threshold,
                          "threshold_source": recognizer.threshold_source,
                          "identity": matches[0].name if matches[0].accepted else None,
                          "matches": [{"name": m.name, "similarity": m.similarity, "accepted": m.accepted}
                                      for m in matches]}))
        return 0
    best = matches[0]
    if best.accepted:
        print(f"{best.name} (similarity {best.similarity:.4f} >= {threshold_text(recognizer)})")
    else:
        print(f"UNKNOWN: no gallery identity reaches {threshold_text(recognizer)} "
              f"(closest: {best.name}, similarity {best.similarity:.4f})")
    width = max(len(m.name) for m in matches)
    for rank, match in enumerate(matches, 1):
        print(f"  {rank}. {match.name:<{width}}  {match.similarity:.4f}{'  match' if match.accepted else ''}")
    return 0


def run(args) -> int:
    command = getattr(args, "inference_command", None) or getattr(args, "command", None)
    if args.batch_size < 1:
        from face_recognition_tf.errors import ConfigError

        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    return {"embed": _run_embed, "verify": _run_verify, "identify": _run_identify}[command](args)
