"""Training input pipeline throughput and memory vs single-process cv2 loops and insightface's loader.

For each dataset size (default 20,000 and 80,000 face JPEGs of the synthetic sample, 100 identities'
renderings) it writes the dataset in insightface's layout (train.rec/.idx), converts it, and measures,
each in a fresh process so peak memory is the measurement's own:

  pipeline       `build_train_dataset(batch_size=128)` with the default augmentation (INTEGER_ACCURATE
                 decode + random flip), uint8 batches, as training consumes it
  cv2 decode     a single-process `cv2.imdecode` loop over the same JPEGs held in memory (decode only)
  cv2 same work  the loop doing the pipeline's work: decode, BGR->RGB, random flip, uint8 batches of 128
  insightface    arcface_torch's loader: MXIndexedRecordIO + mx.image.imdecode + flip + normalise in a
                 torch DataLoader with 2 workers (benchmarks/insightface_loader.py), run with
                 --reference-python, a venv holding mxnet and torch (that script says how to make it);
                 skipped when there is none

    python benchmarks/bench_pipeline.py [--images 20000,80000] [--batches 150] [--warmup 20]
        [--reference-python /work/mxref-venv/bin/python]

Each of the first three is run --repeats times (default 3), interleaved, and the median reported
(a cv2 loop's rate varies by a quarter between runs on a shared machine); insightface's loader once.
Ratios are against the references measured in the same run.  Prints JSON; docs/benchmarks.md has the
figures.  Run it on an idle machine: every number is images/s of the whole machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH = 128


def make_dataset(images: int, work: Path) -> tuple[Path, Path]:
    """(insightface-layout folder, converted folder) of `images` synthetic face JPEGs."""
    import numpy as np

    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic import synthetic_faces as faces
    from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset

    rng = np.random.default_rng(0)
    people = [faces.sample_identity(rng) for _ in range(100)]
    pool = [faces.render(people[i % 100], rng) for i in range(2000)]
    write_rec_dataset(work / "src", [(i // 20, pool[i % len(pool)]) for i in range(images)])
    convert_recordio(work / "src", work / "tfr", progress=False)
    return work / "src", work / "tfr"


def read_jpegs(tfr: Path) -> list[bytes]:
    """The JPEG bytes of every record of a converted dataset, in file order (the loops' input)."""
    import tensorflow as tf

    from face_recognition_tf.data.input.pipeline import FEATURES, shard_files
    from face_recognition_tf.data.records.tfrecord import IMAGE_KEY

    files, _ = shard_files(tfr)
    ds = tf.data.TFRecordDataset(files).batch(1024).map(lambda r: tf.io.parse_example(r, FEATURES)[IMAGE_KEY])
    return [j for batch in ds.as_numpy_iterator() for j in batch]


def measure(kind: str, src: Path, tfr: Path, batches: int, warmup: int) -> dict:
    """One measurement in this process: images/s and this process's peak RSS."""
    import numpy as np

    if kind == "pipeline":
        from face_recognition_tf.data.input.bench_input import images_per_second
        from face_recognition_tf.data.input.pipeline import build_train_dataset

        rate = images_per_second(build_train_dataset(tfr, BATCH, seed=0), batches, warmup)
    else:
        import cv2

        cv2.setNumThreads(1)
        jpegs = read_jpegs(tfr)[: (batches + warmup) * BATCH]
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        if kind == "cv2_decode":
            for j in jpegs:
                cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
        else:  # cv2_same_work
            for i in range(0, len(jpegs) - BATCH + 1, BATCH):
                out = np.empty((BATCH, 112, 112, 3), np.uint8)
                for k, j in enumerate(jpegs[i:i + BATCH]):
                    image = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
                    out[k] = image[:, ::-1] if rng.random() < 0.5 else image
        rate = len(jpegs) / (time.perf_counter() - start)
    return {"img_s": rate, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="20000,80000", help="dataset sizes, comma-separated")
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each own measurement; the median is reported")
    ap.add_argument("--reference-python", type=Path, default=Path("/work/mxref-venv/bin/python"),
                    help="python of a venv with mxnet + torch for insightface's loader (skipped if absent)")
    ap.add_argument("--measure", choices=["pipeline", "cv2_decode", "cv2_same_work"], help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tfr", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # a child process: one measurement, one JSON line
        print(json.dumps(measure(args.measure, args.src, args.tfr, args.batches, args.warmup)))
        return

    results = {"cpu_count": os.cpu_count(), "batch": BATCH, "load_average_before": os.getloadavg(), "sizes": {}}
    for images in [int(n) for n in args.images.split(",")]:
        src, tfr = make_dataset(images, Path(tempfile.mkdtemp(prefix="bench_pipeline.")))
        runs = {kind: [] for kind in ("cv2_decode", "cv2_same_work", "pipeline")}
        for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every kind
            for kind in runs:
                runs[kind].append(_child([sys.executable, __file__, "--measure", kind, "--src", str(src),
                                          "--tfr", str(tfr), "--batches", str(args.batches), "--warmup", str(args.warmup)]))
                print(f"{images:>7} images  {kind:<14} {runs[kind][-1]['img_s']:>8,.0f} images/s  "
                      f"peak RSS {runs[kind][-1]['peak_rss_mb']:,.0f} MB", file=sys.stderr, flush=True)
        row = {kind: {"img_s": statistics.median(r["img_s"] for r in rs), "runs": [round(r["img_s"]) for r in rs],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)} for kind, rs in runs.items()}
        if args.reference_python.exists():
            row["insightface"] = _child([str(args.reference_python), str(REPO / "benchmarks" / "insightface_loader.py"),
                                         "--rec", str(src), "--batches", str(args.batches), "--warmup", str(args.warmup),
                                         "--workers", "2", "--batch", str(BATCH)])
            print(f"{images:>7} images  insightface    {row['insightface']['img_s']:>8,.0f} images/s", file=sys.stderr)
        pipe = row["pipeline"]["img_s"]
        row["ratios"] = {f"pipeline_over_{k}": round(pipe / row[k]["img_s"], 2) for k in row if k != "pipeline"}
        results["sizes"][images] = row
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
