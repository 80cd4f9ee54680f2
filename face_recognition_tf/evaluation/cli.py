"""`frtf evaluate` (== `python evaluation/evaluation.py`): score checkpoints on verification pair sets.

Everything a user can get wrong (a missing checkpoint, a folder without .bin files, an unknown target,
an output folder that cannot be written) is checked before the first model is loaded, so a typo costs seconds rather than an evaluation run.  The
pair sets are decoded once and reused for every checkpoint; each checkpoint is loaded once and run over
every target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from face_recognition_tf.atomic import check_writable_dir
from face_recognition_tf.errors import CheckpointError, ConfigError, DatasetError
from face_recognition_tf.run_folder import RunFolder

DEFAULT_OUT = "evaluation_results"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Verification accuracy (insightface's 10-fold protocol) of checkpoints on .bin pair sets "
        "(LFW, CFP-FP, AgeDB-30, ...), written as results.json/.csv/.md and ROC plots."
    )
    parser.add_argument("models", nargs="+", metavar="CKPT_OR_RUN",
                        help="run folders (every checkpoint), checkpoint prefixes (RUN/checkpoints/ckpt-N), "
                             ".keras files or SavedModel folders; globs allowed")
    parser.add_argument("--data", metavar="DIR",
                        help="folder holding the .bin pair sets (default: the embedded sample dataset)")
    parser.add_argument("--targets", metavar="NAMES",
                        help="comma-separated pair sets to use, e.g. lfw,cfp_fp (default: every .bin in --data)")
    parser.add_argument("--out", metavar="DIR",
                        help=f"output folder (default: RUN/evaluation for one run folder, else ./{DEFAULT_OUT})")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="images per model call; their flips ride along in the same call (default 64)")
    parser.add_argument("--no-flip", action="store_true",
                        help="embed the images only, without adding their horizontal flips")
    parser.add_argument("--folds", type=int, default=10, metavar="K", help="cross-validation folds (default 10)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or progress lines on stderr "
                             "(errors, notices and the results table still print)")


def run(args: argparse.Namespace) -> int:
    from face_recognition_tf import model_io

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.folds < 1:
        raise ConfigError(f"--folds must be at least 1, got {args.folds}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    if args.targets is not None and not targets:
        raise ConfigError("--targets is empty; give names such as lfw,cfp_fp")

    progress = not args.quiet
    say = _say if progress else _silent
    checkpoints = model_io.expand_model_paths(args.models)
    bins, data_dir = _pair_set_files(args.data, targets)
    out_dir = Path(args.out) if args.out else _default_out(args.models)
    check_writable_dir(out_dir)  # a read-only --out fails now, not after every checkpoint was scored
    flip = not args.no_flip

    from face_recognition_tf.data import load_bin
    from face_recognition_tf.evaluation.embed import Embedder
    from face_recognition_tf.evaluation.report import checkpoint_names, format_table, percent, write_reports
    from face_recognition_tf.evaluation.verification import VerificationInputError, evaluate_embeddings

    pair_sets = {}
    for name, path in bins.items():
        say(f"loading {name} from {path}")
        pair_sets[name] = load_bin(path)

    names = checkpoint_names(checkpoints, model_io.describe)
    results = {}
    for name, path in names.items():
        say(f"loading model {path}")
        embedder = Embedder(model_io.load_embedding_model(path))
        results[name] = {}
        for target, (images, issame) in pair_sets.items():
            embeddings, flips = embedder(images, batch_size=args.batch_size, flip=flip, progress=progress,
                                         desc=f"{name} {target}")
            try:
                result = evaluate_embeddings(embeddings, issame, folds=args.folds, flip_embeddings=flips)
            except VerificationInputError as exc:
                raise CheckpointError(f"{path}: on {target}: {exc}") from None
            results[name][target] = result
            say(f"[{target}] {name}: accuracy {percent(result.accuracy_mean, result.accuracy_std)} "
                 f"(no flip {percent(result.accuracy_noflip_mean, result.accuracy_noflip_std)}), "
                 f"XNorm {result.xnorm:.3f}")

    written = write_reports(out_dir, results, paths=names, data=str(data_dir), flip=flip, folds=args.folds)
    print(format_table(results))
    print(f"wrote {', '.join(p.name for p in written)} to {out_dir}")
    return 0


def _pair_set_files(data: str | None, targets: list[str] | None):
    from face_recognition_tf.data import find_bins

    if data is None:
        from face_recognition_tf.data.synthetic.sample import ensure_sample_dataset

        folder = Path(ensure_sample_dataset())
        _say(f"no --data given: using the embedded sample dataset in {folder}")
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: --data must be a folder holding .bin pair sets")
    bins = find_bins(folder, targets)
    if targets:
        missing = [t for t in targets if t not in bins]
        if missing:
            raise DatasetError(f"{folder}: no {', '.join(t + '.bin' for t in missing)} "
                               f"(found: {', '.join(sorted(bins)) or 'none'})")
        bins = {t: bins[t] for t in targets}
    if not bins:
        raise DatasetError(f"{folder}: no .bin pair sets found")
    return bins, folder


def _default_out(models: list[str]) -> Path:
    runs = {Path(m).resolve() for m in models}
    if len(runs) == 1:
        (only,) = runs
        if RunFolder.is_run_folder(only):
            return only / "evaluation"
    return Path(DEFAULT_OUT)


def _silent(message: str) -> None:
    """--quiet: progress lines are dropped; errors still reach stderr through the dispatcher."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
