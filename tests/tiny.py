"""Small things many test files build: a converted sample dataset, a small backbone saved as a model,
and a finite-difference gradient for checking hand-written ones.

One definition here instead of a copy per test file (tests/conftest.py exposes the dataset as the
module-scoped fixture `data`).
"""

import numpy as np


def make_tiny_dataset(root, *, num_identities=8, images_per_identity=8, pairs_per_set=20, num_shards=None,
                      **sample_options):
    """The embedded sample at a tiny size, converted: `root/data` (its source in `root/src`)."""
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import make_sample_dataset

    src = make_sample_dataset(root / "src", num_identities=num_identities, images_per_identity=images_per_identity,
                              pairs_per_set=pairs_per_set, **sample_options)
    convert_recordio(src, root / "data", num_shards=num_shards, progress=False)
    return root / "data"


def tiny_backbone():
    """A width-0.25 r18 with 32-D embeddings: a real backbone of ours, small enough to save and load fast."""
    from face_recognition_tf.models import build_backbone

    return build_backbone("r18", embedding_size=32, width_multiplier=0.25)


def finite_difference_grad(f, a, h=1e-6):
    """d f / d a by central differences, element by element (float64 references of gradients)."""
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (f(up) - f(down)) / (2 * h)
    return grad
