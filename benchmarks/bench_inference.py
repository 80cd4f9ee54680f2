"""Where the time of `frtf verify/identify` goes: detection, alignment, embedding, flip, TFLite.

Prints a JSON object with absolute timings and the ratios that carry over to other machines:
  flip_cost             aligned-crop throughput without flip / with flip (insightface's protocol runs 2x)
  photo_vs_crop         time per photo (MTCNN + align + embed) / time per aligned crop (embed, flip)
  detect_share          share of the photo time spent in MTCNN
  tflite_vs_keras_b1    TFLite single-image latency / Keras (tf.function) single-image latency

Usage: python benchmarks/bench_inference.py [--backbone r18] [--embedding-size 512] [--repeats 20]
The model has random weights: timings do not depend on the weights.  The photo is matplotlib's
grace_hopper.jpg sample (512x600).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up (tracing, allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(sorted(times)[len(times) // 2])  # median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="r18")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import numpy as np
    import tensorflow as tf
    from matplotlib import cbook

    from face_recognition_tf.export import export_model
    from face_recognition_tf.faces import FaceDetector, align_face, read_image
    from face_recognition_tf.inference import FaceRecognizer
    from face_recognition_tf.models import build_backbone

    model = build_backbone(args.backbone, embedding_size=args.embedding_size)
    crops = np.random.default_rng(0).integers(0, 256, (args.batch, 112, 112, 3)).astype(np.uint8)
    with_flip = FaceRecognizer(model, detector=None, flip=True, batch_size=args.batch)
    without_flip = FaceRecognizer(model, detector=None, flip=False, batch_size=args.batch)
    t_flip = _best_of(lambda: with_flip.embed_aligned(crops), args.repeats) / args.batch
    t_noflip = _best_of(lambda: without_flip.embed_aligned(crops), args.repeats) / args.batch

    photo = read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    detector = FaceDetector()
    t_detect = _best_of(lambda: detector.detect_one(photo), args.repeats)
    face = detector.detect_one(photo)
    t_align = _best_of(lambda: align_face(photo, face.landmarks), args.repeats)
    single = FaceRecognizer(model, detector=detector, flip=True, batch_size=1)
    t_photo = _best_of(lambda: single.embed(photo), args.repeats)
    t_crop_b1 = _best_of(lambda: single.embed_aligned(crops[:1]), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        tflite_path = export_model(model, Path(tmp) / "m.tflite")
        interpreter = tf.lite.Interpreter(model_path=str(tflite_path), num_threads=os.cpu_count())
        runner = interpreter.get_signature_runner("serving_default")
        x1 = (crops[:1].astype(np.float32) - 127.5) / 128.0
        t_tflite = _best_of(lambda: runner(images=x1), args.repeats)
    t_keras = _best_of(lambda: without_flip.embed_aligned(crops[:1]), args.repeats)

    print(json.dumps({
        "backbone": args.backbone,
        "embedding_size": args.embedding_size,
        "cpu_count": os.cpu_count(),
        "gpu": bool(tf.config.list_physical_devices("GPU")),
        "seconds": {
            "crop_embed_flip_per_image_b%d" % args.batch: round(t_flip, 5),
            "crop_embed_noflip_per_image_b%d" % args.batch: round(t_noflip, 5),
            "mtcnn_detect_per_photo": round(t_detect, 4),
            "align_per_face": round(t_align, 6),
            "photo_pipeline_b1": round(t_photo, 4),
            "crop_embed_flip_b1": round(t_crop_b1, 4),
            "keras_b1_noflip": round(t_keras, 4),
            "tflite_b1": round(t_tflite, 4),
        },
        "ratios": {
            "flip_cost": round(t_flip / t_noflip, 2),
            "photo_vs_crop": round(t_photo / t_crop_b1, 2),
            "detect_share": round(t_detect / t_photo, 2),
            "tflite_vs_keras_b1": round(t_tflite / t_keras, 2),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
