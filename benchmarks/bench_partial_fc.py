"""Peak memory per replica and step time vs class count: full head vs Partial FC (sharded, sharded + sampled).

Each configuration trains a few updates of the trainer's real step (TrainStep: backbone, head, optimizer,
all-reduce) on synthetic data with labels spread over all classes.  The backbone is a tiny conv + dense
model (registered here) so that the head is what is measured; SGD with momentum, float32, decoupled decay.

Per-replica memory needs one allocator per replica: TensorFlow's logical CPU devices in one process share
one, so R replicas run as R MultiWorkerMirroredStrategy processes on 127.0.0.1 (one replica each; R = 1
is one plain process), each with TensorFlow's BFC allocator on the CPU (TF_CPU_ALLOCATOR_USE_BFC=true),
whose statistics give the bytes held after building (weights + optimizer slots) and the peak during
the timed updates.  Step time is the median of the timed updates (the first, traced one excluded);
on one 2-core machine R processes share the cores, so times compare the heads, not the speed-up.

    python benchmarks/bench_partial_fc.py [--classes 10000,100000,1000000,2000000] [--dim 128]
        [--batch 16] [--steps 3] [--runs full:1,full:2,sharded:2,sampled:2,sharded:4] [--rate 0.1]
        [--budget-gib 2] [--out results.json]

`--model` prints the on-paper table instead (8 x 80 GB GPUs, r50, 128 per GPU, 512-D; see
docs/benchmarks.md for the per-class byte counts it uses).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_multiworker import free_ports  # benchmarks/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
TINY = "bench_tiny"
GIB = 2.0 ** 30


def _tiny_backbone(embedding_size, *, norm, input_shape, dropout, width_multiplier, weight_decay, name=None, **_):
    import keras

    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(8, 3, strides=4)(inputs)
    h = keras.layers.Dense(embedding_size)(keras.layers.Flatten()(h))
    return keras.Model(inputs, keras.layers.Activation("linear", dtype="float32")(h), name=name or "tiny")


def worker(args) -> None:
    """One replica's process: for each class count build, train `steps` + 1 updates, print a RESULT line.

    One process serves every class count (TensorFlow's start and the cluster's set-up are paid once);
    memory is counted from what the allocator held before each build.
    """
    from face_recognition_tf.training.strategy import make_strategy

    hosts = args.hosts.split(",") if args.hosts else None
    info = make_strategy("multi_worker" if hosts else "default", worker_hosts=hosts, task_index=args.task)
    from face_recognition_tf.models import backbone_names, register_backbone

    if TINY not in backbone_names():
        register_backbone(TINY)(_tiny_backbone)
    for classes in (int(c) for c in args.classes.split(",")):
        _measure(args, info, classes)
        gc.collect()


def _measure(args, info, classes: int) -> None:
    import numpy as np
    import tensorflow as tf

    from face_recognition_tf.config import load_config
    from face_recognition_tf.training.train_step import TrainStep

    cfg = load_config("quickstart", [
        f"model.embedding_size={args.dim}", "model.input_size=32", f"train.batch_size={args.batch}",
        "train.optimizer=sgd", "train.momentum=0.9", "train.regularization=decoupled", "train.lr=0.01",
        "train.lr_reference_batch=null", "train.schedule.name=constant", "head.s=64", "head.m=0.5",
        f"head.partial_fc.enabled={args.mode != 'full'}",
        f"head.partial_fc.sample_rate={args.rate if args.mode == 'sampled' else 1.0}"])
    cfg.model.backbone = TINY
    device = "CPU:0"
    baseline = tf.config.experimental.get_memory_info(device)["current"]
    started = time.perf_counter()
    step = TrainStep(cfg, info, classes)
    step.finalize()
    built_s = time.perf_counter() - started
    resident = tf.config.experimental.get_memory_info(device)["current"] - baseline
    rng = np.random.default_rng(args.task)
    images = rng.normal(size=(args.batch * 4, 32, 32, 3)).astype("float32")

    def dataset_fn(ctx):
        labels = tf.data.Dataset.random(seed=ctx.input_pipeline_id).map(lambda v: tf.cast(v % classes, tf.int32))
        return tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(images).repeat(), labels).batch(args.batch)

    iterator = iter(info.strategy.distribute_datasets_from_function(dataset_fn))
    step(iterator)  # trace + first update
    tf.config.experimental.reset_memory_stats(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        result = step(iterator)
        times.append(time.perf_counter() - t)
    peak = tf.config.experimental.get_memory_info(device)["peak"] - baseline
    import resource

    # the process's peak resident set so far (class counts run in increasing order): adds what the
    # allocator does not count, i.e. TensorFlow's runtime and, across processes, the collectives' buffers
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps({
        "task": args.task, "classes": classes, "resident_bytes": resident, "peak_bytes": max(peak, resident),
        "max_rss_bytes": rss, "step_s": statistics.median(times), "build_s": built_s, "loss": result.loss}), flush=True)


def launch(mode: str, replicas: int, classes: str, args) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", TF_CPU_ALLOCATOR_USE_BFC="true")
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(replicas)) if replicas > 1 else ""
    procs = []
    for task in range(replicas):
        cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--classes", classes, "--dim", str(args.dim),
               "--batch", str(args.batch), "--steps", str(args.steps), "--rate", str(args.rate), "--task", str(task),
               "--hosts", hosts]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results, errors = [], []
    for p in procs:
        out, err = p.communicate(timeout=args.timeout)
        results += [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]
        if p.returncode != 0:
            errors.append(err.strip().splitlines()[-1] if err.strip() else f"rc {p.returncode}")
    rows = []
    for count in (int(c) for c in classes.split(",")):
        mine = [r for r in results if r["classes"] == count]
        if len(mine) < replicas:
            rows.append({"mode": mode, "replicas": replicas, "classes": count, "error": "; ".join(errors) or "no result"})
            continue
        rows.append({"mode": mode, "replicas": replicas, "classes": count,
                     "resident_gib": max(r["resident_bytes"] for r in mine) / GIB,
                     "peak_gib": max(r["peak_bytes"] for r in mine) / GIB,
                     "max_rss_gib": max(r["max_rss_bytes"] for r in mine) / GIB,
                     "step_s": max(r["step_s"] for r in mine), "build_s": max(r["build_s"] for r in mine)})
    return rows


def largest_fitting(rows: list[dict], budget_gib: float) -> int | None:
    """Class count where the peak per replica reaches the budget, from the line through the two largest runs."""
    points = sorted((r["classes"], r["peak_gib"]) for r in rows if "peak_gib" in r)
    if len(points) < 2:
        return None
    (c0, m0), (c1, m1) = points[-2:]
    slope = (m1 - m0) / (c1 - c0)
    return int(c1 + (budget_gib - m1) / slope) if slope > 0 else None


# ---- the per-class byte model, fitted to the CPU runs, and the on-paper table ------------------------------

# Floats per class at the peak, update phase (fitted: slope of the measured peak between 1M and 2M classes at
# D=128, docs/benchmarks.md): the plain head 4.9 D (weight, momentum, the value read, the normalised copy,
# gradient, update temporaries), a shard 5.7 D per class it owns, a sampled shard 2 D for every owned class
# (weight, momentum) plus 4.3 D per sampled one.
FULL_D, SHARD_D, RESIDENT_D, SAMPLED_D = 4.9, 5.7, 2.0, 4.3
ALLREDUCE_D = 1.0  # assumed: the all-reduced gradient beside the local one (plain head on several replicas)
LOGIT_FLOATS = 4  # assumed: per logit (cosine, logit, exponential kept for the gradient, its gradient)


def head_bytes_per_class(mode: str, replicas: int, dim: int, batch: int, rate: float) -> float:
    """Bytes one replica holds at its peak per class of the whole problem: the larger of the update phase
    and the logits phase (resident centres and slots + the logits of the plain head's own batch, or of a
    shard's *global* batch).  The logits term never set the peak in the CPU runs (D=128, 16-64 rows), so its
    coefficient is an assumption; at D=512 and 1024 global rows it does."""
    rows_global = batch * replicas
    if mode == "full":
        update = (FULL_D + (ALLREDUCE_D if replicas > 1 else 0.0)) * dim
        return 4 * max(update, RESIDENT_D * dim + LOGIT_FLOATS * batch)
    if mode == "sharded":
        return 4 * max(SHARD_D * dim, RESIDENT_D * dim + LOGIT_FLOATS * rows_global) / replicas
    return 4 * (RESIDENT_D * dim + rate * max(SAMPLED_D * dim, LOGIT_FLOATS * rows_global)) / replicas


def paper_table(backbone_gib: float = 10.0, gpu_gib: float = 80.0, dim: int = 512, batch: int = 128,
                gpus: int = 8) -> list[str]:
    lines = [f"| head, {gpus} GPUs x {batch}, D={dim} | bytes/class/GPU | 360,232 classes | 2,059,906 | 10M | "
             f"largest in {gpu_gib - backbone_gib:.0f} GiB | gradient all-reduced per step |",
             "|---|---|---|---|---|---|---|"]
    for label, mode, rate in (("plain (all centres on every GPU)", "full", 1.0), ("Partial FC, sharded", "sharded", 1.0),
                              ("Partial FC, sampled r=0.2", "sampled", 0.2),
                              ("Partial FC, sampled r=0.1", "sampled", 0.1)):
        per = head_bytes_per_class(mode, gpus, dim, batch, rate)
        fits = (gpu_gib - backbone_gib) * GIB / per
        cells = " | ".join(f"{per * c / GIB:.1f} GiB" for c in (360_232, 2_059_906, 10_000_000))
        comm = "C x D floats (3.9 GiB at 2M)" if mode == "full" else "none (gathers B x D embeddings, 2 MiB)"
        lines.append(f"| {label} | {per:,.0f} | {cells} | {fits / 1e6:.1f}M | {comm} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="full", choices=["full", "sharded", "sampled"])
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--hosts", default="")
    parser.add_argument("--classes", default="10000,100000,1000000,2000000")
    parser.add_argument("--runs", default="full:1,full:2,sharded:2,sampled:2,sharded:4")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="per replica")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--budget-gib", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--model", action="store_true", help="print the on-paper 8 x 80 GB table and exit")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.model:
        print("\n".join(paper_table()))
        return
    rows = []
    for run in args.runs.split(","):
        mode, replicas = run.split(":")
        started = time.perf_counter()
        for row in launch(mode, int(replicas), args.classes, args):
            row["wall_s"] = time.perf_counter() - started
            row["model_gib"] = head_bytes_per_class(mode, int(replicas), args.dim, args.batch, args.rate) * row["classes"] / GIB
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| run | classes | per-replica resident GiB | peak GiB | process max RSS GiB | head model GiB | step s |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['mode']} x{r['replicas']} | {r['classes']:,} | failed: {r['error'][:80]} | | | | |")
        else:
            print(f"| {r['mode']} x{r['replicas']} | {r['classes']:,} | {r['resident_gib']:.3f} | {r['peak_gib']:.3f} | "
                  f"{r['max_rss_gib']:.2f} | {r['model_gib']:.3f} | {r['step_s']:.2f} |")
    print(f"\nlargest class count under {args.budget_gib} GiB per replica (line through the two largest runs):")
    for run in args.runs.split(","):
        mode, replicas = run.split(":")
        fit = largest_fitting([r for r in rows if r["mode"] == mode and r["replicas"] == int(replicas)], args.budget_gib)
        print(f"  {mode} x{replicas}: {fit:,}" if fit else f"  {mode} x{replicas}: -")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
