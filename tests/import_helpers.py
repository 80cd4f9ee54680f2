"""Shared by the `frtf import` / insightface-layout tests (test_import_*.py, test_insightface_layout.py).

Images: real-ish face-like crops (matplotlib's grace_hopper.jpg photo cut at several places and scales,
when matplotlib ships it) mixed with smooth random images, uint8 RGB NHWC.  Embedding comparisons are
made on L2-normalised embeddings, the quantity `frtf import` promises to preserve.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TOL = 1e-4
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
OUR_MEAN, OUR_STD = 127.5, 128.0


def torch_reference():
    """tests/torch_reference.py as a module (call only after pytest.importorskip("torch"))."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import torch_reference as ref

    return ref


def _photo():
    try:
        from matplotlib import cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    except Exception:  # matplotlib or its sample data missing
        return None


def smooth_images(n, size=112, seed=0):
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
    images = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)
    images += rng.normal(0, 12, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def face_images(n=4, size=112, seed=0):
    """n uint8 (size, size, 3) RGB images: crops of a real photo (odd indices: smooth random images)."""
    from PIL import Image

    photo = _photo()
    rng = np.random.default_rng(seed)
    smooth = smooth_images(n, size, seed)
    out = []
    for i in range(n):
        if photo is None or i % 2 == 1:
            out.append(smooth[i])
            continue
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        crop = np.asarray(crop)
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.ascontiguousarray(np.stack(out)).astype(np.uint8)


def l2(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def max_l2_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(l2(a) - l2(b))))


def assert_same_embeddings(ours, reference, tol=TOL):
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(reference))
    # the embeddings must be worth comparing: not constant across images
    assert np.std(l2(reference), axis=0).max() > 1e-3
    diff = max_l2_diff(ours, reference)
    assert diff <= tol, f"max |difference| of L2-normalised embeddings {diff:.3e} > {tol:g}"
    return diff


def our_input(images_uint8):
    """Our models' input: (x - 127.5) / 128, RGB NHWC float32."""
    return (np.asarray(images_uint8, np.float32) - OUR_MEAN) / OUR_STD


def keras_embed(model, images_uint8):
    return np.asarray(model(our_input(images_uint8), training=False), np.float32)


def folder_embed(folder, images_uint8):
    """Embeddings of a model folder loaded the way every command loads it."""
    from face_recognition_tf.model_io import expand_model_paths, load_embedding_model

    assert expand_model_paths([str(folder)]) == [str(folder)]
    return keras_embed(load_embedding_model(folder), images_uint8)


def recognizer_embed(folder, images_uint8):
    from face_recognition_tf import FaceRecognizer

    recognizer = FaceRecognizer(str(folder), detector=None, flip=False)
    return recognizer.embed_aligned(np.asarray(images_uint8), normalize=False)


def read_json(path):
    import json

    return json.loads(Path(path).read_text())


def leftovers(out):
    """Hidden `.OUT.*.tmp` work folders/files left beside OUT."""
    out = Path(out)
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*.tmp"))


def subprocess_env():
    env = dict(os.environ)
    paths = [str(REPO), str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_frtf(*args, timeout=300):
    import subprocess

    return subprocess.run([sys.executable, "-m", "face_recognition_tf", *map(str, args)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=timeout)
