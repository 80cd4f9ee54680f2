"""insightface's verification metric (LFW, CFP, AgeDB .bin pair sets), vectorised.

Accuracy figures in face recognition papers and model zoos all come from one script: insightface's
`verification.py`.  A number is only comparable with those tables if it is computed exactly the same way,
down to the float64 threshold grid and the tie-breaking, so this module reproduces that protocol bit for
bit (checked against a plain-loop reference and sklearn in tests/test_verification_metric.py):

* embeddings of an image and of its horizontal flip are summed (float64), then L2-normalised with
  sklearn's `normalize`; the pair score is the squared Euclidean distance;
* thresholds `i * 0.01` (i < 400); a pair is called "same" when `distance < threshold` (strict);
* contiguous folds sized like `KFold(n_splits, shuffle=False)`; the best threshold is chosen on the
  training folds (first best on ties) and accuracy measured on the held-out fold; population std;
* VAL@FAR=1e-3 with thresholds `i * 0.001` (i < 4000) and the threshold interpolated the way
  `scipy.interpolate.interp1d(far, thresholds, kind="slinear")` did up to scipy 1.8.1, duplicate FARs
  included (current scipy refuses them, which is why insightface's own script now fails);
* XNorm, the mean L2 norm of every unnormalised embedding row (image and flip).

Instead of insightface's loop over 400 (and 4000) thresholds per fold, each pair's distance is located on
the threshold grid once (`searchsorted`), and per-fold cumulative histograms give every threshold's
counts at once.  Counting is exact integer arithmetic, so the results are identical, not approximate.

Beyond insightface: exact ROC over all pairs (sklearn), AUC, EER, TAR at FAR 1e-1..1e-4 (only where there
are enough different-identity pairs to measure that FAR), cosine-similarity figures, and the accuracy of
the un-flipped embeddings alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from face_recognition_tf.errors import DatasetError

ACCURACY_THRESHOLDS = np.arange(400, dtype=np.float64) * 0.01  # == np.arange(0, 4, 0.01), bit for bit
VAL_THRESHOLDS = np.arange(4000, dtype=np.float64) * 0.001  # == np.arange(0, 4, 0.001)
VAL_FAR_TARGET = 1e-3
TAR_FAR_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4)


class VerificationInputError(DatasetError, ValueError):
    """Embeddings or labels the protocol cannot be computed on (shape, NaN/Inf, too few pairs).

    A `DatasetError` so the command line reports it in one line, and a `ValueError` for code that
    calls the metric directly with arrays.
    """


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    """Every figure of one pair set; per-fold values and curves as tuples so the result stays immutable."""

    num_pairs: int
    num_folds: int
    flipped: bool
    accuracy_mean: float
    accuracy_std: float
    accuracies: tuple[float, ...]
    best_thresholds: tuple[float, ...]
    threshold_mean: float
    val_mean: float
    val_std: float
    far_mean: float
    auc: float
    eer: float
    tar_at_far: Mapping[float, float]
    xnorm: float
    accuracy_noflip_mean: float | None
    accuracy_noflip_std: float | None
    cosine_threshold: float  # "same" when cosine similarity > this (the mean best distance threshold)
    cosine_same_mean: float
    cosine_diff_mean: float
    roc_far: tuple[float, ...] = dataclasses.field(repr=False)
    roc_tar: tuple[float, ...] = dataclasses.field(repr=False)
    grid_tpr: tuple[float, ...] = dataclasses.field(repr=False)  # insightface's ROC: held-out folds' mean
    grid_fpr: tuple[float, ...] = dataclasses.field(repr=False)  # on the 0.01 threshold grid

    def to_dict(self, include_curves: bool = False) -> dict:
        """Plain JSON types: NaN becomes None, FAR keys become strings like "0.001"."""
        curves = {"roc_far", "roc_tar", "grid_tpr", "grid_fpr"}
        out = {}
        for field in dataclasses.fields(self):
            if field.name in curves and not include_curves:
                continue
            value = getattr(self, field.name)
            if field.name == "tar_at_far":
                value = {format(far, "g"): _plain(tar) for far, tar in value.items()}
            elif isinstance(value, tuple):
                value = [_plain(v) for v in value]
            else:
                value = _plain(value)
            out[field.name] = value
        return out


def _plain(value):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def fold_sizes(num_pairs: int, folds: int) -> np.ndarray:
    """Sizes of sklearn's `KFold(folds, shuffle=False)` folds: the first `num_pairs % folds` get one more."""
    sizes = np.full(folds, num_pairs // folds, dtype=np.int64)
    sizes[: num_pairs % folds] += 1
    return sizes


def folds_hold_both_kinds(issame, folds: int) -> bool:
    """Whether each of the `folds` contiguous folds has a same and a different pair, as the protocol's
    threshold choice and VAL/FAR need; make-pairs and training validation refuse sets that do not."""
    issame = np.asarray(issame, dtype=bool)
    if len(issame) < folds:
        return False
    bounds = np.cumsum(np.concatenate([[0], fold_sizes(len(issame), folds)]))
    return all(issame[a:b].any() and not issame[a:b].all() for a, b in zip(bounds, bounds[1:]))


def evaluate_embeddings(embeddings, issame, folds: int = 10, flip_embeddings=None) -> VerificationResult:
    """insightface's verification figures for embeddings in pair order `[a0, b0, a1, b1, ...]`.

    `flip_embeddings` (same shape) are the embeddings of the horizontally flipped images; when given
    they are added to `embeddings` before normalisation, exactly as insightface reports "Accuracy-Flip",
    and the un-flipped accuracy is reported as `accuracy_noflip_*`.
    """
    raw, issame = _check_inputs(embeddings, issame, folds, "embeddings")
    flips = None
    if flip_embeddings is not None:
        flips, _ = _check_inputs(flip_embeddings, issame, folds, "flip_embeddings")
        if flips.shape != raw.shape:
            raise VerificationInputError(
                f"flip_embeddings has shape {flips.shape} but embeddings has {raw.shape}; they must match"
            )

    from sklearn.preprocessing import normalize

    combined = normalize(raw + flips if flips is not None else raw.copy())
    dist, cosine = _pair_scores(combined)
    accuracies, best_thresholds, grid_tpr, grid_fpr = _accuracy_protocol(dist, issame, folds)
    val, far = _val_protocol(dist, issame, folds)

    noflip_mean = noflip_std = None
    if flips is not None:
        noflip_dist, _ = _pair_scores(normalize(raw.copy()))
        noflip_acc = _accuracy_protocol(noflip_dist, issame, folds)[0]
        noflip_mean, noflip_std = float(np.mean(noflip_acc)), float(np.std(noflip_acc))

    norms = np.sqrt(np.einsum("ij,ij->i", raw, raw))
    if flips is not None:
        norms = np.concatenate([norms, np.sqrt(np.einsum("ij,ij->i", flips, flips))])

    roc_far, roc_tar, auc, eer, tar_at_far = _roc_figures(-dist, issame)
    threshold_mean = float(np.mean(best_thresholds))
    return VerificationResult(
        num_pairs=int(issame.size),
        num_folds=int(folds),
        flipped=flips is not None,
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        accuracies=tuple(float(a) for a in accuracies),
        best_thresholds=tuple(float(t) for t in best_thresholds),
        threshold_mean=threshold_mean,
        val_mean=float(np.mean(val)),
        val_std=float(np.std(val)),
        far_mean=float(np.mean(far)),
        auc=auc,
        eer=eer,
        tar_at_far=tar_at_far,
        xnorm=float(np.mean(norms)),
        accuracy_noflip_mean=noflip_mean,
        accuracy_noflip_std=noflip_std,
        cosine_threshold=1.0 - threshold_mean / 2.0,
        cosine_same_mean=float(np.mean(cosine[issame])),
        cosine_diff_mean=float(np.mean(cosine[~issame])),
        roc_far=tuple(float(v) for v in roc_far),
        roc_tar=tuple(float(v) for v in roc_tar),
        grid_tpr=tuple(float(v) for v in grid_tpr),
        grid_fpr=tuple(float(v) for v in grid_fpr),
    )


def _check_inputs(embeddings, issame, folds, name):
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 1:
        raise VerificationInputError(f"folds must be a positive integer, got {folds!r}")
    labels = np.asarray(issame)
    if labels.ndim != 1:
        raise VerificationInputError(f"issame must be one flag per pair (1-D), got shape {labels.shape}")
    if labels.dtype != np.bool_:
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise VerificationInputError("issame must hold booleans (or 0/1), one per pair")
        labels = labels.astype(bool)
    try:
        array = np.asarray(embeddings, dtype=np.float64)  # insightface collects embeddings in float64
    except (TypeError, ValueError) as exc:
        raise VerificationInputError(f"{name} is not a numeric array ({exc})") from None
    if array.ndim != 2 or array.shape[1] == 0:
        raise VerificationInputError(f"{name} must be a (2 * pairs, dim) array, got shape {array.shape}")
    if array.shape[0] != 2 * labels.size:
        raise VerificationInputError(
            f"{name} has {array.shape[0]} rows but issame has {labels.size} pairs; "
            f"expected {2 * labels.size} rows in pair order [a0, b0, a1, b1, ...]"
        )
    if labels.size < folds:
        raise VerificationInputError(
            f"{labels.size} pairs cannot be split into {folds} folds; the protocol needs at least "
            f"one pair per fold ({folds} pairs)"
        )
    if labels.all() or not labels.any():
        kind = "same" if labels.all() else "different"
        raise VerificationInputError(f"every one of the {labels.size} pairs is a {kind}-identity pair; "
                                     "verification needs both same and different pairs")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise VerificationInputError(
            f"{name} holds NaN or Inf in {rows.size} of {array.shape[0]} rows (first: row {rows[0]}, "
            f"pair {rows[0] // 2}); the model's outputs are not finite"
        )
    return array, labels


def _pair_scores(normalized):
    # The same numpy expression as insightface, so the float64 distances match bit for bit.
    first, second = normalized[0::2], normalized[1::2]
    dist = np.sum(np.square(np.subtract(first, second)), 1)
    cosine = np.einsum("ij,ij->i", first, second)
    return dist, cosine


def _below_counts(dist, issame, folds, thresholds):
    """Per fold and threshold, how many same / different pairs have `dist < threshold`.

    Returns two (folds, thresholds) integer arrays plus each fold's same / different totals.
    """
    sizes = fold_sizes(dist.size, folds)
    fold_of = np.repeat(np.arange(folds), sizes)
    n_thr = thresholds.size
    # first threshold index t with thresholds[t] > dist: the pair counts as "same" from t on
    first_above = np.searchsorted(thresholds, dist, side="right")
    cell = fold_of * (n_thr + 1) + first_above
    shape = (folds, n_thr + 1)
    same = np.bincount(cell[issame], minlength=folds * (n_thr + 1)).reshape(shape)
    diff = np.bincount(cell[~issame], minlength=folds * (n_thr + 1)).reshape(shape)
    return (
        np.cumsum(same, axis=1)[:, :n_thr],
        np.cumsum(diff, axis=1)[:, :n_thr],
        same.sum(axis=1),
        diff.sum(axis=1),
    )


def _train_part(per_fold, folds):
    """Counts of the training folds of each split: everything but the held-out fold.

    With one fold insightface trains and tests on all pairs (its `LFold`), which this reproduces.
    """
    if folds == 1:
        return per_fold
    return per_fold.sum(axis=0, keepdims=True) - per_fold


def _accuracy_protocol(dist, issame, folds):
    thresholds = ACCURACY_THRESHOLDS
    same_below, diff_below, n_same, n_diff = _below_counts(dist, issame, folds, thresholds)
    n_test = n_same + n_diff
    tr_same_below, tr_diff_below = _train_part(same_below, folds), _train_part(diff_below, folds)
    tr_n_diff = _train_part(n_diff, folds)
    # correct = true accepts + true rejects; argmax over integers == argmax over the accuracies
    train_correct = tr_same_below + (tr_n_diff[:, None] - tr_diff_below)
    best = np.argmax(train_correct, axis=1)  # first best on ties
    rows = np.arange(folds)
    test_correct = same_below[rows, best] + (n_diff - diff_below[rows, best])
    accuracies = test_correct / n_test
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.where(n_same[:, None] > 0, same_below / np.maximum(n_same, 1)[:, None], 0.0)
        fpr = np.where(n_diff[:, None] > 0, diff_below / np.maximum(n_diff, 1)[:, None], 0.0)
    return accuracies, thresholds[best], tpr.mean(axis=0), fpr.mean(axis=0)


def slinear_interp_scipy181(x, y, target):
    """`interp1d(x, y, kind="slinear")(target)` as scipy <= 1.8.1 computed it, duplicates in x allowed.

    That version sorted the points stably by x and built a degree-1 B-spline with knots
    `[x0, x0, x1, ..., x_last, x_last]` without rejecting repeated x.  Evaluating it picks the interval
    that starts at the LAST point with x <= target (capped at the second-to-last point) and blends its
    two ends with de Boor's weights, in that order of float operations; a zero-width interval yields 0.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x.size < 2:
        raise VerificationInputError("slinear interpolation needs at least two points")
    if not x[0] <= target <= x[-1]:
        raise VerificationInputError(f"target {target} is outside the interpolation range [{x[0]}, {x[-1]}]")
    j = min(int(np.searchsorted(x, target, side="right")) - 1, x.size - 2)
    j = max(j, 0)
    x_lo, x_hi = x[j], x[j + 1]
    if x_hi == x_lo:
        return 0.0
    w = 1.0 / (x_hi - x_lo)
    h_lo = w * (x_hi - target)
    h_hi = w * (target - x_lo)
    return float(0.0 + y[j] * h_lo + y[j + 1] * h_hi)


def _val_protocol(dist, issame, folds):
    """Per held-out fold, VAL and FAR at the threshold whose training-fold FAR is 1e-3."""
    thresholds = VAL_THRESHOLDS
    _, diff_below, _, n_diff = _below_counts(dist, issame, folds, thresholds)
    tr_diff_below, tr_n_diff = _train_part(diff_below, folds), _train_part(n_diff, folds)
    sizes = fold_sizes(dist.size, folds)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    val = np.full(folds, np.nan)
    far = np.full(folds, np.nan)
    for fold in range(folds):  # ten iterations; the per-threshold work above is vectorised
        if tr_n_diff[fold] == 0:  # insightface divides by zero here; the fold has no FAR
            continue
        far_train = tr_diff_below[fold] / tr_n_diff[fold]
        if np.max(far_train) >= VAL_FAR_TARGET:
            threshold = slinear_interp_scipy181(far_train, thresholds, VAL_FAR_TARGET)
        else:
            threshold = 0.0
        test = slice(starts[fold], starts[fold] + sizes[fold]) if folds > 1 else slice(None)
        accept = dist[test] < threshold
        same = issame[test]
        n_same_test, n_diff_test = int(same.sum()), int((~same).sum())
        if n_same_test:
            val[fold] = float(np.sum(accept & same)) / float(n_same_test)
        if n_diff_test:
            far[fold] = float(np.sum(accept & ~same)) / float(n_diff_test)
    return val, far


def _roc_figures(scores, issame):
    """Exact ROC over all pairs (no folds): curve, AUC, EER and TAR at the FARs the set can resolve."""
    from sklearn.metrics import auc as area_under, roc_curve

    far_all, tar_all, _ = roc_curve(issame, scores, drop_intermediate=False)
    area = float(area_under(far_all, tar_all))
    miss = 1.0 - tar_all
    gap = far_all - miss  # rises from -1 to +1 along the curve
    i = int(np.argmax(gap >= 0))
    if i == 0:
        eer = float(far_all[0])
    else:
        t = -gap[i - 1] / (gap[i] - gap[i - 1])
        eer = float(far_all[i - 1] + t * (far_all[i] - far_all[i - 1]))
    n_diff = int(np.sum(~issame))
    tar_at_far = {}
    for target in TAR_FAR_TARGETS:
        if n_diff >= round(1.0 / target):  # at least one false accept must be possible at this FAR
            tar_at_far[target] = float(np.max(tar_all[far_all <= target]))
    far_curve, tar_curve, _ = roc_curve(issame, scores, drop_intermediate=True)
    return far_curve, tar_curve, area, eer, tar_at_far
