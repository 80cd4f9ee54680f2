"""`frtf split ALIGNED OUT`: held-out parts of a folder of people's aligned photos.

Fine-tuning on one's own people needs data the model never trained on: a validation part for early
stopping (`frtf make-pairs OUT/val`) and a test part for the final report (`frtf report --gallery
OUT/train --probe OUT/test`).  Two ways to hold data out, because they answer different questions:

* `--by images` (default): every person is in every part, with different photos (closed set: "does
  it recognise the people it was trained on in new photos?").  Counts are rounded per person, with
  at least one photo in each held-out part whose fraction is above zero while train keeps one; a
  person with fewer than `--min-images` photos goes to train only (noted).
* `--by identity`: whole people per part (open set: "does it tell apart people it has never seen?",
  the way LFW-style numbers are meant).

Which photo (or person) goes where is decided by a seeded hash of its name, not by a random stream:
the same seed gives the same split on any machine, and adding a photo or a person later does not
reshuffle the others.  Files are hard-linked when the file system allows (no extra space; `--copy`
to force copies) and the tree is built beside OUT and renamed into place, so OUT is never half-made.
OUT/split.json records the options, the counts per part and per person, and every note.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import sys
from pathlib import Path

from face_recognition_tf.atomic import replace_path, temporary_dir_beside, write_json
from face_recognition_tf.errors import ConfigError, DatasetError, OutputError
from face_recognition_tf.faces.align_report import REPORT_CSV, REPORT_JSON
from face_recognition_tf.faces.images import (  # the package's one list of images
    IMAGE_SUFFIXES,
    aligned_tree,
    identity_folders,
    list_images,
)

PARTS = ("train", "val", "test")
SPLIT_FILE = "split.json"
FORMAT_VERSION = 1


def _order_key(seed: int, name: str) -> str:
    """A seeded, platform-independent shuffle key: sorting by it is a seeded permutation."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up: Python's round() goes to even, which surprises people


def check_fractions(val: float, test: float) -> None:
    for flag, value in (("--val", val), ("--test", test)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
            raise ConfigError(f"{flag} {value}: must be a fraction in [0, 1)")
    if val + test >= 1.0:
        raise ConfigError(f"--val {val} + --test {test} = {val + test:g} leaves nothing to train on (must be < 1)")


def image_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """(train, val, test) photos of a person with n photos: rounded shares, at least one in each held-out
    part with a positive fraction, and train always keeps one (val gives way first, then test)."""
    n_test, n_val = _round(n * test), _round(n * val)
    n_test = max(n_test, 1) if test > 0 else 0
    n_val = max(n_val, 1) if val > 0 else 0
    while n - n_val - n_test < 1:
        if n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def scan_identities(folder: Path) -> tuple[dict[str, list[Path]], list[str], int]:
    """Identity name -> its image files (relative to its folder, any depth, sorted); names of empty
    identity folders; how many non-image files were passed over."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (expected one sub-folder of aligned photos per person)")
    people: dict[str, list[Path]] = {}
    empty, ignored = [], 0
    own = {REPORT_JSON, REPORT_CSV}  # an align output's own report is not a stray file
    ignored += sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in own)
    for sub in identity_folders(folder):
        images = [path.relative_to(sub) for path in list_images(sub)]
        ignored += sum(1 for path in sub.rglob("*") if path.is_file() and not path.name.startswith(".")) - len(images)
        if images:
            people[sub.name] = images
        else:
            empty.append(sub.name)
    if not people:
        raise DatasetError(f"{folder}: no identity sub-folder holds an image "
                           f"(expected {folder}/NAME/photo.jpg; suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    return people, empty, ignored


def plan_split(people: dict[str, list[Path]], *, val: float, test: float, by: str = "images", seed: int = 0,
               min_images: int = 2) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
    """part -> identity -> files, and the notes a user should read.  Pure: no file is touched."""
    check_fractions(val, test)
    if min_images < 1:
        raise ConfigError(f"--min-images {min_images}: must be at least 1")
    plan: dict[str, dict[str, list[Path]]] = {part: {} for part in PARTS}
    notes = []
    few = sorted(name for name, files in people.items() if len(files) < min_images)
    if few:
        notes.append(f"{len(few)} identit{'y' if len(few) == 1 else 'ies'} with fewer than {min_images} photos "
                     f"go to train only: {', '.join(few[:10])}{', ...' if len(few) > 10 else ''}")
    for name in few:
        plan["train"][name] = list(people[name])
    splittable = [name for name in sorted(people) if len(people[name]) >= min_images]
    if by == "images":
        short = []
        for name in splittable:
            files = sorted(people[name], key=lambda rel: _order_key(seed, f"{name}/{rel.as_posix()}"))
            n_train, n_val, n_test = image_counts(len(files), val, test)
            chunks = {"test": files[:n_test], "val": files[n_test:n_test + n_val], "train": files[n_test + n_val:]}
            for part, chunk in chunks.items():
                if chunk:
                    plan[part][name] = sorted(chunk)
            if (val > 0 and not n_val) or (test > 0 and not n_test):
                short.append(f"{name} ({len(files)})")
        if short:
            notes.append(f"{len(short)} identit{'y' if len(short) == 1 else 'ies'} with too few photos for every "
                         f"part (val is left out first): {', '.join(short[:10])}{', ...' if len(short) > 10 else ''}")
    elif by == "identity":
        order = sorted(splittable, key=lambda name: _order_key(seed, name))
        n = len(order)
        n_train, n_val, n_test = image_counts(n, val, test) if n else (0, 0, 0)
        if n and ((val > 0 and not n_val) or (test > 0 and not n_test)):
            notes.append(f"only {n} identit{'y' if n == 1 else 'ies'} with {min_images}+ photos: too few for "
                         f"every part (train {n_train}, val {n_val}, test {n_test})")
        for part, names in (("test", order[:n_test]), ("val", order[n_test:n_test + n_val]),
                            ("train", order[n_test + n_val:])):
            for name in names:
                plan[part][name] = list(people[name])
    else:
        raise ConfigError(f"--by {by!r}: choose 'images' or 'identity'")
    return plan, notes


def _place(src: Path, dst: Path, link: bool) -> bool:
    """Hard-link `src` at `dst` when allowed (True), else copy it (False)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return True
        except OSError:  # another file system, or links not supported / permitted: copy instead
            pass
    shutil.copy2(src, dst)
    return False


def split_folder(aligned, out, *, val: float = 0.1, test: float = 0.1, by: str = "images", seed: int = 0,
                 min_images: int = 2, overwrite: bool = False, link: bool = True) -> dict:
    """Write OUT/{train,val,test}/NAME/... and OUT/split.json; return the split.json document."""
    aligned, out = Path(aligned), Path(out)
    check_fractions(val, test)
    src, dst = aligned.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise ConfigError(f"{out}: OUT is inside ALIGNED {aligned}; it would be read as an identity folder")
    if dst in src.parents:
        raise ConfigError(f"{out}: ALIGNED {aligned} is inside OUT; writing OUT would destroy the input")
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; an output folder is needed here")
    people, empty, ignored = scan_identities(aligned)
    plan, notes = plan_split(people, val=val, test=test, by=by, seed=seed, min_images=min_images)
    if empty:
        notes.insert(0, f"{len(empty)} empty identity folder(s) left out: {', '.join(empty[:10])}"
                        f"{', ...' if len(empty) > 10 else ''}")
    if ignored:
        notes.append(f"{ignored} non-image file(s) passed over")

    work = temporary_dir_beside(out)
    linked = copied = 0
    try:
        for part in PARTS:
            (work / part).mkdir()
            for name, files in plan[part].items():
                for rel in files:
                    if _place(aligned / name / rel, work / part / name / rel, link):
                        linked += 1
                    else:
                        copied += 1
        document = {
            "format_version": FORMAT_VERSION,
            "source": str(aligned),
            "aligned": aligned_tree(aligned),  # the parts are align crops: report/identify skip detection
            "options": {"val": val, "test": test, "by": by, "seed": seed, "min_images": min_images,
                        "link": link},
            "parts": {part: {"identities": len(plan[part]), "images": sum(map(len, plan[part].values()))}
                      for part in PARTS},
            "identities": {name: {part: len(plan[part].get(name, ())) for part in PARTS} for name in sorted(people)},
            "empty_identities": empty,
            "linked": linked,
            "copied": copied,
            "notes": notes,
        }
        write_json(work / SPLIT_FILE, document)
        replace_path(work, out, overwrite=True)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return document


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Split a folder of identity sub-folders of aligned faces into OUT/train, OUT/val and OUT/test "
        "(per person by photos, or whole people with --by identity), seeded; writes OUT/split.json."
    )
    parser.add_argument("aligned", metavar="ALIGNED", help="folder of identity sub-folders of aligned 112x112 crops")
    parser.add_argument("out", metavar="OUT", help="output folder (gets train/, val/, test/ and split.json)")
    parser.add_argument("--val", type=float, default=0.1, help="fraction held out for validation (default 0.1)")
    parser.add_argument("--test", type=float, default=0.1, help="fraction held out for testing (default 0.1)")
    parser.add_argument("--by", choices=("images", "identity"), default="images",
                        help="images: every person in every part, different photos (default); "
                             "identity: whole people per part (open-set evaluation)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--min-images", type=int, default=2, metavar="N",
                        help="people with fewer photos go to train only (default 2)")
    parser.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    document = split_folder(args.aligned, args.out, val=args.val, test=args.test, by=args.by, seed=args.seed,
                            min_images=args.min_images, overwrite=args.overwrite, link=not args.copy)
    for note in document["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"{'part':<6} {'identities':>10} {'images':>8}")
    for part in PARTS:
        counts = document["parts"][part]
        print(f"{part:<6} {counts['identities']:>10} {counts['images']:>8}")
    how = "hard-linked" if not document["copied"] else f"{document['linked']} hard-linked, {document['copied']} copied"
    print(f"wrote {args.out} ({how}; details in {SPLIT_FILE})")
    return 0
