"""Training images/s under each strategy on this machine: 1 device vs 2 logical CPU devices.

Weak scaling: every replica gets the same per-replica batch, so 2 replicas process twice the images
per update; scaling efficiency = (images/s with 2 replicas) / (2 x images/s with 1).  Both logical CPU
devices share the same physical cores here, so this measures the loop's overhead under a strategy
(all-reduce, merge calls, per-replica graphs), not hardware speed-up; on GPUs each replica has its own
device.  Input is an in-memory batch so the figure is the training step, not the JPEG pipeline.

    python benchmarks/bench_strategies.py [--steps 20] [--batch 16] [--width 0.25]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(name, args, replicas):
    import numpy as np
    import tensorflow as tf

    from face_recognition_tf.config import load_config
    from face_recognition_tf.training.strategy import make_strategy
    from face_recognition_tf.training.train_step import TrainStep

    cfg = load_config("quickstart", [f"train.batch_size={args.batch}", f"model.width_multiplier={args.width}",
                                     f"model.backbone={args.backbone}", f"train.precision={args.precision}"])
    info = make_strategy(name, cpu_replicas=replicas if name != "default" else None)
    step = TrainStep(cfg, info, 300)
    step.finalize()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 112, 112, 3)).astype("float32")
    y = rng.integers(0, 300, args.batch).astype("int32")
    fn = lambda ctx: tf.data.Dataset.from_tensors((x, y)).repeat()  # noqa: E731
    iterator = iter(info.strategy.distribute_datasets_from_function(fn))
    for _ in range(args.warmup):
        step(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(iterator)
    seconds = time.perf_counter() - start
    return {"strategy": name, "replicas": info.num_replicas, "global_batch": step.global_batch,
            "images_per_sec": args.steps * step.global_batch / seconds, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="per-replica batch")
    ap.add_argument("--backbone", default="r18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--precision", default="float32")
    args = ap.parse_args()

    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    rows = [measure("default", args, 1), measure("mirrored", args, 2), measure("central_storage", args, 2)]
    base = rows[0]["images_per_sec"]
    for row in rows:
        row["scaling_efficiency"] = row["images_per_sec"] / (row["replicas"] * base)
    print(json.dumps({"config": vars(args), "gpus": len(tf.config.list_physical_devices("GPU")), "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
