"""`frtf convert SRC OUT` (also `python dataset/convert_dataset.py SRC OUT`)."""

from __future__ import annotations

import argparse
import json
import sys

from face_recognition_tf.errors import ConfigError

EPILOG = ("Arguments and OUT are checked before SRC is read. A conversion that fails leaves OUT as it was: "
          "a folder it created is removed, and in an existing folder only the files it wrote are removed, so "
          "after fixing the cause the same command runs again. One that is interrupted (Ctrl-C, kill) keeps "
          "its finished shards: rerun it with --resume (a --resume run that fails keeps them too).")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert an insightface dataset folder (train.rec, train.idx, property, *.bin) to "
                          "TFRecord shards + manifest.json, copying the .bin pair sets beside them.")
    parser.epilog = EPILOG
    parser.add_argument("src", metavar="SRC", help="dataset folder holding train.rec (or, with --from-folder, "
                        "a folder of identity sub-folders of aligned face images)")
    parser.add_argument("out", metavar="OUT", help="output folder for the shards and manifest.json")
    parser.add_argument("--from-folder", action="store_true", help="SRC is a folder of identity sub-folders")
    parser.add_argument("--shards", type=int, default=None, metavar="N",
                        help="number of shards, 1 to the number of images "
                        "(default: about 64 MiB each, at least 2)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes, at least 1 (default: one per CPU core for large datasets)")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted conversion, keeping its finished shards")
    parser.add_argument("--verify", action="store_true",
                        help="decode every image; stop at the first corrupt one")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="decode every image and leave corrupt ones out (listed in manifest.json 'skipped')")
    parser.add_argument("--resize", action="store_true",
                        help="with --from-folder: resize images that are not 112x112 instead of failing")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the record order over shards, 0 or more (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from face_recognition_tf.data.conversion import convert

    if args.resize and not args.from_folder:
        raise ConfigError("--resize: only applies with --from-folder (a .rec's images are used as stored)")
    common = dict(num_shards=args.shards, workers=args.workers, resume=args.resume, verify=args.verify,
                  skip_corrupt=args.skip_corrupt, seed=args.seed, progress=not args.no_progress)
    if args.from_folder:
        manifest = convert.convert_folder(args.src, args.out, resize=args.resize, **common)
    else:
        manifest = convert.convert_recordio(args.src, args.out, **common)
    summary = {k: manifest[k] for k in ("num_images", "num_classes", "num_classes_source", "pair_sets")}
    summary["shards"] = len(manifest["shards"])
    summary["skipped"] = len(manifest["skipped"])
    print(f"{args.out}: {json.dumps(summary)}", file=sys.stdout)
    return 0
