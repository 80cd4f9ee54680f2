"""Helpers for the issue-10 tests (split, calibrate, report): a tiny model folder and synthetic people.

The model is an untrained MobileFaceNet at width 0.25 with 32-D embeddings, saved the way `frtf import`
and a finished run leave a model folder (backbone.json + embedding.keras), so every command takes it.
People are the sample dataset's synthetic faces (aligned 112x112 crops) with little nuisance between
photos, so even random weights place a person's photos together: tests check the plumbing and the
arithmetic, not a model's quality.
"""

import json
from pathlib import Path

import numpy as np

from face_recognition_tf.data.synthetic.synthetic_faces import Nuisance, render, sample_identity

EASY = Nuisance(rotation_deg=1.0, scale=0.01, shift_px=0.5, yaw=0.01, expression=0.05, light_gradient=0.0,
                brightness=(1.0, 1.0), color_cast=0.0, clutter=(0, 1), occlusion_prob=0.0, glasses_off_prob=0.0,
                blur_prob=0.0, noise_std=2.0, jpeg_quality=(95, 95))
SPEC = {"name": "mobilefacenet", "embedding_size": 32, "width_multiplier": 0.25}


def tiny_model_folder(path) -> Path:
    """MODEL/backbone.json + MODEL/embedding.keras of an untrained tiny MobileFaceNet."""
    from face_recognition_tf.models import build_backbone

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    spec = dict(SPEC)
    name = spec.pop("name")
    build_backbone(name, **spec).save(path / "embedding.keras")
    (path / "backbone.json").write_text(json.dumps(SPEC))
    return path


def synthetic_people(root, counts, *, seed=0, prefix="person", nuisance=EASY) -> Path:
    """root/<prefix>_NN/KK.jpg: len(counts) synthetic people with counts[i] aligned photos each."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i, count in enumerate(counts):
        identity = sample_identity(rng)
        folder = root / f"{prefix}_{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            (folder / f"{k:02d}.jpg").write_bytes(render(identity, rng, nuisance))
    return root
