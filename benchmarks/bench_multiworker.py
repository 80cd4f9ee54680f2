"""Training images/s: two `multi_worker` processes on 127.0.0.1 vs one process, same global batch.

Both runs train the same tiny model (r18 at 1/8 width, 16-D embedding) on the same converted sample
with `frtf train`, so the figure includes everything a real run pays: gRPC all-reduce of every
gradient and of the BN statistics between the processes, the input pipelines and the step itself.
Rates come from the run's own history.jsonl (images/s of each update), the median over the updates
after the first few (tracing and warm-up excluded).  The ratio `multi_worker / single` is the figure;
on one machine the two workers share its cores, so it shows the overhead of the multi-worker
machinery, not the speed-up that separate machines would give.

    python benchmarks/bench_multiworker.py [--steps 30] [--batch 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["model.width_multiplier=0.125", "model.embedding_size=16", "head.s=16", "head.m=0.2",
         "train.optimizer=sgd", "train.lr=0.05", "train.lr_reference_batch=null", "train.max_steps=1000",
         "checkpoint.every_steps=100000", "log.every_steps=1", "validation.every_steps=100000",
         "validation.max_pairs=50"]  # the final validation is not measured; keep it short


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rates(run: Path, skip: int) -> list[float]:
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    return [r["images_per_sec"] for r in records if r.get("event") == "train" and r["step"] > skip]


def launch(data: Path, run: Path, steps: int, per_worker_batch: int, workers: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    base = [sys.executable, "-m", "face_recognition_tf", "train", "--config", "quickstart", "--data", str(data),
            "--out", str(run), "--no-progress", "--max-steps", str(steps), f"train.batch_size={per_worker_batch}", *MODEL]
    if workers == 1:
        commands = [base]
    else:
        hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(workers))
        commands = [base + ["--strategy", "multi_worker", "--worker-hosts", hosts, "--task-index", str(i)]
                    for i in range(workers)]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        for p in procs:
            _, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise SystemExit(f"training failed (rc {p.returncode}):\n{err[-3000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return statistics.median(rates(run, skip=3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer updates per run")
    parser.add_argument("--batch", type=int, default=8, help="global batch (split over the workers)")
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    from face_recognition_tf.data.synthetic.sample import ensure_converted_sample

    data = Path(ensure_converted_sample())
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-multiworker-"))
    started = time.time()
    single = launch(data, root / "single", args.steps, args.batch, 1)
    multi = launch(data, root / "multi_worker", args.steps, args.batch // 2, 2)
    result = {"global_batch": args.batch, "steps": args.steps, "single_images_per_sec": round(single, 2),
              "multi_worker_2x127.0.0.1_images_per_sec": round(multi, 2), "ratio_multi_over_single": round(multi / single, 3),
              "cpu_count": os.cpu_count(), "wall_s": round(time.time() - started, 1)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
