"""`frtf report MODEL --gallery G --probe P [--pairs X.bin]`: how well a model knows a group of people.

What someone who fine-tuned on their classmates wants to know, in one run on held-out photos (e.g. the
train and test parts of `frtf split`): how many people it recognises (rank-1 / rank-5 accuracy, per
person, who is taken for whom) and how fast (time per probe photo, detection included), and how it
behaves as a yes/no verifier at the threshold it will be used with (accuracy, precision, recall,
specificity, F1, TAR at FAR 1e-3 / 1e-4, ROC).  Comparisons can use the cosine or the L2 distance, with
or without L2-normalised embeddings, the comparison seeds ran to pick a metric.

Verification is measured on every probe-vs-gallery-identity comparison (genuine when the names match),
and on a pair set too when `--pairs` is given.  The threshold is `--threshold` (in the distance's unit),
else the one `frtf calibrate` stored with the model (converted to an L2 distance between unit vectors
when needed), else 0.3 cosine; for L2 on unnormalised embeddings no stored threshold applies, so the
best-accuracy threshold on the pairs (or, failing them, on the comparisons themselves: optimistic, and
said so) is used.  Results: a table on the terminal, report.json, report.md and roc.png in --out, each
written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import ConfigError, DatasetError
from face_recognition_tf.evaluation import identification as ident

DEFAULT_OUT = "identification_report"
FORMAT_VERSION = 1


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Identification (rank-1/5, per person, confusions, time per probe) and verification "
                          "(accuracy, precision, recall, specificity, F1, TAR@FAR, ROC) of a model on a gallery "
                          "and a probe folder of identity sub-folders; writes report.json, report.md, roc.png.")
    parser.add_argument("model", metavar="MODEL", help="run folder, `frtf import` folder, checkpoint, .keras or SavedModel")
    parser.add_argument("--gallery", required=True, metavar="G", help="folder of identity sub-folders: the known people")
    parser.add_argument("--probe", required=True, metavar="P",
                        help="folder of identity sub-folders: photos to identify (people absent from G count as unknown)")
    parser.add_argument("--pairs", metavar="X.bin", help="also verify on this pair set (`frtf make-pairs`)")
    parser.add_argument("--distance", choices=ident.DISTANCES, default="cosine", help="comparison (default cosine)")
    parser.add_argument("--no-normalize", action="store_true", help="compare embeddings without L2-normalising them")
    parser.add_argument("--threshold", type=float,
                        help="accept threshold: cosine similarity (accept >=) or L2 distance (accept <=); "
                             "default: the one `frtf calibrate` stored with the model")
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default ./{DEFAULT_OUT})")
    parser.add_argument("--aligned", action="store_true",
                        help="photos are aligned 112x112 crops: skip detection (automatic for folders written by "
                             "`frtf align` and the parts `frtf split` made of them)")
    parser.add_argument("--no-flip", action="store_true", help="do not add the flipped crop's embedding")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-face-size", type=int, default=40, help="smallest face MTCNN looks for (default 40)")
    parser.add_argument("--pick", choices=("largest", "confident", "center"), default="largest",
                        help="which face to use when a photo holds several (default largest)")


def _people(folder: Path, role: str) -> tuple[dict[str, list[Path]], list[str]]:
    """name -> photos of a folder of identity sub-folders, and the empty identities."""
    from face_recognition_tf.faces.images import identity_folders, list_images

    if not folder.is_dir():
        raise DatasetError(f"{folder}: {role} folder not found (expected {folder}/NAME/photo.jpg)")
    people, empty = {}, []
    for sub in identity_folders(folder):
        photos = list_images(sub)
        if photos:
            people[sub.name] = photos
        else:
            empty.append(sub.name)
    if not people:
        raise DatasetError(f"{folder}: no identity sub-folder with images ({role} expected {folder}/NAME/photo.jpg)")
    return people, empty


def _embed(recognizer, people: dict[str, list[Path]], aligned: bool, role: str):
    """Raw (flip-summed) embeddings, the name of each, the failures, and the seconds it took."""
    items = [photo for photos in people.values() for photo in photos]
    names = [name for name, photos in people.items() for _ in photos]
    start = time.perf_counter()
    embeddings, kept, failures = recognizer.embed_many(
        items, aligned=True if aligned else None, normalize=False, skip_errors=True,
        progress=sys.stderr.isatty() and len(items) > 20, names=[str(p) for p in items])
    seconds = time.perf_counter() - start
    if not kept:
        raise DatasetError(f"{role}: no face could be embedded from {len(items)} photo(s) "
                           f"(first failure: {failures[0][1] if failures else 'none'})")
    return embeddings, [names[i] for i in kept], failures, seconds, len(items)


def _threshold(args, recognizer, normalize: bool):
    """(threshold in the distance's unit or None to choose one on data, where it came from)."""
    if args.threshold is not None:
        return args.threshold, "given"
    if args.distance == "cosine":
        return recognizer.threshold, recognizer.threshold_source
    if normalize:  # Euclidean distance between unit vectors: sqrt(2 - 2 cos)
        return math.sqrt(max(0.0, 2.0 - 2.0 * recognizer.threshold)), f"{recognizer.threshold_source}, as L2 distance"
    return None, None


def _check_args(args) -> None:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threshold is not None:
        if args.distance == "cosine" and not -1.0 <= args.threshold <= 1.0:
            raise ConfigError(f"--threshold {args.threshold}: a cosine threshold lies in [-1, 1]")
        if args.distance == "l2" and not (math.isfinite(args.threshold) and args.threshold >= 0):
            raise ConfigError(f"--threshold {args.threshold}: an L2 distance threshold is >= 0")
    if args.pairs and not Path(args.pairs).is_file():
        raise DatasetError(f"{args.pairs}: pair-set file not found")


def build_report(args) -> dict:
    """Everything in report.json (the Verification objects under "_curves" for the ROC figure)."""
    import warnings

    from face_recognition_tf.inference import FaceRecognizer

    from face_recognition_tf.faces.images import aligned_tree

    _check_args(args)
    normalize = not args.no_normalize
    gallery_people, gallery_empty = _people(Path(args.gallery), "gallery")
    probe_people, probe_empty = _people(Path(args.probe), "probe")
    aligned = {role: bool(args.aligned) or aligned_tree(folder)
               for role, folder in (("gallery", args.gallery), ("probe", args.probe))}
    with warnings.catch_warnings(record=True) as caught:  # a stale calibration becomes a note below
        warnings.simplefilter("always")
        detector = None if all(aligned.values()) else "mtcnn"
        recognizer = FaceRecognizer(args.model, detector=detector, flip=not args.no_flip,
                                    batch_size=args.batch_size, pick=args.pick, min_face_size=args.min_face_size)
    notes = [recognizer.threshold_note] if recognizer.threshold_note else []
    if not args.aligned:
        notes += [f"{role} {folder}: `frtf align` crops, detection skipped"
                  for role, folder in (("gallery", args.gallery), ("probe", args.probe)) if aligned[role]]
    for w in caught:
        if str(w.message) != recognizer.threshold_note:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    notes += [f"empty {role} identity folder(s) left out: {', '.join(names)}"
              for role, names in (("gallery", gallery_empty), ("probe", probe_empty)) if names]

    g_emb, g_names, g_failed, g_seconds, _ = _embed(recognizer, gallery_people, aligned["gallery"], f"{args.gallery}")
    names = list(dict.fromkeys(g_names))
    if len(names) < 2:
        raise DatasetError(f"{args.gallery}: {len(names)} gallery identity with a usable face; a report needs 2 or more")
    lost = [name for name in gallery_people if name not in names]
    if lost:
        notes.append(f"gallery identities without any usable face, left out: {', '.join(lost)}")
    labels = np.asarray([names.index(n) for n in g_names])
    templates = ident.templates(g_emb, labels, len(names), normalize)

    p_emb, p_names, p_failed, p_seconds, p_attempted = _embed(recognizer, probe_people, aligned["probe"], f"{args.probe}")
    start = time.perf_counter()
    scores = ident.score_matrix(ident.prepare(p_emb, normalize), templates, args.distance)
    p_seconds += time.perf_counter() - start
    genuine = np.asarray(p_names)[:, None] == np.asarray(names)[None, :]

    pair_scores = pair_labels = None
    if args.pairs:
        from face_recognition_tf.data import load_bin

        images, pair_labels = load_bin(args.pairs)
        pair_scores = ident.pair_scores(ident.prepare(recognizer.embed_aligned(images, normalize=False), normalize),
                                        args.distance)

    threshold, source = _threshold(args, recognizer, normalize)
    if threshold is None:
        from face_recognition_tf.evaluation.calibrate import best_accuracy_threshold

        on_pairs = pair_scores is not None
        chosen, _ = best_accuracy_threshold(pair_scores if on_pairs else scores.ravel(),
                                            pair_labels if on_pairs else genuine.ravel(), cosine=False)
        threshold = ident.user_threshold(chosen, args.distance)
        source = ("best accuracy on --pairs" if on_pairs else
                  "best accuracy on these comparisons themselves (optimistic: pass --pairs or --threshold)")
        notes.append(f"no stored threshold applies to L2 on unnormalised embeddings; threshold {source}")
    score_thr = ident.score_threshold(threshold, args.distance)

    identification = ident.identify(scores, p_names, names, score_thr)
    curves = {"probe vs gallery": ident.verify(scores, genuine, score_thr, where="probe vs gallery comparisons")}
    if pair_scores is not None:
        curves[Path(args.pairs).name] = ident.verify(pair_scores, pair_labels, score_thr, where=str(args.pairs))
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(args.model), "gallery": str(args.gallery), "probe": str(args.probe),
        "pairs": str(args.pairs) if args.pairs else None,
        "distance": args.distance, "normalize": normalize, "flip": not args.no_flip, "aligned": aligned["probe"],
        "threshold": {"value": threshold, "source": source,
                      "accept": "cosine similarity >= value" if args.distance == "cosine" else "L2 distance <= value"},
        "gallery_summary": {"identities": len(names), "photos": len(g_names), "seconds": g_seconds,
                            "skipped": [{"file": f, "reason": r} for f, r in g_failed]},
        "identification": {
            "probes": p_attempted, "probes_scored": identification.probes, "probes_known": identification.known,
            "rank1": identification.rank_accuracy[1], "rank5": identification.rank_accuracy[5],
            "identified_at_threshold": identification.identified, "unknown_rejected": identification.unknown_rejected,
            "people_recognised": identification.people_recognised, "people": identification.people,
            "seconds_per_probe": p_seconds / max(p_attempted, 1),
            "skipped": [{"file": f, "reason": r} for f, r in p_failed],
        },
        "per_person": identification.per_person,
        "confusions": identification.confusions,
        "verification": {name: v.to_dict() for name, v in curves.items()},
        "notes": notes,
        "_curves": curves,
    }


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verification_rows(report: dict) -> list[list[str]]:
    rows = [["comparisons", "n", "genuine", "accuracy", "precision", "recall", "specificity", "F1",
             "TAR@FAR1e-3", "TAR@FAR1e-4", "AUC", "EER"]]
    for name, v in report["verification"].items():
        tars = v["tar_at_far"]
        rows.append([name, str(v["comparisons"]), str(v["genuine"]), _pct(v["accuracy"]), _pct(v["precision"]),
                     _pct(v["recall"]), _pct(v["specificity"]), _pct(v["f1"]), _pct(tars.get("0.001")),
                     _pct(tars.get("0.0001")), _num(v["auc"]), _pct(v["eer"])])
    return rows


def _summary_lines(report: dict) -> list[str]:
    i, t = report["identification"], report["threshold"]
    how = f"{report['distance']}, {'normalised' if report['normalize'] else 'unnormalised'} embeddings"
    work = "embedding" if report["aligned"] else "detection, alignment, embedding"
    accept = t["accept"].replace("value", f"{t['value']:.4f}")
    unknown = i["unknown_rejected"]
    return [
        f"identification: {i['probes_scored']} of {i['probes']} probe photos scored against "
        f"{report['gallery_summary']['identities']} gallery identities ({how})",
        f"  rank-1 {_pct(i['rank1'])}%  rank-5 {_pct(i['rank5'])}%  identified at threshold "
        f"{_pct(i['identified_at_threshold'])}%  people recognised {i['people_recognised']} of {i['people']}"
        + (f"  unknown rejected {_pct(unknown)}%" if unknown is not None else ""),
        f"  time per probe {i['seconds_per_probe']:.3f} s ({work} and search); "
        f"gallery {report['gallery_summary']['seconds']:.1f} s",
        f"verification: accept when {accept} ({t['source']})",
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_console(report: dict) -> str:
    return "\n".join(_summary_lines(report) + [_table(_verification_rows(report))])


def to_markdown(report: dict, max_confusions: int = 30) -> str:
    def md(rows):
        return "\n".join(["| " + " | ".join(rows[0]) + " |", "|---" + "|---:" * (len(rows[0]) - 1) + "|",
                          *("| " + " | ".join(r) + " |" for r in rows[1:])])

    i = report["identification"]
    lines = [f"# Identification report: {report['model']}", "",
             f"Gallery `{report['gallery']}`, probes `{report['probe']}`"
             + (f", pairs `{report['pairs']}`" if report["pairs"] else "") + f"; flip {report['flip']}.", "",
             *(f"    {line}" for line in _summary_lines(report)), "", "## Verification", "",
             md(_verification_rows(report)), "", "![ROC](roc.png)", "", "## Per person", ""]
    people = [["person", "probes", "rank-1 correct", "accuracy %", "identified at threshold %"]]
    for name, e in report["per_person"].items():
        people.append([name, str(e["probes"]), str(e.get("rank1", "-")), _pct(e.get("accuracy")),
                       _pct(e.get("identified")) if e["in_gallery"] else f"not in gallery; rejected {_pct(e['rejected'])}"])
    lines += [md(people), "", "## Confusions (true -> predicted at rank 1)", ""]
    if report["confusions"]:
        lines.append(md([["true", "predicted", "count"]] + [[c["true"], c["predicted"], str(c["count"])]
                                                            for c in report["confusions"][:max_confusions]]))
    else:
        lines.append("None: every probe of a gallery person was ranked first correctly.")
    skipped = report["gallery_summary"]["skipped"] + i["skipped"]
    if skipped or report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
        lines += [f"- skipped {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def write_report(out, report: dict) -> list[Path]:
    from face_recognition_tf.atomic import ensure_dir, write_bytes, write_text
    from face_recognition_tf.evaluation.report import roc_png

    out = ensure_dir(out)
    document = {k: v for k, v in report.items() if not k.startswith("_")}
    write_text(out / "report.json", json.dumps(document, indent=2, allow_nan=False) + "\n")
    write_text(out / "report.md", to_markdown(document))
    write_bytes(out / "roc.png", roc_png(f"{Path(report['probe']).name} ({report['distance']})", report["_curves"]))
    return [out / "report.json", out / "report.md", out / "roc.png"]


def run(args: argparse.Namespace) -> int:
    from face_recognition_tf.atomic import check_writable_dir

    out = Path(args.out or DEFAULT_OUT)
    check_writable_dir(out)  # before any photo is embedded
    report = build_report(args)
    for note in report["notes"]:
        print(f"frtf report: note: {note}", file=sys.stderr)
    skipped = report["gallery_summary"]["skipped"] + report["identification"]["skipped"]
    for item in skipped:
        print(f"frtf report: skipped {item['reason']}", file=sys.stderr)
    print(format_console(report))
    written = write_report(out, report)
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    return 0
