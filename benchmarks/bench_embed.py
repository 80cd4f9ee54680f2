"""Embedding throughput of IR-ResNet50 for verification (each image plus its flip), images per second.

Runs `Embedder` (the path `frtf evaluate` and the trainer's validation use: uint8 batches, normalise,
image + flip in one traced call) and, as the reference in the same run, the plain eager Keras call on
already-normalised float32 batches, image and flip separately.  A few batches only: enough for a stable
rate on a CPU without hogging a shared machine.

    .venv/bin/python benchmarks/bench_embed.py [--arch r50] [--batch-size 16] [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="r50")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="timed batches (after one warm-up batch)")
    args = parser.parse_args()

    import tensorflow as tf

    from face_recognition_tf.evaluation import Embedder
    from face_recognition_tf.models import build_backbone

    model = build_backbone(args.arch)
    rng = np.random.default_rng(0)
    n = args.batch_size * (args.batches + 1)
    images = rng.integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)
    warm, timed = images[: args.batch_size], images[args.batch_size :]

    embedder = Embedder(model)
    embedder(warm, batch_size=args.batch_size)  # trace + first run
    start = time.perf_counter()
    emb, flips = embedder(timed, batch_size=args.batch_size)
    ours = time.perf_counter() - start

    def eager(batch):
        x = (batch.astype(np.float32) - 127.5) / 128.0
        return model(x, training=False).numpy(), model(x[:, :, ::-1], training=False).numpy()

    eager(warm)
    start = time.perf_counter()
    for i in range(0, len(timed), args.batch_size):
        eager(timed[i : i + args.batch_size])
    reference = time.perf_counter() - start

    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(json.dumps({
        "arch": args.arch,
        "parameters": int(model.count_params()),
        "batch_size": args.batch_size,
        "images_timed": len(timed),
        "device": "GPU" if "GPU" in devices else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "embedder_images_per_s": round(len(timed) / ours, 2),
        "embedder_forward_passes_per_s": round(2 * len(timed) / ours, 2),
        "eager_reference_images_per_s": round(len(timed) / reference, 2),
        "ratio_embedder_vs_eager": round(reference / ours, 2),
        "note": "an image counts once; its flip is embedded too (two forward passes per image)",
        "embedding_shape": list(emb.shape),
    }, indent=2))


if __name__ == "__main__":
    main()
