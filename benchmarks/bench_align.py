"""Align throughput: `frtf align` (its folder pipeline, in-process and in worker processes) against aligning
the photos one by one in a plain loop, the way the seed projects did (issue 10's figure).

Photos are real photographs that packages ship (matplotlib's grace_hopper.jpg, scikit-image's astronaut and
camera), each turned, scaled, relit and re-compressed into --per-person phone-sized photos (--size pixels on
the longer side), one identity folder per source.  Every variant aligns the same folder into a fresh OUT:

* loop: one `FaceDetector` built once, then for each photo read -> detect -> `warp_face` -> `cv2.imwrite`
  (no report, no resume, no atomic writes: the least a script can do);
* `align_folder(workers=1)`: the command's pipeline in this process (detection on a <= --detect-size copy,
  atomic crops, the journal, report and contact sheets);
* `align_folder(workers=N)`: the same in N spawned worker processes, each paying TensorFlow's start-up.

Photos per second are over the whole run including start-up (what a person waits for), and each variant's
crops are checked to be the same faces (same count of aligned photos).

    python benchmarks/bench_align.py [--per-person 20] [--size 1600] [--workers 2] [--out output/bench_align]
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_photos(root: Path, per_person: int, size: int, seed: int = 0) -> int:
    import cv2
    import numpy as np
    import skimage.data
    from matplotlib import cbook

    rng = np.random.default_rng(seed)
    sources = {
        "grace": cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))),
        "eileen": cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR),
        "cameraman": cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2BGR),
    }
    for name, image in sources.items():
        scale = size / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        h, w = image.shape[:2]
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_person):
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.85, 1.15))
            matrix[:, 2] += rng.uniform(-0.02, 0.02, 2) * size
            photo = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
            photo = np.clip(photo * rng.uniform(0.75, 1.25), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{k:03d}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return per_person * len(sources)


def loop(src: Path, out: Path) -> int:
    """The seeds' way: one detector, then a Python loop over the photos."""
    import cv2

    from face_recognition_tf.faces import FaceDetector
    from face_recognition_tf.faces.align import warp_face
    from face_recognition_tf.faces.images import list_images, read_rgb

    detector = FaceDetector(min_face_size=40)
    done = 0
    for person in sorted(p for p in src.iterdir() if p.is_dir()):
        (out / person.name).mkdir(parents=True, exist_ok=True)
        for path in list_images(person):
            image = read_rgb(path)
            faces = detector.detect(image)
            if not faces:
                continue
            face = max(faces, key=lambda f: f.area)
            crop = warp_face(image, face.landmarks, 112)
            cv2.imwrite(str(out / person.name / f"{path.stem}.jpg"), crop[:, :, ::-1])
            done += 1
    return done


def pipeline(src: Path, out: Path, workers: int) -> int:
    from face_recognition_tf.faces.align_folder import align_folder

    return int(align_folder(src, out, workers=workers, progress=False)["counts"].get("ok", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-person", type=int, default=20)
    parser.add_argument("--size", type=int, default=1600, help="longer side of each photo, pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="output/bench_align")
    args = parser.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    photos = make_photos(out / "photos", args.per_person, args.size)
    from face_recognition_tf.quiet_startup import import_tensorflow_quietly

    import_tensorflow_quietly()  # every variant starts with TensorFlow loaded in this process
    variants = [("loop (one by one)", lambda o: loop(out / "photos", o)),
                ("align_folder, workers=1", lambda o: pipeline(out / "photos", o, 1)),
                (f"align_folder, workers={args.workers}", lambda o: pipeline(out / "photos", o, args.workers))]
    rows = []
    for name, run in variants:
        target = out / f"aligned_{len(rows)}"
        start = time.perf_counter()
        aligned = run(target)
        seconds = time.perf_counter() - start
        rows.append({"variant": name, "photos": photos, "aligned": aligned, "seconds": round(seconds, 2),
                     "photos_per_s": round(photos / seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["photos_per_s"]
    print(f"\n{photos} photos ({args.per_person} per person, {args.size} px), {os.cpu_count()} CPUs\n")
    print("| variant | aligned | s | photos/s | x loop |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['aligned']}/{row['photos']} | {row['seconds']:.1f} | "
              f"{row['photos_per_s']:.2f} | {row['photos_per_s'] / base:.2f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
