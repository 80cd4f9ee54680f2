"""`frtf bench-input DATA`: how many training images/s this machine's CPUs can feed, on your own data.

On a GPU server the CPU cores per GPU, not the GPU, often limit r50/r100 fp16 training (insightface users
report it; DALI did not help them).  This measures the real training pipeline (`build_train_dataset`,
the same options training uses) on a converted dataset, so a person can size CPUs per GPU before renting
them: images/s, images/s per core, and with `--gpu-rate` how many GPUs that feeds.  `--stages` adds
where the time goes: images/s after each stage of the pipeline rebuilt one stage at a time (a stage's
cost is the drop from the row above), the profile docs/benchmarks.md reports.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STAGES = ("read", "shuffle", "batch", "parse", "decode", "flip", "normalise")
STAGE_HELP = {
    "read": "interleaved TFRecord reads of the shard files",
    "shuffle": "+ shuffle buffer of serialized records, repeat",
    "batch": "+ batches of serialized records",
    "parse": "+ one vectorised parse_example per batch",
    "decode": "+ JPEG decode, INTEGER_ACCURATE (MXNet's decoder)",
    "flip": "+ random flip on uint8 = the training pipeline",
    "normalise": "+ float32 (x - 127.5) / 128 on the CPU (before issue 14)",
}


def usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def images_per_second(dataset, batches: int, warmup: int) -> float:
    """Images/s of `dataset` (batches of (images, labels)) over `batches` after `warmup` batches."""
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
        count += int(images.shape[0])
    _ = images.numpy()  # the last batch really exists
    return count / (time.perf_counter() - start)


def staged_dataset(data_dir, upto: str, batch_size: int = 128, *, per_record: bool = False, options=None):
    """The training pipeline up to and including stage `upto` (STAGES), built from its own pieces.

    per_record: parse and decode each record in a parallel map before batching, the alternative to the
    per-batch decode the pipeline uses (for the profile's comparison row).
    """
    import tensorflow as tf

    from face_recognition_tf.data.input import augment as augment_lib
    from face_recognition_tf.data.input.pipeline import FEATURES, decode_batch, decode_image, normalize_images, shard_files
    from face_recognition_tf.data.records.tfrecord import IMAGE_KEY, LABEL_KEY

    files, manifest = shard_files(data_dir)
    size = tuple(manifest["image_size"])
    depth = STAGES.index(upto)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20), cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    if depth >= STAGES.index("shuffle"):
        ds = ds.shuffle(min(manifest["num_images"], 16384), seed=0)
    ds = ds.repeat()
    if per_record:
        def one(record):
            parsed = tf.io.parse_single_example(record, FEATURES)
            return decode_image(parsed[IMAGE_KEY], size), tf.cast(parsed[LABEL_KEY], tf.int32)

        ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size, drop_remainder=True).enumerate()  # before "batch" only to count alike: cheap
    flip = augment_lib.resolve({"flip": True})

    def finish(step, batch):
        if per_record:
            images, labels = batch
        elif depth < STAGES.index("parse"):
            return batch, tf.zeros([tf.shape(batch)[0]], tf.int32)
        else:
            parsed = tf.io.parse_example(batch, FEATURES)
            images, labels = parsed[IMAGE_KEY], tf.cast(parsed[LABEL_KEY], tf.int32)
            if depth >= STAGES.index("decode"):
                mirror = None
                if depth >= STAGES.index("flip"):  # flipped as decoded, as the pipeline does
                    mirror = augment_lib.flip_mask(tf.stack([tf.constant(0, tf.int64), step]), tf.shape(images)[0], flip)
                images = decode_batch(images, size, mirror)
        if depth >= STAGES.index("normalise"):
            images = normalize_images(images)
        return images, labels

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options) if options is not None else ds


def profile_stages(data_dir, batch_size: int, batches: int, warmup: int, report=print) -> dict:
    """{stage: images/s} for every prefix of the pipeline, reported row by row as measured."""
    rows = {}
    for stage in STAGES:
        rows[stage] = images_per_second(staged_dataset(data_dir, stage, batch_size), batches, warmup)
        report(f"  {stage:<10} {rows[stage]:>10,.0f} images/s   {STAGE_HELP[stage]}")
    return rows


def configure_parser(parser) -> None:
    parser.add_argument("data", type=Path, help="a dataset folder written by `frtf convert` (with manifest.json)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch, as train.batch_size (128)")
    parser.add_argument("--batches", type=int, default=100, help="batches timed (100)")
    parser.add_argument("--warmup", type=int, default=10, help="batches before timing starts (10)")
    parser.add_argument("--config", default=None,
                        help="a training config whose data.augment to use (default: the flip only, as base.yaml)")
    parser.add_argument("--stages", action="store_true", help="also profile the pipeline stage by stage")
    parser.add_argument("--gpu-rate", type=float, default=None,
                        help="images/s one GPU trains at (e.g. from a training log): prints how many GPUs "
                             "these cores feed")


def run(args) -> int:
    from face_recognition_tf.errors import ConfigError

    if args.batch_size < 1 or args.batches < 1 or args.warmup < 0:
        raise ConfigError("--batch-size and --batches must be positive and --warmup >= 0")
    if args.gpu_rate is not None and args.gpu_rate <= 0:
        raise ConfigError(f"--gpu-rate must be positive, got {args.gpu_rate}")
    from face_recognition_tf.data.input.pipeline import build_train_dataset, dataset_info

    info = dataset_info(args.data)  # a one-line error naming the folder when it is not a dataset
    augment = None
    if args.config is not None:
        from face_recognition_tf.config import load_config
        from face_recognition_tf.training.train_data import augment_options

        augment = augment_options(load_config(args.config))
    cores = usable_cores()
    print(f"{args.data}: {info['num_images']:,} images of {info['num_classes']:,} identities in "
          f"{len(info['files'])} shard(s); {cores} usable core(s); batch {args.batch_size}")
    rate = images_per_second(build_train_dataset(args.data, args.batch_size, augment=augment, seed=0),
                             args.batches, args.warmup)
    print(f"training pipeline: {rate:,.0f} images/s ({rate / cores:,.0f} per core), uint8 batches to the device")
    if args.gpu_rate:
        print(f"feeds {rate / args.gpu_rate:.2f} GPU(s) training at {args.gpu_rate:,.0f} images/s each; "
              f"about {args.gpu_rate / (rate / cores):.1f} core(s) per such GPU")
    if args.stages:
        print("stage by stage (a stage's cost is the drop from the row above):")
        profile_stages(args.data, args.batch_size, args.batches, args.warmup)
    return 0
