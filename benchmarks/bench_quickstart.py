"""`frtf quickstart` end to end: verification accuracy before/after training, wall and CPU time.

The CPU time (user + system of this process) is printed beside the wall time because the figure that
matters is "on 2 CPU cores": on a shared machine wall time overstates it, while CPU time / 2 is what
the same work takes on 2 cores of its own (TensorFlow keeps both busy).

    python benchmarks/bench_quickstart.py [--out output/bench_quickstart] [key=value ...]
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="output/bench_quickstart")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from face_recognition_tf.cli import main as frtf

    start = time.perf_counter()
    argv = ["quickstart", "--out", args.out, "--no-progress", *args.overrides]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps)]
    code = frtf(argv)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = json.loads((Path(args.out) / "quickstart.json").read_text()) if code == 0 else {}
    result = {
        "exit_code": code, "wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "cpu_seconds_per_core_on_2_cores": (usage.ru_utime + usage.ru_stime) / 2,
        "load_average_1min_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "mean_before": report.get("mean_before"), "mean_after": report.get("mean_after"),
        "before": report.get("before"), "after": report.get("after"), "steps": report.get("steps"),
        "train_seconds": report.get("train_seconds"), "overrides": args.overrides,
    }
    print(json.dumps(result, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
