"""Training input pipeline throughput vs a single-process cv2.imdecode loop (issue 2 figure).

Converts a dataset of N face JPEGs (photos of the synthetic sample, default 20,000), then measures
images/s of `build_train_dataset(batch_size=128)` (decode + random flip + normalise, the default
augmentation) over --batches batches after --warmup batches, against two single-process
references over the same JPEGs: a bare `cv2.imdecode` loop, and the loop doing the same work
(decode, BGR->RGB, random flip, (x - 127.5) / 128, stack into batches of 128).

    python benchmarks/bench_pipeline.py [--images 20000] [--batches 150] [--warmup 20]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from face_recognition_tf.data import synthetic_faces as faces  # noqa: E402
from face_recognition_tf.data.convert import convert_recordio  # noqa: E402
from face_recognition_tf.data.rec_layout import write_rec_dataset  # noqa: E402


def cv2_loop(jpegs, full: bool, batch: int = 128) -> float:
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    if not full:
        for j in jpegs:
            cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
    else:
        for i in range(0, len(jpegs) - batch + 1, batch):
            out = np.empty((batch, 112, 112, 3), np.float32)
            for k, j in enumerate(jpegs[i : i + batch]):
                img = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
                if rng.random() < 0.5:
                    img = img[:, ::-1]
                out[k] = (img.astype(np.float32) - 127.5) / 128
    return len(jpegs) / (time.perf_counter() - t)


def pipeline_rate(data_dir, batches: int, warmup: int, batch: int = 128) -> float:
    from face_recognition_tf.data.pipeline import build_train_dataset

    it = iter(build_train_dataset(data_dir, batch, seed=0))
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
    _ = x.numpy()
    return batches * batch / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline."))
    rng = np.random.default_rng(0)
    people = [faces.sample_identity(rng) for _ in range(100)]
    pool = [faces.render(people[i % 100], rng) for i in range(2000)]
    items = [(i // 20, pool[i % len(pool)]) for i in range(args.images)]
    write_rec_dataset(work / "src", items)
    convert_recordio(work / "src", work / "tfr", progress=False)
    jpegs = [j for _, j in items]
    result = {"images": args.images, "mean_jpeg_bytes": int(np.mean([len(j) for j in pool])), "batch": 128,
              "cpu_count": os.cpu_count()}
    result["cv2_imdecode_loop_img_s"] = round(max(cv2_loop(jpegs, False) for _ in range(2)))
    result["cv2_full_loop_img_s"] = round(cv2_loop(jpegs, True))
    result["pipeline_img_s"] = round(max(pipeline_rate(work / "tfr", args.batches, args.warmup) for _ in range(2)))
    result["pipeline_over_imdecode_loop"] = round(result["pipeline_img_s"] / result["cv2_imdecode_loop_img_s"], 2)
    result["pipeline_over_full_loop"] = round(result["pipeline_img_s"] / result["cv2_full_loop_img_s"], 2)
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
