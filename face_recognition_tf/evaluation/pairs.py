"""`frtf make-pairs FOLDER OUT.bin`: a verification pair set from a folder of people's aligned photos.

Public benchmarks say little about the people a model will actually meet.  This turns a folder with one
sub-folder per person (`FOLDER/alice/*.jpg`, `FOLDER/bob/*.jpg`, ...) into a `.bin` in insightface's
format, which `frtf evaluate --data` and the trainer's periodic validation then treat like LFW:

* every same-person pair (optionally at most N per person, drawn with the seed, so one person with
  hundreds of photos does not dominate), and as many different-person pairs drawn with the seed;
* same and different pairs are interleaved evenly (alternating when there are as many of each), so each
  of the 10 contiguous folds holds both kinds (the protocol needs both in every fold to measure VAL and
  FAR); a folder too small for that is refused, saying how many pairs of each kind it could give,
  rather than written as a set whose accuracy would be computed on folds of one kind;
* a person with a single photo has no same-person pair: it is named in a note (it still serves in
  different-person pairs, and in galleries);
* images must already be aligned 112x112 faces; anything else is refused with the file's name unless
  `--resize` is given.  JPEG files are stored byte for byte; other formats are encoded as JPEG.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import ConfigError, DatasetError
from face_recognition_tf.faces.images import (  # the one reader and resizer
    IMAGE_SUFFIXES,
    JPEG_QUALITY,
    decode_image,
    encode_jpeg,
    has_image_suffix,
    identity_folders,
    resize_image,
)
IMAGE_SIZE = 112


def _read_face(path: Path, resize: bool) -> tuple[bytes, bool, bool]:
    """The image's JPEG bytes, and whether it was resized / re-encoded to get them."""
    raw = path.read_bytes()
    image = decode_image(raw, str(path)).image
    height, width = image.shape[:2]
    resized = False
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        if not resize:
            raise DatasetError(
                f"{path}: image is {width}x{height}; expected an aligned {IMAGE_SIZE}x{IMAGE_SIZE} face "
                "(align photos first with MTCNN + 5-point alignment, or pass --resize to scale it)"
            )
        image = resize_image(image, (IMAGE_SIZE, IMAGE_SIZE))
        resized = True
    if not resized and raw[:2] == b"\xff\xd8":
        return raw, False, False
    encoded = encode_jpeg(image, JPEG_QUALITY)
    if encoded is None:
        raise DatasetError(f"{path}: could not encode as JPEG")
    return encoded, resized, True


def _scan(folder: Path) -> tuple[list[tuple[str, list[Path]]], list[Path]]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (expected one sub-folder of photos per person)")
    identities = []
    people = identity_folders(folder)
    ignored = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    for sub in people:
        images = []
        for f in sorted(sub.iterdir()):
            if f.is_file() and not f.name.startswith(".") and has_image_suffix(f):
                images.append(f)
            elif not f.name.startswith("."):
                ignored.append(f)
        if images:
            identities.append((sub.name, images))
    return identities, ignored


def _different_pairs(owner: np.ndarray, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """`count` distinct pairs of images of different people (all of them if there are not that many)."""
    n = owner.size
    possible = (n * n - int(np.sum(np.bincount(owner) ** 2))) // 2
    if possible <= 4 * count:  # few candidates: enumerate and draw without replacement
        candidates = [(a, b) for a, b in itertools.combinations(range(n), 2) if owner[a] != owner[b]]
        if len(candidates) <= count:
            return candidates
        chosen = rng.choice(len(candidates), size=count, replace=False)
        return [candidates[i] for i in sorted(chosen)]
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < count:  # rejection sampling; acceptance stays high since possible > 4 * count
        a, b = (int(v) for v in rng.integers(0, n, size=2))
        if owner[a] != owner[b]:
            chosen.add((min(a, b), max(a, b)))
    return sorted(chosen)


def _interleave(same: list, different: list) -> list[tuple[tuple[int, int], bool]]:
    """Same and different pairs spread evenly over the sequence (S D S D ... when equally many), so any
    run of contiguous pairs (a fold) holds both kinds in proportion."""
    keyed = [((i + 0.5) / len(same), 0, pair, True) for i, pair in enumerate(same)]
    keyed += [((j + 0.5) / len(different), 1, pair, False) for j, pair in enumerate(different)]
    return [(pair, flag) for _, _, pair, flag in sorted(keyed, key=lambda item: item[:2])]


def _check_folds(folder: Path, ordered, n_same: int, n_diff: int, folds: int) -> None:
    """Refuse a set that cannot give every one of `folds` contiguous folds a same and a different pair."""
    from face_recognition_tf.evaluation.verification import folds_hold_both_kinds

    if folds_hold_both_kinds([flag for _, flag in ordered], folds):
        return
    raise DatasetError(
        f"{folder}: could make only {n_same} same-person and {n_diff} different-person pairs; {folds}-fold "
        f"evaluation needs at least {folds} of each (every fold holds both kinds): add people with 2+ photos, "
        "or pass --folds K (and evaluate with --folds K, train with validation.folds=K)"
    )


def make_pairs_from_folder(folder, out_bin, *, seed: int = 0, max_same_per_identity: int | None = None,
                           resize: bool = False, folds: int = 10) -> dict:
    """Write a `.bin` of same / different pairs from `folder/<person>/<photo>`; return a summary dict.

    Refuses (DatasetError, nothing written) a folder whose pairs cannot fill `folds` folds with both kinds.
    """
    from face_recognition_tf.data import save_bin

    folder, out_bin = Path(folder), Path(out_bin)
    if max_same_per_identity is not None and max_same_per_identity < 1:
        raise ConfigError(f"max_same_per_identity must be at least 1, got {max_same_per_identity}")
    if folds < 1:
        raise ConfigError(f"--folds {folds}: must be at least 1")
    identities, ignored = _scan(folder)
    if len(identities) < 2:
        raise DatasetError(f"{folder}: found {len(identities)} person sub-folder(s) with images; "
                           "different-person pairs need at least 2")

    files = [f for _, images in identities for f in images]
    owner = np.repeat(np.arange(len(identities)), [len(images) for _, images in identities])
    rng = np.random.default_rng(seed)

    same: list[tuple[int, int]] = []
    start = 0
    for _, images in identities:
        combos = list(itertools.combinations(range(start, start + len(images)), 2))
        if max_same_per_identity is not None and len(combos) > max_same_per_identity:
            keep = rng.choice(len(combos), size=max_same_per_identity, replace=False)
            combos = [combos[i] for i in sorted(keep)]
        same.extend(combos)
        start += len(images)
    if not same:
        raise DatasetError(f"{folder}: no person has two or more photos, so there is no same-person pair")
    different = _different_pairs(owner, len(same), rng)

    same = [same[i] for i in rng.permutation(len(same))]
    different = [different[i] for i in rng.permutation(len(different))]
    ordered = _interleave(same, different)
    _check_folds(folder, ordered, len(same), len(different), folds)

    used = {i for (a, b), _ in ordered for i in (a, b)}
    encoded, resized, reencoded = {}, 0, 0
    for i, path in enumerate(files):  # every photo is checked, used or not, so a bad file never hides
        jpeg, was_resized, was_reencoded = _read_face(path, resize)
        if i in used:
            encoded[i] = jpeg
            resized += was_resized
            reencoded += was_reencoded
    jpegs = [encoded[i] for (a, b), _ in ordered for i in (a, b)]
    issame = [flag for _, flag in ordered]
    out_bin.parent.mkdir(parents=True, exist_ok=True)
    save_bin(out_bin, jpegs, issame)
    return {
        "out": str(out_bin),
        "identities": len(identities),
        "images": len(files),
        "images_used": len(used),
        "same_pairs": len(same),
        "different_pairs": len(different),
        "resized": resized,
        "reencoded": reencoded,
        "ignored": [str(p) for p in ignored],
        "single_photo_identities": [name for name, images in identities if len(images) == 1],
        "seed": seed,
        "folds": folds,
    }


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build a verification pair set (.bin, insightface's format) from FOLDER/<person>/<photo>: every "
        "same-person pair and as many seeded different-person pairs. Use it with `frtf evaluate --data`."
    )
    parser.add_argument("folder", metavar="FOLDER", help="one sub-folder of aligned 112x112 face photos per person")
    parser.add_argument("out", metavar="OUT.bin", help="pair set to write")
    parser.add_argument("--seed", type=int, default=0, help="seed for drawing pairs (default 0)")
    parser.add_argument("--max-same-per-identity", type=int, default=None, metavar="N",
                        help="at most N same-person pairs per person (default: all)")
    parser.add_argument("--folds", type=int, default=10, metavar="K",
                        help="refuse a set that cannot give each of K folds a same and a different pair (default 10)")
    parser.add_argument("--resize", action="store_true",
                        help="scale photos that are not 112x112 instead of refusing them (they should still be aligned)")


def run(args: argparse.Namespace) -> int:
    info = make_pairs_from_folder(args.folder, args.out, seed=args.seed, folds=args.folds,
                                  max_same_per_identity=args.max_same_per_identity, resize=args.resize)
    pairs = info["same_pairs"] + info["different_pairs"]
    singles = info["single_photo_identities"]
    if singles:
        print(f"note: {len(singles)} person(s) with one photo left out of same-person pairs (still used in "
              f"different-person pairs): {', '.join(singles[:10])}{', ...' if len(singles) > 10 else ''}",
              file=sys.stderr)
    print(f"wrote {info['out']}: {pairs} pairs ({info['same_pairs']} same, {info['different_pairs']} different) "
          f"from {info['images_used']} of {info['images']} photos of {info['identities']} people"
          + (f"; {info['resized']} resized" if info["resized"] else ""))
    if info["ignored"]:
        print(f"ignored {len(info['ignored'])} non-image entries, e.g. {info['ignored'][0]}", file=sys.stderr)
    return 0
