"""The verification metric against hand-computed cases and a plain-loop transcription of insightface's protocol.

The reference below is written the slow, obvious way (sklearn's KFold, a Python loop over every threshold,
scipy's own B-spline evaluation for the old `interp1d(kind="slinear")`), so agreement to the last bit
shows the vectorised core computes insightface's numbers, not an approximation of them.
"""

import math

import numpy as np
import pytest
from scipy.interpolate import BSpline, interp1d
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from face_recognition_tf.errors import DatasetError
from face_recognition_tf.evaluation import (
    VerificationInputError,
    VerificationResult,
    evaluate_embeddings,
    fold_sizes,
)
from face_recognition_tf.evaluation.verification import slinear_interp_scipy181


# ----------------------------------------------------------------------------- slow reference
def _rates(threshold, dist, issame):
    predict = dist < threshold
    tp = np.sum(predict & issame)
    fp = np.sum(predict & ~issame)
    tn = np.sum(~predict & ~issame)
    fn = np.sum(~predict & issame)
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _old_slinear(x, y, target):
    """scipy 1.8.1's interp1d(kind='slinear'): stable sort, knots [x0, x..., x_last], BSpline k=1."""
    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    return float(BSpline(np.r_[x[0], x, x[-1]], y, 1)(target))


def reference_metric(embeddings, issame, nfolds=10, flips=None):
    issame = np.asarray(issame, dtype=bool)
    emb = np.asarray(embeddings, dtype=np.float64)
    if flips is not None:
        emb = emb + np.asarray(flips, dtype=np.float64)
    emb = normalize(emb)
    dist = np.sum(np.square(np.subtract(emb[0::2], emb[1::2])), 1)
    indices = np.arange(issame.size)
    splits = list(KFold(nfolds, shuffle=False).split(indices)) if nfolds > 1 else [(indices, indices)]

    thresholds = np.arange(0, 4, 0.01)
    accuracy, best = [], []
    for train, test in splits:
        acc_train = [_rates(t, dist[train], issame[train])[2] for t in thresholds]
        i = int(np.argmax(acc_train))
        best.append(thresholds[i])
        accuracy.append(_rates(thresholds[i], dist[test], issame[test])[2])

    thresholds = np.arange(0, 4, 0.001)
    val, far = [], []
    for train, test in splits:
        d_train, s_train = dist[train], issame[train]
        far_train = np.array([float(np.sum((d_train < t) & ~s_train)) / float(np.sum(~s_train)) for t in thresholds])
        threshold = _old_slinear(far_train, thresholds, 1e-3) if far_train.max() >= 1e-3 else 0.0
        accept, same = dist[test] < threshold, issame[test]
        # insightface divides by zero on a held-out fold without same (or different) pairs; NaN here
        val.append(float(np.sum(accept & same)) / float(np.sum(same)) if same.any() else np.nan)
        far.append(float(np.sum(accept & ~same)) / float(np.sum(~same)) if (~same).any() else np.nan)
    return {
        "accuracy_mean": np.mean(accuracy), "accuracy_std": np.std(accuracy), "best_thresholds": best,
        "val_mean": np.mean(val), "val_std": np.std(val), "far_mean": np.mean(far), "dist": dist,
    }


# ----------------------------------------------------------------------------- helpers
def pairs_with_distances(distances, dim=2):
    """Unit embeddings whose pairs have the given squared distances (2 - 2 cos)."""
    rows = []
    for d in distances:
        cos = 1.0 - d / 2.0
        a = np.zeros(dim)
        a[0] = 1.0
        b = np.zeros(dim)
        b[0], b[1] = cos, math.sqrt(max(0.0, 1.0 - cos * cos))
        rows += [a, b]
    return np.array(rows)


def random_pairs(num_pairs, dim=16, noise=1.2, seed=0, blocks=True):
    rng = np.random.default_rng(seed)
    if blocks:  # LFW-like: each fold holds runs of same then different pairs
        issame = (np.arange(num_pairs) // 3) % 2 == 0
    else:
        issame = rng.random(num_pairs) < 0.5
    a = rng.normal(size=(num_pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.normal(size=(num_pairs, dim)), rng.normal(size=(num_pairs, dim)))
    emb = np.empty((2 * num_pairs, dim), dtype=np.float32)
    emb[0::2], emb[1::2] = a, b
    return emb, issame


# ----------------------------------------------------------------------------- hand-computed cases
def test_hand_computed_two_folds():
    # fold 0 = pairs 0,1 ; fold 1 = pairs 2,3
    emb = pairs_with_distances([0.305, 1.2055, 0.805, 1.0055])
    issame = [True, False, True, False]
    r = evaluate_embeddings(emb, issame, folds=2)
    # fold 0 trains on (0.805 same, 1.0055 diff): first best threshold 0.81 -> both test pairs right
    # fold 1 trains on (0.305 same, 1.2055 diff): first best 0.31 -> the 0.805 same pair is rejected
    assert r.best_thresholds == (0.81, 0.31)
    assert r.accuracies == (1.0, 0.5)
    assert r.accuracy_mean == 0.75 and r.accuracy_std == 0.25  # population std
    # VAL: one training diff pair, FAR jumps 0 -> 1 between thresholds 1.005 and 1.006 (fold 0),
    # so the threshold is 1.005 * 0.999 + 1.006 * 0.001 = 1.005001: same pair accepted, diff rejected.
    # Fold 1's threshold is ~1.205001: both test pairs accepted -> VAL 1, FAR 1.
    assert r.val_mean == 1.0 and r.val_std == 0.0 and r.far_mean == 0.5
    assert r.num_pairs == 4 and r.num_folds == 2 and not r.flipped
    assert r.accuracy_noflip_mean is None
    assert r.auc == 1.0 and r.eer == 0.0
    assert r.cosine_same_mean == pytest.approx(1 - (0.305 + 0.805) / 4)
    assert r.cosine_threshold == pytest.approx(1 - 0.56 / 2)


def test_ties_pick_the_first_best_threshold():
    # inverted pairs: threshold 0 (reject all) and thresholds above 2.505 (accept all) both score 0.5
    emb = pairs_with_distances([2.505, 0.505] * 5)
    issame = [True, False] * 5
    r = evaluate_embeddings(emb, issame, folds=5)
    assert r.best_thresholds == (0.0,) * 5
    assert r.accuracy_mean == 0.5
    assert r.auc == 0.0


def test_far_never_reaching_target_gives_zero_threshold_and_zero_val():
    # different pairs are antipodal (distance 4): no threshold below 4 accepts them, FAR stays 0 < 1e-3,
    # so insightface sets the threshold to 0 and VAL is 0 although the set is perfectly separable
    emb = pairs_with_distances([0.5, 4.0] * 10)
    r = evaluate_embeddings(emb, [True, False] * 10)
    assert r.accuracy_mean == 1.0
    assert r.val_mean == 0.0 and r.far_mean == 0.0


def test_one_fold_trains_and_tests_on_everything():
    emb = pairs_with_distances([0.305, 1.2055, 0.805, 1.0055])
    r = evaluate_embeddings(emb, [True, False, True, False], folds=1)
    assert r.best_thresholds == (0.81,) and r.accuracy_mean == 1.0
    ref = reference_metric(emb, [True, False, True, False], nfolds=1)
    assert r.val_mean == ref["val_mean"] and r.far_mean == ref["far_mean"]


def test_flip_sum_noflip_accuracy_and_xnorm():
    emb, issame = random_pairs(40, seed=3)
    flips = emb * 3.0  # same directions, three times the norm
    r = evaluate_embeddings(emb, issame, flip_embeddings=flips)
    plain = evaluate_embeddings(emb, issame)
    assert r.flipped
    assert r.accuracy_mean == plain.accuracy_mean  # sum of parallel vectors: same normalised embedding
    assert r.accuracy_noflip_mean == plain.accuracy_mean
    assert r.accuracy_noflip_std == plain.accuracy_std
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    flip_norms = np.linalg.norm(flips.astype(np.float64), axis=1)
    assert r.xnorm == pytest.approx(np.mean(np.r_[norms, flip_norms]), rel=1e-12)
    assert plain.xnorm == pytest.approx(np.mean(norms), rel=1e-12)


# ----------------------------------------------------------------------------- folds
@pytest.mark.parametrize("num_pairs,folds", [(10, 10), (13, 10), (37, 10), (101, 7), (600, 10)])
def test_fold_sizes_match_sklearn_kfold(num_pairs, folds):
    expected = [len(test) for _, test in KFold(folds, shuffle=False).split(np.arange(num_pairs))]
    assert fold_sizes(num_pairs, folds).tolist() == expected


@pytest.mark.parametrize(
    "num_pairs,folds,blocks,seed",
    [(37, 10, True, 0), (61, 10, False, 1), (101, 3, True, 2), (300, 10, True, 3), (23, 1, False, 4)],
)
def test_matches_reference_bit_for_bit(num_pairs, folds, blocks, seed):
    emb, issame = random_pairs(num_pairs, seed=seed, blocks=blocks)
    flips = emb + np.random.default_rng(seed + 100).normal(scale=0.3, size=emb.shape).astype(np.float32)
    ref = reference_metric(emb, issame, nfolds=folds, flips=flips)
    r = evaluate_embeddings(emb, issame, folds=folds, flip_embeddings=flips)
    assert r.accuracy_mean == ref["accuracy_mean"]
    assert r.accuracy_std == ref["accuracy_std"]
    assert list(r.best_thresholds) == [float(t) for t in ref["best_thresholds"]]
    assert r.val_mean == ref["val_mean"]
    assert r.val_std == ref["val_std"]
    assert r.far_mean == ref["far_mean"]
    assert r.auc == pytest.approx(roc_auc_score(issame, -ref["dist"]), abs=1e-12)


def test_fold_boundary_moves_one_pair():
    # 11 pairs in 10 folds: fold 0 holds pairs 0 and 1, the other folds one pair each
    emb, issame = random_pairs(11, seed=5, blocks=False)
    issame[:2] = [True, False]
    r = evaluate_embeddings(emb, issame)
    assert len(r.accuracies) == 10
    assert all(a in (0.0, 0.5, 1.0) for a in r.accuracies[:1])
    assert all(a in (0.0, 1.0) for a in r.accuracies[1:])
    ref = reference_metric(emb, issame)
    assert r.accuracy_mean == ref["accuracy_mean"]
    # single-pair held-out folds lack same or different pairs: VAL/FAR undefined (insightface crashes)
    assert math.isnan(r.val_mean) and math.isnan(ref["val_mean"])
    assert r.to_dict()["val_mean"] is None


# ----------------------------------------------------------------------------- VAL interpolation
def test_slinear_uses_last_point_at_or_below_target_with_duplicates():
    far = np.array([0.0, 0.0, 0.0, 0.001, 0.001, 0.002])
    thresholds = np.arange(6) * 1.0
    assert slinear_interp_scipy181(far, thresholds, 0.001) == 4.0
    assert slinear_interp_scipy181(far, thresholds, 0.0) == 2.0
    assert slinear_interp_scipy181(far, thresholds, 0.0015) == 4.5
    # unsorted input is sorted stably: equal FARs keep their threshold order
    shuffled = np.array([0.002, 0.0, 0.001, 0.0, 0.001, 0.0])
    assert slinear_interp_scipy181(shuffled, thresholds, 0.001) == 4.0
    # a zero-width last interval (target equals two trailing equal FARs) evaluates to 0 in old scipy
    assert slinear_interp_scipy181([0.0, 0.001, 0.001], [0.0, 1.0, 2.0], 0.001) == 0.0
    assert _old_slinear(np.array([0.0, 0.001, 0.001]), np.array([0.0, 1.0, 2.0]), 0.001) == 0.0


def test_slinear_matches_scipy_bsplines_on_duplicate_heavy_fars():
    rng = np.random.default_rng(7)
    for _ in range(50):
        far = np.sort(rng.integers(0, 40, size=200)) / 2000.0  # many repeated FAR values
        far[0] = 0.0
        thresholds = np.arange(200) * 0.001
        for target in (1e-3, 0.0, far[-1], rng.uniform(0, far[-1])):
            assert slinear_interp_scipy181(far, thresholds, target) == _old_slinear(far, thresholds, target)


def test_slinear_matches_current_scipy_without_duplicates():
    rng = np.random.default_rng(8)
    x = np.sort(rng.uniform(0, 1, 50))
    y = rng.uniform(0, 4, 50)
    for target in rng.uniform(x[0], x[-1], 20):
        assert slinear_interp_scipy181(x, y, target) == pytest.approx(
            float(interp1d(x, y, kind="slinear")(target)), rel=1e-13, abs=1e-15
        )


# ----------------------------------------------------------------------------- extra figures
def test_tar_at_far_only_where_the_pair_count_resolves_it():
    emb, issame = random_pairs(300, seed=9)  # 150 different pairs: FAR 1e-1 and 1e-2 measurable
    r = evaluate_embeddings(emb, issame)
    assert set(r.tar_at_far) == {1e-1, 1e-2}
    dist = reference_metric(emb, issame)["dist"]
    neg = np.sort(dist[~issame])
    # TAR at FAR 1e-1: accept pairs closer than the 15th-closest different pair
    expected = np.mean(dist[issame] < neg[15]) if neg[15] > neg[14] else None
    if expected is not None:
        assert r.tar_at_far[1e-1] == pytest.approx(expected)
    assert 0.0 <= r.eer <= 1.0 and 0.0 <= r.auc <= 1.0
    assert len(r.roc_far) == len(r.roc_tar) >= 2 and len(r.grid_tpr) == 400


def test_to_dict_is_plain_json():
    import json

    emb, issame = random_pairs(40, seed=10)
    d = evaluate_embeddings(emb, issame, flip_embeddings=emb).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["accuracy_mean"] == d["accuracy_mean"]
    assert "roc_far" not in back and isinstance(back["best_thresholds"], list)
    assert "roc_far" in evaluate_embeddings(emb, issame).to_dict(include_curves=True)
    assert isinstance(evaluate_embeddings(emb, issame), VerificationResult)


# ----------------------------------------------------------------------------- errors
def test_too_few_pairs_for_the_folds():
    emb, issame = random_pairs(9, seed=11, blocks=False)
    issame[:2] = [True, False]
    with pytest.raises(VerificationInputError, match="9 pairs cannot be split into 10 folds"):
        evaluate_embeddings(emb, issame)
    assert evaluate_embeddings(emb, issame, folds=9).num_folds == 9


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_are_rejected(bad):
    emb, issame = random_pairs(20, seed=12)
    emb[7, 3] = bad
    with pytest.raises(VerificationInputError, match="NaN or Inf.*row 7, pair 3"):
        evaluate_embeddings(emb, issame)
    clean, _ = random_pairs(20, seed=12)
    with pytest.raises(DatasetError, match="flip_embeddings holds NaN"):
        evaluate_embeddings(clean, issame, flip_embeddings=emb)


def test_shape_and_label_errors():
    emb, issame = random_pairs(20, seed=13)
    with pytest.raises(ValueError, match="rows but issame has 19 pairs"):
        evaluate_embeddings(emb, issame[:19])
    with pytest.raises(ValueError, match="must match"):
        evaluate_embeddings(emb, issame, flip_embeddings=emb[:, :4])
    with pytest.raises(ValueError, match="both same and different"):
        evaluate_embeddings(emb, np.ones(20, bool))
    with pytest.raises(ValueError, match="booleans"):
        evaluate_embeddings(emb, np.full(20, 2))
    with pytest.raises(ValueError, match="folds"):
        evaluate_embeddings(emb, issame, folds=0)
