"""Backbone training throughput: forward + backward images/s per model, precision policy and XLA.

Every figure is also given as a ratio against IR-ResNet50, float32, no XLA measured in the same
run (machines differ; ratios travel better than absolute numbers).  The step timed is what a
trainer pays for the backbone: ``model(x, training=True)`` under a GradientTape plus the gradients
of every trainable variable (no head, no optimizer update), in one ``tf.function``.

CPU (the default):
    python benchmarks/bench_models.py
  On a CPU without bf16 units (AVX2 only, like the 2-core machine this was written on),
  mixed_bfloat16 without XLA is emulated and ~15x slower than float32: r50 alone then takes ~3 min
  per step at batch 16; leave it out with ``--skip r50:mixed_bfloat16:off``.
GPU:
    python benchmarks/bench_models.py --device /gpu:0 --batch 128 \
        --policies float32,mixed_float16,mixed_bfloat16 --steps 20 --warmup 3

``--out FILE.json`` also writes the rows (atomically, after every row, so a stopped run keeps
what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REFERENCE = ("r50", "float32", False)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="e.g. /cpu:0 or /gpu:0 (default: TF's choice)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models", default="r18,r50,mobilefacenet")
    parser.add_argument("--policies", default="float32,mixed_bfloat16",
                        help="comma-separated Keras dtype policies")
    parser.add_argument("--xla", default="off,on", help="comma-separated: off, on")
    parser.add_argument("--skip", default="",
                        help="comma-separated MODEL:POLICY[:on|off] combinations to leave out "
                             "(e.g. r50:mixed_bfloat16 on a CPU without bf16 units)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (include XLA compile)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--out", default=None, help="write the rows as JSON to this file")
    return parser.parse_args(argv)


def measure(name, policy, xla, args, tf, keras, build_backbone):
    """images/s of forward+backward for one configuration (model rebuilt under the policy)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_backbone(name, args.embedding_size)
    finally:
        keras.config.set_dtype_policy(previous)
    images = tf.random.normal((args.batch, 112, 112, 3))
    variables = model.trainable_variables

    @tf.function(jit_compile=xla)
    def step(x):
        with tf.GradientTape() as tape:
            embeddings = model(x, training=True)
            loss = tf.reduce_mean(tf.square(embeddings))
        return loss, tape.gradient(loss, variables)

    compile_start = time.perf_counter()
    for _ in range(max(1, args.warmup)):
        loss, _ = step(images)
        float(loss)
    warmup_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, grads = step(images)
    float(loss)  # wait for the device
    _ = [g.shape for g in grads]
    elapsed = time.perf_counter() - start
    return {
        "model": name,
        "policy": policy,
        "xla": xla,
        "batch": args.batch,
        "steps": args.steps,
        "images_per_s": args.batch * args.steps / elapsed,
        "warmup_s": warmup_s,
    }


def main(argv=None):
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from face_recognition_tf.models import build_backbone

    models = [m for m in args.models.split(",") if m]
    policies = [p for p in args.policies.split(",") if p]
    xlas = [{"off": False, "on": True}[x] for x in args.xla.split(",") if x]
    skips = [tuple(item.split(":")) for item in args.skip.split(",") if item]

    def skipped(model, policy, xla):
        return any(s[:2] == (model, policy) and (len(s) == 2 or s[2] == ("on" if xla else "off"))
                   for s in skips)

    configs = [(m, p, x) for m in models for p in policies for x in xlas if not skipped(m, p, x)]
    # Measure the reference first so every ratio in the table shares it.
    if REFERENCE in configs:
        configs.remove(REFERENCE)
        configs.insert(0, REFERENCE)
    else:
        print(f"note: {REFERENCE} not in this run; ratios are against {configs[0]}", file=sys.stderr)

    device = args.device or ("/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")
    print(f"TF {tf.__version__}, Keras {keras.__version__}, device {device}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    rows = []
    with tf.device(device):
        for name, policy, xla in configs:
            try:
                row = measure(name, policy, xla, args, tf, keras, build_backbone)
            except Exception as err:  # a policy/XLA combination the device lacks: report, go on
                row = {"model": name, "policy": policy, "xla": xla, "batch": args.batch,
                       "images_per_s": None, "error": f"{type(err).__name__}: {str(err)[:200]}"}
            rows.append(row)
            reference = rows[0]["images_per_s"]
            value = row["images_per_s"]
            row["ratio_vs_reference"] = value / reference if value and reference else None
            shown = f"{value:9.2f} img/s  x{row['ratio_vs_reference']:.2f}" if value else row["error"]
            print(f"{name:14s} {policy:15s} xla={'on ' if xla else 'off'} {shown}"
                  + (f"  (warm-up {row['warmup_s']:.1f} s)" if value else ""), flush=True)
            if args.out:
                write_json(args.out, {
                    "reference": dict(zip(("model", "policy", "xla"), configs[0])),
                    "device": device, "tensorflow": tf.__version__, "rows": rows,
                    "command": " ".join(["python", "benchmarks/bench_models.py"] + sys.argv[1:]),
                })
    return 0


def write_json(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
