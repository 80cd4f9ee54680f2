"""`frtf align SRC OUT`: detect and align the faces in SRC/<person>/<photo> into OUT/<person>/<photo>.jpg.

The first step of "recognise your own people": the crops it writes are what `frtf convert
--from-folder`, `frtf make-pairs` and galleries expect.  The work is in `align_folder`; this module
reads the options and prints a summary a person can act on.
"""

from __future__ import annotations

import argparse
import sys

from face_recognition_tf.faces.align_folder import POLICIES, AlignSettings, align_folder


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Detect the face in every photo of SRC/<person>/ with MTCNN and write it to OUT/<person>/ aligned to "
        "insightface's five-point template (JPEG, quality 95), in parallel worker processes. A rerun resumes: "
        "photos already done are skipped. OUT also gets align_report.json/.csv (every photo: ok, no_face, "
        "several_faces, unreadable or too_small, with box, landmarks and score) and contact_sheets/<person>.png "
        "to look over the crops."
    )
    parser.add_argument("src", metavar="SRC", help="folder with one sub-folder of photos per person")
    parser.add_argument("out", metavar="OUT", help="folder for the aligned crops and the report (not inside SRC)")
    parser.add_argument("--min-face-size", type=int, default=40, metavar="PX",
                        help="smallest face to keep, in the photo's pixels (default 40: smaller detections are "
                             "mostly not faces, and too blurry to train on)")
    parser.add_argument("--thresholds", type=float, nargs=3, default=[0.6, 0.7, 0.8], metavar=("P", "R", "O"),
                        help="MTCNN's P-Net, R-Net and O-Net confidence thresholds (default 0.6 0.7 0.8)")
    parser.add_argument("--policy", choices=POLICIES, default="largest",
                        help="photos with several faces: keep the largest (default), the most confident, the one "
                             "nearest the centre (insightface's rule), or skip the photo")
    parser.add_argument("--image-size", type=int, default=112, metavar="PX",
                        help="crop size, a multiple of 112 or 128 (default 112)")
    parser.add_argument("--detect-size", type=int, default=1280, metavar="PX",
                        help="MTCNN runs on a copy of each photo at most this long (default 1280); the crop "
                             "is cut from the full-resolution photo")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="detector processes (default: one per core, at most 4, and at most one per 30 photos; "
                             "1 runs in this process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every photo (needed to change settings on an existing OUT, or to write into a "
                             "folder that is not an align output)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    settings = AlignSettings(min_face_size=args.min_face_size, thresholds=tuple(args.thresholds),
                             policy=args.policy, image_size=args.image_size, detect_size=args.detect_size)
    if args.workers is not None and args.workers < 1:
        from face_recognition_tf.errors import ConfigError

        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    report = align_folder(args.src, args.out, settings, workers=args.workers, overwrite=args.overwrite,
                          progress=not args.no_progress, quiet_workers=not getattr(args, "verbose", False))
    print_summary(report, args.out)
    return 0


def print_summary(report: dict, out) -> None:
    counts = report["counts"]
    people = [s for s in report["identities"] if s["ok"]]
    print(f"aligned {counts['ok']} of {report['photos_total']} photos of {len(people)} people into {out} "
          f"({report['aligned_this_run']} this run, {report['reused_from_earlier_runs']} from earlier runs, "
          f"{report['seconds']:.1f} s)")
    failed = {status: n for status, n in counts.items() if status != "ok" and n}
    if failed:
        print("not aligned: " + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in failed.items())
              + f" (see {out}/align_report.csv)", file=sys.stderr)
    for summary in report["identities"]:
        if summary["note"]:
            print(f"note: {summary['identity']}: {summary['note']}", file=sys.stderr)
    if report["ignored"]:
        first = report["ignored"][0]
        print(f"ignored {len(report['ignored'])} file(s) that are not photos, e.g. {first['path']} ({first['reason']})",
              file=sys.stderr)
    if report["contact_sheets"]:
        print(f"look over the crops: {out}/contact_sheets/ ({len(report['contact_sheets'])} sheet(s))")
