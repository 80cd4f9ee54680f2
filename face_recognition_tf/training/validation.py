"""Verification accuracy on the .bin pair sets beside the training data, every V optimizer updates.

The pair sets are decoded once when training starts (LFW is 12,000 images; decoding each time would
cost more than the evaluation).  Scores come from the evaluation package's metric (10-fold accuracy
with flipped-image embeddings, insightface's protocol), so the numbers logged during training are the
numbers `frtf evaluate` reports later.  The best model is chosen by the mean accuracy over the sets.
A person's own held-out pairs can be too few for 10 folds (`frtf make-pairs --folds K`):
`validation.folds` says how many, and a set that cannot fill them is refused before the first update
instead of failing at the first validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Validator:
    def __init__(self, pair_sets: dict, *, batch_size: int = 64, max_pairs: int = 0, folds: int = 10):
        self.pair_sets = {}
        self.folds = int(folds)
        for name, value in pair_sets.items():
            if isinstance(value, (str, Path)):
                from face_recognition_tf.data import load_bin

                images, issame = load_bin(value)
            else:
                images, issame = value
            issame = np.asarray(issame, dtype=bool)
            if max_pairs and len(issame) > max_pairs:
                keep = _spread_subset(issame, max_pairs)
                idx = np.stack([2 * keep, 2 * keep + 1], axis=1).reshape(-1)
                images, issame = images[idx], issame[keep]
            _check_folds(value if isinstance(value, (str, Path)) else name, issame, self.folds)
            self.pair_sets[name] = (images, issame)
        self.batch_size = int(batch_size)
        self._embedder = None  # traced once per model, reused every validation

    @classmethod
    def from_data_dir(cls, data_dir, names, *, batch_size: int = 64, max_pairs: int = 0, folds: int = 10):
        """Pair sets named `names` (or all, if empty) found beside the data; None when there are none."""
        from face_recognition_tf.data import find_bins

        found = find_bins(data_dir, list(names) if names else None)
        if not found:
            return None
        return cls(found, batch_size=batch_size, max_pairs=max_pairs, folds=folds)

    @property
    def names(self) -> list[str]:
        return list(self.pair_sets)

    def __call__(self, model, progress: bool = False) -> dict[str, float]:
        """{set name: mean K-fold accuracy} plus 'mean' over the sets.

        `progress` shows a bar per pair set: validating LFW-sized sets takes long enough on a CPU that
        a training bar standing still at 100% looks like a hang.
        """
        from face_recognition_tf.evaluation import evaluate_model
        from face_recognition_tf.evaluation.embed import Embedder

        # Training validates the same backbone every V steps: keep its traced embedding function
        # (the weights are variables, so the trace sees every update) instead of re-tracing each time.
        if self._embedder is None or self._embedder.model is not model:
            self._embedder = Embedder(model)
        results = evaluate_model(self._embedder, self.pair_sets, batch_size=self.batch_size, progress=progress,
                                 folds=self.folds)
        scores = {name: float(result.accuracy_mean) for name, result in results.items()}
        scores["mean"] = float(np.mean(list(scores.values()))) if scores else 0.0
        return scores


def _spread_subset(issame: np.ndarray, max_pairs: int) -> np.ndarray:
    """Indices of `max_pairs` whole pairs, same and different in the file's proportion, each kind spread
    evenly over the file and kept in file order, so the subset keeps the set's fold layout (insightface's
    sets are ordered fold by fold) and no fold is left with a single kind by an unlucky stride."""
    same, different = np.flatnonzero(issame), np.flatnonzero(~issame)
    n_same = int(round(max_pairs * len(same) / len(issame)))
    n_same = min(len(same), max(n_same, 1 if len(same) else 0), max_pairs - (1 if len(different) else 0))
    picks = [kind[np.linspace(0, len(kind) - 1, n).astype(int)] for kind, n in
             ((same, n_same), (different, max_pairs - n_same)) if n > 0]
    return np.sort(np.concatenate(picks))


def _check_folds(where, issame: np.ndarray, folds: int) -> None:
    """Every one of the `folds` contiguous folds needs a same and a different pair (the metric's protocol)."""
    from face_recognition_tf.errors import ConfigError
    from face_recognition_tf.evaluation.verification import folds_hold_both_kinds

    if not folds_hold_both_kinds(issame, folds):
        raise ConfigError(
            f"{where}: {int(issame.sum())} same and {int((~issame).sum())} different pairs cannot fill "
            f"validation.folds={folds} folds with both kinds; set validation.folds lower (as the set's "
            "make-pairs --folds) or validation.max_pairs higher")
