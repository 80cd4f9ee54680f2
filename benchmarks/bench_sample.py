"""How hard and how learnable the embedded sample is (the quickstart depends on both).

(a) raw-pixel embeddings (and random-projection features) verified with the 10-fold protocol:
    should be poor, so an untrained model scores low;
(b) a tiny Keras CNN + softmax trained for a fixed time budget on the training identities:
    its embeddings of the held-out pair sets should verify well.
Also times making the sample.  The 10-fold checker here is a simple local one (the real metrics
live in face_recognition_tf.evaluation).

    python benchmarks/bench_sample.py [--train-seconds 120] [--out DIR]
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

import numpy as np  # noqa: E402

from face_recognition_tf.data import load_bin  # noqa: E402
from face_recognition_tf.data.synthetic.sample import make_sample_dataset  # noqa: E402


def ten_fold_accuracy(emb: np.ndarray, issame: np.ndarray, folds: int = 10) -> float:
    """Cosine similarity of L2-normalised embeddings; threshold picked on 9 folds, scored on the 10th."""
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = np.sum(emb[0::2] * emb[1::2], axis=1)
    n = len(issame)
    fold_of = np.arange(n) * folds // n
    accs = []
    for f in range(folds):
        train, test = fold_of != f, fold_of == f
        cands = np.unique(sims[train])
        best = max(cands, key=lambda t: np.mean((sims[train] >= t) == issame[train]))
        accs.append(np.mean((sims[test] >= best) == issame[test]))
    return float(np.mean(accs))


def raw_pixel_scores(sample_dir: Path) -> dict:
    out = {}
    for name in ("lfw", "cfp_fp", "agedb_30"):
        images, issame = load_bin(sample_dir / f"{name}.bin")
        x = (images.reshape(len(images), -1).astype(np.float32) - 127.5) / 128
        proj = np.random.default_rng(0).normal(size=(x.shape[1], 512)).astype(np.float32)
        out[name] = {"raw_pixels": ten_fold_accuracy(x - x.mean(0), issame),
                     "random_projection": ten_fold_accuracy(x @ proj, issame)}
    return out


def tiny_cnn_scores(sample_dir: Path, seconds: float, batch: int = 64) -> dict:
    import tensorflow as tf
    import keras

    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.input.pipeline import build_train_dataset, normalize_images

    conv = Path(tempfile.mkdtemp()) / "tfr"
    manifest = convert_recordio(sample_dir, conv, progress=False)
    # the pipeline ships uint8; this Keras model has no normalisation of its own, so normalise here
    ds = build_train_dataset(conv, batch, augment={"flip": True}, seed=0).map(lambda x, y: (normalize_images(x), y))
    inp = keras.Input((112, 112, 3))
    x = inp
    for filters in (16, 32, 64, 96):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    emb = keras.layers.Dense(128, name="embedding")(x)
    embedder = keras.Model(inp, emb)
    logits = keras.layers.Dense(manifest["num_classes"])(keras.layers.BatchNormalization()(emb))
    model = keras.Model(inp, logits)
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    def score():
        res = {}
        for name in ("lfw", "cfp_fp", "agedb_30"):
            images, issame = load_bin(sample_dir / f"{name}.bin")
            x = normalize_images(images)
            e = embedder.predict(x, batch_size=256, verbose=0) + embedder.predict(x[:, :, ::-1], batch_size=256, verbose=0)
            res[name] = ten_fold_accuracy(e, issame)
        return res

    before = score()
    start = time.time()

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if time.time() - start > seconds:
                self.model.stop_training = True

    hist = model.fit(ds, steps_per_epoch=50, epochs=100000, verbose=0, callbacks=[Budget()])
    steps = 50 * len(hist.history["loss"])
    history = [round(float(a), 3) for a in hist.history["accuracy"]]
    return {"before": before, "after": score(), "steps": steps, "batch": batch,
            "train_seconds": round(time.time() - start, 1), "train_accuracy": history[-3:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=120)
    ap.add_argument("--out", default=None, help="where to make the sample (default: a temporary folder)")
    ap.add_argument("--skip-cnn", action="store_true")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "sample"
    t = time.perf_counter()
    make_sample_dataset(out)
    result = {"make_seconds": round(time.perf_counter() - t, 2), "raw": raw_pixel_scores(out)}
    print(json.dumps(result, indent=1), flush=True)
    if not args.skip_cnn:
        result["tiny_cnn"] = tiny_cnn_scores(out, args.train_seconds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
