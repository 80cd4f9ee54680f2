"""`frtf calibrate MODEL PAIRS.bin --far 1e-3`: a threshold that means something, stored with the model.

A cosine threshold is only meaningful for one model and one kind of photo: 0.3 may be strict for one
network and lax for another.  What a user can reason about is the false-accept rate ("one stranger in a
thousand is let in"), so this finds, on the user's own pairs, the lowest threshold whose false-accept
rate on the different-person pairs is at most FAR (and reports the true-accept rate there, and the
best-accuracy threshold beside it).  It is written as `threshold.json` next to the model it was
measured on, with the model's fingerprint, so `FaceRecognizer`, `frtf verify`, `frtf identify`,
`frtf report` and the demo pick it up by default, and ignore it, with a warning, once the model has
changed (a new checkpoint, a re-import).

Scores are the cosine similarity of L2-normalised embeddings of image + horizontal flip (the
protocol of `frtf evaluate` and `FaceRecognizer`), so the threshold applies unchanged at inference.
Among the thresholds with the same counts on these pairs the midpoint between the two scores that
bound them is taken: the same decisions here, the widest margin for photos not seen yet.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from face_recognition_tf.data.records.tfrecord import file_sha256
from face_recognition_tf.errors import CheckpointError, ConfigError, DatasetError
from face_recognition_tf.run_folder import RunFolder

FORMAT_VERSION = 1
DEFAULT_FAR = 1e-3


# ------------------------------------------------------------------------------- thresholds (numpy)
def pair_cosines(embeddings, flip_embeddings=None) -> np.ndarray:
    """Cosine similarity per pair of rows `[a0, b0, a1, b1, ...]` after flip-summing and normalising."""
    emb = np.asarray(embeddings, np.float64)
    if flip_embeddings is not None:
        emb = emb + np.asarray(flip_embeddings, np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return np.clip(np.einsum("ij,ij->i", emb[0::2], emb[1::2]), -1.0, 1.0)


def _check_pairs(scores, issame, where: str):
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    if scores.shape != issame.shape or scores.ndim != 1:
        raise DatasetError(f"{where}: {scores.shape} scores for {issame.shape} labels")
    if not issame.any() or issame.all():
        kind = "different" if issame.all() else "same"
        raise DatasetError(f"{where}: no {kind}-person pair among {issame.size}; calibration needs both kinds")
    if not np.all(np.isfinite(scores)):
        raise DatasetError(f"{where}: the model produced NaN or infinite embeddings")
    return scores, issame


def _between(low: float, higher: np.ndarray) -> float:
    """Midpoint between `low` and the smallest value of `higher` above it (just above `low` if none)."""
    above = higher[higher > low]
    return float((low + above.min()) / 2) if above.size else float(np.nextafter(low, np.inf))


def threshold_at_far(scores, issame, far: float, where: str = "pairs", *, cosine: bool = True) -> dict:
    """The lowest cosine threshold t whose false-accept rate (different pairs with score >= t) is <= far.

    Returns {"cosine", "far" (measured), "tar", "false_accepts", "different_pairs", "resolvable"}; a set
    with fewer than 1/far different pairs cannot show that rate (`resolvable` False): the threshold
    then lies above every different pair.  `cosine=False` for scores that are not cosines (e.g. minus
    an L2 distance): no clipping to [-1, 1].
    """
    scores, issame = _check_pairs(scores, issame, where)
    if not 0.0 < far < 1.0:
        raise ConfigError(f"--far {far}: must be a rate in (0, 1), e.g. 1e-3")
    diff = np.sort(scores[~issame])[::-1]
    allowed = int(math.floor(far * diff.size + 1e-9))  # false accepts the target permits
    threshold = _between(diff[allowed], scores)  # allowed < diff.size since far < 1
    threshold = min(threshold, 1.0) if cosine else threshold
    accepted_diff = int(np.sum(diff >= threshold))
    return {
        "cosine": threshold,
        "far": accepted_diff / diff.size,
        "tar": float(np.mean(scores[issame] >= threshold)),
        "false_accepts": accepted_diff,
        "different_pairs": int(diff.size),
        "resolvable": diff.size >= round(1.0 / far),
    }


def best_accuracy_threshold(scores, issame, where: str = "pairs", *, cosine: bool = True) -> tuple[float, float]:
    """(threshold, accuracy) maximising the accuracy of `score >= t` over all pairs (first best);
    `cosine=False` for scores that are not cosines (no clipping to [-1, 1])."""
    scores, issame = _check_pairs(scores, issame, where)
    order = np.argsort(scores, kind="stable")
    s, same = scores[order], issame[order]
    n = s.size
    # threshold just below sorted index i accepts s[i:]: correct = same in s[i:] + different in s[:i]
    same_above = np.concatenate([np.cumsum(same[::-1])[::-1], [0]])
    diff_below = np.concatenate([[0], np.cumsum(~same)])
    correct = same_above + diff_below
    valid = np.ones(n + 1, bool)
    valid[1:n] = s[1:] > s[:-1]  # a threshold cannot fall between equal scores
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        threshold = float(s[0]) - 1e-6
    elif best == n:
        threshold = float(np.nextafter(s[-1], np.inf))
    else:
        threshold = float((s[best - 1] + s[best]) / 2)
    if cosine:
        threshold = min(max(threshold, -1.0), 1.0)
    return threshold, float(correct[best] / n)


# ------------------------------------------------------------------------ model fingerprint, lookup
def model_fingerprint(model) -> tuple[str, str] | None:
    """(the weights file MODEL resolves to, its sha256), or None for a form without one file.

    A run folder resolves to its latest checkpoint (whose `.index` holds every tensor's checksum, so it
    changes with the weights), an imported or final model folder to `embedding.keras`.
    """
    path = Path(model)
    if RunFolder.is_run_folder(path):
        checkpoints = RunFolder(path).checkpoints(newest_first=True)
        target = Path(str(checkpoints[0]) + ".index") if checkpoints else RunFolder(path).final_model
    elif path.suffix == ".keras":
        target = path
    elif path.is_dir() and (path / "saved_model.pb").is_file():
        target = path / "saved_model.pb"
    elif Path(str(path) + ".index").is_file():
        target = Path(str(path) + ".index")
    else:
        return None
    if not target.is_file():
        return None
    return str(target.resolve()), file_sha256(target)


def default_threshold_path(model) -> Path | None:
    """Where calibration is stored for MODEL by default: MODEL/threshold.json for a model folder."""
    path = Path(model)
    return RunFolder(path).threshold if RunFolder.is_run_folder(path) else None


def _candidate_paths(model) -> list[Path]:
    path = Path(model)
    found = []
    if path.is_dir():
        found.append(RunFolder(path).threshold)
    elif path.suffix == ".keras":
        found.append(RunFolder(path.parent).threshold)
    elif RunFolder.is_checkpoint_prefix(path):  # RUN/checkpoints/ckpt-N: the run's calibration, if it is for N
        found.append(RunFolder.of_checkpoint(path).threshold)
    return [p for p in found if p.is_file()]


def load_calibration(path) -> dict:
    """A threshold.json written by `frtf calibrate`, checked; a DatasetError naming the file otherwise."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: calibration file not found") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a threshold.json written by `frtf calibrate` ({exc})") from None
    cosine = document.get("cosine") if isinstance(document, dict) else None
    if not isinstance(cosine, (int, float)) or isinstance(cosine, bool) or not -1.0 <= cosine <= 1.0:
        raise DatasetError(f"{path}: 'cosine' must be a threshold in [-1, 1], got {cosine!r}")
    return document


def calibration_for_model(model) -> tuple[dict | None, str | None]:
    """The calibration stored with MODEL that is for exactly these weights, and a note when one was
    found but does not fit (another checkpoint, changed weights, unreadable file)."""
    for path in _candidate_paths(model):
        try:
            document = load_calibration(path)
        except DatasetError as exc:
            return None, f"{exc}; ignored"
        fingerprint = model_fingerprint(model)
        if fingerprint is None or document.get("model_sha256") != fingerprint[1]:
            return None, (f"{path} was calibrated for {document.get('model_file') or 'another model'}, not "
                          f"{fingerprint[0] if fingerprint else model}; ignored (run `frtf calibrate` again)")
        return {**document, "path": str(path)}, None
    return None, None


def describe(document: dict) -> str:
    """'calibrated at FAR 1e-3' for messages."""
    return f"calibrated at FAR {document.get('far_target', '?'):g}" if isinstance(
        document.get("far_target"), (int, float)) else "calibrated"


# ------------------------------------------------------------------------------------ calibration
def calibrate(model, pairs, *, far: float = DEFAULT_FAR, out=None, batch_size: int = 64, flip: bool = True,
              progress: bool = False) -> dict:
    """Embed the pair set with MODEL, find the thresholds, write and return the threshold document."""
    from face_recognition_tf import model_io
    from face_recognition_tf.atomic import check_writable_dir, write_json
    from face_recognition_tf.data import load_bin
    from face_recognition_tf.evaluation.embed import Embedder

    if not 0.0 < far < 1.0:
        raise ConfigError(f"--far {far}: must be a rate in (0, 1), e.g. 1e-3")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    pairs = Path(pairs)
    target = Path(out) if out is not None else default_threshold_path(model)
    if target is None:
        raise ConfigError(f"{model}: not a model folder (no backbone.json), so the threshold cannot be stored "
                          "with it; pass --out FILE and use it with --threshold-from FILE")
    if target.is_dir():
        raise ConfigError(f"{target}: is a folder; --out names the threshold .json file")
    fingerprint = model_fingerprint(model)  # also fails early on a model path that does not exist
    if fingerprint is None and not Path(model).exists():
        raise CheckpointError(f"{model}: model not found")
    images, issame = load_bin(pairs)
    check_writable_dir(target.parent)
    embedder = Embedder(model_io.load_embedding_model(model))
    embeddings, flips = embedder(images, batch_size=batch_size, flip=flip, progress=progress, desc="pairs")
    scores = pair_cosines(embeddings, flips)
    at_far = threshold_at_far(scores, issame, far, where=str(pairs))
    best_cosine, best_accuracy = best_accuracy_threshold(scores, issame, where=str(pairs))
    document = {
        "format_version": FORMAT_VERSION,
        "cosine": at_far["cosine"],
        "distance": 2.0 - 2.0 * at_far["cosine"],  # the same threshold as squared L2 between unit vectors
        "far_target": far,
        "far": at_far["far"],
        "tar": at_far["tar"],
        "false_accepts": at_far["false_accepts"],
        "far_resolvable": bool(at_far["resolvable"]),
        "best_accuracy_cosine": best_cosine,
        "best_accuracy": best_accuracy,
        "pairs": str(pairs),
        "sha256": file_sha256(pairs),
        "same_pairs": int(issame.sum()),
        "different_pairs": int((~issame).sum()),
        "model": str(model),
        "model_file": fingerprint[0] if fingerprint else None,
        "model_sha256": fingerprint[1] if fingerprint else None,
        "flip": bool(flip),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(target, document)
    return {**document, "path": str(target)}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Find the cosine threshold whose false-accept rate on a pair set's different-person pairs is at most "
        "--far, and store it with the model (MODEL/threshold.json), so verify, identify and report use it."
    )
    parser.add_argument("model", metavar="MODEL",
                        help="model folder (run folder or `frtf import` folder: the threshold is stored in it), "
                             "or a .keras file / checkpoint prefix / SavedModel with --out")
    parser.add_argument("pairs", metavar="PAIRS.bin", help="pair set of the people the model will meet (`frtf make-pairs`)")
    parser.add_argument("--far", type=float, default=DEFAULT_FAR,
                        help=f"largest false-accept rate allowed (default {DEFAULT_FAR:g})")
    parser.add_argument("--out", metavar="FILE", help="where to write the threshold (default MODEL/threshold.json)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N")
    parser.add_argument("--no-flip", action="store_true",
                        help="embed images only, without their flips (then also use --no-flip at inference)")


def run(args: argparse.Namespace) -> int:
    import sys

    document = calibrate(args.model, args.pairs, far=args.far, out=args.out, batch_size=args.batch_size,
                         flip=not args.no_flip, progress=sys.stderr.isatty())
    n_diff = document["different_pairs"]
    print(f"calibrated {args.model} on {args.pairs}: {document['same_pairs']} same and {n_diff} different pairs")
    print(f"  threshold {document['cosine']:.4f} (cosine; squared L2 {document['distance']:.4f}) at FAR "
          f"{args.far:g}: measured FAR {document['far']:.5f} ({document['false_accepts']} of {n_diff}), "
          f"TAR {document['tar']:.4f}")
    print(f"  best-accuracy threshold {document['best_accuracy_cosine']:.4f}: accuracy {document['best_accuracy']:.4f}")
    if not document["far_resolvable"]:
        print(f"note: {n_diff} different pairs cannot measure a FAR of {args.far:g} (that needs at least "
              f"{round(1 / args.far)}); the threshold lies above every different pair. Add people or photos "
              "(`frtf make-pairs`) for a threshold you can trust", file=sys.stderr)
    print(f"wrote {document['path']}")
    return 0


def choose_threshold(model, threshold=None, distance_threshold=None, *, use_calibration: bool = True,
                     flip: bool | None = None):
    """(cosine threshold, where it came from, calibration document or None, note or None).

    The order every consumer follows: an explicit threshold; else the calibration stored with MODEL for
    exactly these weights (with a note when it was measured with another flip setting than `flip`);
    else the package default (0.3 cosine), said to be uncalibrated.
    """
    from face_recognition_tf.inference import DEFAULT_THRESHOLD, resolve_threshold

    if threshold is not None or distance_threshold is not None:
        return resolve_threshold(threshold, distance_threshold), "given", None, None
    note = None
    if use_calibration and isinstance(model, (str, Path)):
        document, note = calibration_for_model(model)
        if document is not None:
            if flip is not None and "flip" in document and bool(document["flip"]) != bool(flip):
                note = (f"{document['path']} was measured with flip={document['flip']}, this uses flip={flip}: "
                        "the false-accept rate may differ a little")
            return float(document["cosine"]), f"{describe(document)}, {document['path']}", document, note
    return float(DEFAULT_THRESHOLD), "default, not calibrated: see `frtf calibrate`", None, note
