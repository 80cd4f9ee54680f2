"""`frtf quickstart` (and `make demo`): the whole chain on the embedded sample, on a CPU, in minutes.

make the sample in insightface's layout -> convert it to TFRecords (OUT/data) -> score the untrained
model on the held-out-identity pair sets -> train with configs/quickstart.yaml (OUT/run) -> score
again -> OUT/quickstart.json and a short table.  A newcomer sees every stage the real datasets go
through, and the before/after numbers show that training learned something.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from face_recognition_tf.errors import FaceRecognitionError

MARKER = ".frtf-quickstart"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="output/quickstart", help="output folder (default: output/quickstart)")
    parser.add_argument("--config", default="quickstart", help="training config (default: the packaged quickstart.yaml)")
    parser.add_argument("--max-steps", type=int, help="stop training after N updates (a fast smoke run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=200")
    parser.parse_args = parser.parse_intermixed_args  # overrides may sit between options


def _prepare_out(out: Path) -> None:
    """OUT is quickstart's own folder: a previous quickstart's data and run are replaced, anything else refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FaceRecognitionError(f"{out}: exists and was not made by frtf quickstart; choose another --out")
        for name in ("data", "run"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by frtf quickstart; its data/ and run/ are replaced on the next run\n")


def run(args) -> int:
    from face_recognition_tf.config import load_config

    started = time.perf_counter()
    cfg = load_config(args.config, list(args.overrides or []))
    if args.max_steps is not None and args.max_steps <= 0:
        raise FaceRecognitionError(f"--max-steps must be positive, got {args.max_steps}")
    out = Path(args.out)
    _prepare_out(out)

    from face_recognition_tf.training.strategy import make_strategy

    info = make_strategy("default")  # before any other TensorFlow work

    from face_recognition_tf.data import find_bins, load_bin
    from face_recognition_tf import atomic
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import ensure_sample_dataset
    from face_recognition_tf.training.trainer import Trainer
    from face_recognition_tf.training.validation import Validator

    print("quickstart: making the sample dataset (insightface layout) ...", flush=True)
    sample = ensure_sample_dataset()
    print(f"quickstart: converting {sample} -> {out / 'data'} ...", flush=True)
    convert_recordio(sample, out / "data", progress=False)
    pair_sets = {name: load_bin(path) for name, path in sorted(find_bins(out / "data").items())}
    if not pair_sets:
        raise FaceRecognitionError(f"{out / 'data'}: the converted sample has no .bin pair sets")
    # the same pairs (validation.max_pairs) before training, during it and after it
    validator = Validator(pair_sets, batch_size=cfg.validation.batch_size, max_pairs=cfg.validation.max_pairs,
                          folds=cfg.validation.folds)

    def scores(model):
        return {k: v for k, v in validator(model).items() if k != "mean"}

    trainer = Trainer(cfg, info, data_dir=out / "data", run_dir=out / "run", max_steps=args.max_steps,
                      resume="never", progress=False if args.no_progress else None)
    trainer.prepare()
    print("quickstart: scoring the untrained model ...", flush=True)
    before = scores(trainer.step_fn.backbone)
    print(f"quickstart: training {trainer.stop_step} updates of {trainer.cfg.model.backbone} "
          f"(global batch {trainer.step_fn.global_batch}) ...", flush=True)
    train_started = time.perf_counter()
    summary = trainer.train()
    train_seconds = time.perf_counter() - train_started
    # the trainer scored the final model on every pair set found beside the data; reuse that
    after = {k: v for k, v in (summary["validation"] or {}).items() if k in pair_sets}
    if set(after) != set(pair_sets):
        print("quickstart: scoring the trained model ...", flush=True)
        after = scores(trainer.step_fn.backbone)

    def mean(d):
        return sum(d.values()) / len(d)

    report = {
        "before": before, "after": after, "mean_before": mean(before), "mean_after": mean(after),
        "wall_seconds": time.perf_counter() - started, "train_seconds": train_seconds,
        "steps": summary["step"], "global_batch": summary["global_batch"],
        "images_seen": summary["step"] * summary["global_batch"], "config": str(args.config),
        "backbone": trainer.cfg.model.backbone, "run_dir": str(out / "run"), "data_dir": str(out / "data"),
        "num_classes": int(trainer.cfg.data.num_classes),
    }
    atomic.write_json(out / "quickstart.json", report)
    print(f"\n{'pair set':<12}{'untrained':>11}{'trained':>10}")
    for name in before:
        print(f"{name:<12}{before[name]:>11.4f}{after[name]:>10.4f}")
    print(f"{'mean':<12}{report['mean_before']:>11.4f}{report['mean_after']:>10.4f}")
    print(f"\n{report['steps']} updates in {train_seconds:.0f} s, {report['wall_seconds']:.0f} s in all; "
          f"model: {out / 'run' / 'embedding.keras'}; figures: {out / 'quickstart.json'}")
    return 0
