"""Conversion speed vs `cp`, and peak memory (issue 2 figure).

Builds an insightface-layout .rec of N face JPEGs (default 80,000; photos of the synthetic sample
reused), and one of N/4, both in the page cache.  For each size it times `cp` of the .rec and
`frtf convert` (a fresh process, default settings), best of --repeat runs.  The *marginal* cost
per image, (t(N) - t(N/4)) / (3N/4), removes interpreter start-up and fixed costs from both.
Peak RSS is the largest resident set of the converter's processes (parent or any worker); CPU
seconds (user + system, all processes) are reported too since wall time suffers on a shared CPU.
With --naive it also times the plain loop the goal is measured against: one process,
tf.train.Example + tf.io.TFRecordWriter per record.

    python benchmarks/bench_convert.py [--images 80000] [--repeat 3] [--naive] [--workdir DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from face_recognition_tf.data.synthetic import synthetic_faces as faces  # noqa: E402
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset  # noqa: E402

NAIVE = r"""
import sys, time, tensorflow as tf
from face_recognition_tf.data.formats.recordio import RecordIOReader, unpack
src, dst = sys.argv[1], sys.argv[2]
t = time.perf_counter()
reader = RecordIOReader(src + "/train.rec", src + "/train.idx")
with tf.io.TFRecordWriter(dst) as w:
    for _, record in reader.scan():
        h, img = unpack(record)
        if not img:
            continue
        label = int(h.label if h.flag == 0 else h.label[0])
        ex = tf.train.Example(features=tf.train.Features(feature={
            "image_raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[img])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
        w.write(ex.SerializeToString())
print(time.perf_counter() - t)
"""


def make_rec(folder: Path, n: int, pool: list[bytes], per_class: int = 20) -> Path:
    items = ((i // per_class, pool[i % len(pool)]) for i in range(n))
    write_rec_dataset(folder, items, num_classes=(n + per_class - 1) // per_class)
    subprocess.run(["cat", str(folder / "train.rec"), str(folder / "train.idx")], stdout=subprocess.DEVNULL, check=True)
    return folder


RSS_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_maxrss, r.ru_utime + r.ru_stime)"
)


def timed(cmd) -> tuple[float, float, float]:
    """(wall s, peak RSS MiB of the largest of the command's processes, CPU s of all of them).

    A small wrapper process runs the command so that RUSAGE_CHILDREN covers exactly its tree.
    """
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rss, cpu = out.stdout.split()[-2:]
    return wall, int(rss) / 1024, float(cpu)


def best(cmd_factory, repeat, cleanup):
    runs = []
    for _ in range(repeat):
        cleanup()
        runs.append(timed(cmd_factory()))
    return min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=80_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive", action="store_true", help="also time the tf.train.Example + TFRecordWriter loop")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert."))
    rng = np.random.default_rng(0)
    people = [faces.sample_identity(rng) for _ in range(50)]
    pool = [faces.render(people[i % 50], rng) for i in range(500)]
    sizes = {"N": args.images, "N/4": args.images // 4}
    result = {"images": args.images, "mean_jpeg_bytes": int(np.mean([len(p) for p in pool])),
              "cpu_count": os.cpu_count(), "runs": {}}
    for key, n in sizes.items():
        src = make_rec(work / f"src{n}", n, pool)
        out, copy = work / f"out{n}", work / f"copy{n}.rec"
        rec_bytes = (src / "train.rec").stat().st_size
        cp_t, _, cp_cpu = best(lambda: ["cp", str(src / "train.rec"), str(copy)], args.repeat, lambda: copy.unlink(missing_ok=True))
        conv_cmd = [sys.executable, "-m", "face_recognition_tf", "convert", str(src), str(out), "--no-progress"]
        conv_t, rss, conv_cpu = best(lambda: conv_cmd, args.repeat, lambda: shutil.rmtree(out, ignore_errors=True))
        run = {"n": n, "rec_mb": round(rec_bytes / 2**20, 1), "cp_s": round(cp_t, 3), "convert_s": round(conv_t, 3),
               "cp_cpu_s": round(cp_cpu, 3), "convert_cpu_s": round(conv_cpu, 3),
               "convert_peak_rss_mb": round(rss, 1)}
        if args.naive:
            naive_t, _, _ = best(lambda: [sys.executable, "-c", NAIVE, str(src), str(work / "naive.tfrecord")], 1,
                              lambda: None)
            run["naive_s"] = round(naive_t, 3)
        result["runs"][key] = run
        print(json.dumps(run), flush=True)
    a, b = result["runs"]["N"], result["runs"]["N/4"]
    dn = a["n"] - b["n"]
    result["marginal_us_per_image"] = {"cp": round((a["cp_s"] - b["cp_s"]) / dn * 1e6, 2),
                                       "convert": round((a["convert_s"] - b["convert_s"]) / dn * 1e6, 2)}
    result["convert_over_cp_marginal"] = round((a["convert_s"] - b["convert_s"]) / max(a["cp_s"] - b["cp_s"], 1e-9), 2)
    result["convert_over_cp_total_N"] = round(a["convert_s"] / a["cp_s"], 2)
    result["marginal_cpu_us_per_image"] = {"cp": round((a["cp_cpu_s"] - b["cp_cpu_s"]) / dn * 1e6, 2),
                                           "convert": round((a["convert_cpu_s"] - b["convert_cpu_s"]) / dn * 1e6, 2)}
    result["load_average_after"] = os.getloadavg()
    if args.naive:
        result["marginal_us_per_image"]["naive"] = round((a["naive_s"] - b["naive_s"]) / dn * 1e6, 2)
        result["naive_over_cp_marginal"] = round((a["naive_s"] - b["naive_s"]) / max(a["cp_s"] - b["cp_s"], 1e-9), 2)
    print(json.dumps(result, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
