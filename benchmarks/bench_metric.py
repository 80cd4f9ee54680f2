"""Time of insightface's verification metric on 12,000 pairs: vectorised core vs a straightforward loop.

The reference is the protocol written the obvious way (as insightface's verification.py does it): a
Python loop over the 400 accuracy thresholds and the 4000 VAL thresholds, per fold, each a full pass
over the pairs.  Both run on the same embeddings in the same process; the script checks that they give
identical accuracy / VAL / FAR before printing the ratio.

    .venv/bin/python benchmarks/bench_metric.py [--pairs 12000] [--dim 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from face_recognition_tf.evaluation import evaluate_embeddings
from face_recognition_tf.evaluation.verification import _accuracy_protocol, _pair_scores, _val_protocol


def reference(embeddings, flips, issame, nfolds=10):
    emb = normalize(embeddings.astype(np.float64) + flips.astype(np.float64))
    dist = np.sum(np.square(np.subtract(emb[0::2], emb[1::2])), 1)
    return reference_protocol(dist, issame, nfolds)


def reference_protocol(dist, issame, nfolds=10):
    """The threshold x fold loops alone, on precomputed pair distances."""
    splits = list(KFold(nfolds, shuffle=False).split(np.arange(issame.size)))

    def accuracy(t, d, s):
        p = d < t
        return float(np.sum(p & s) + np.sum(~p & ~s)) / d.size

    thresholds = np.arange(0, 4, 0.01)
    acc = []
    for train, test in splits:
        best = int(np.argmax([accuracy(t, dist[train], issame[train]) for t in thresholds]))
        acc.append(accuracy(thresholds[best], dist[test], issame[test]))

    thresholds = np.arange(0, 4, 0.001)
    val, far = [], []
    for train, test in splits:
        d, s = dist[train], issame[train]
        far_train = np.array([float(np.sum((d < t) & ~s)) / float(np.sum(~s)) for t in thresholds])
        if far_train.max() >= 1e-3:
            order = np.argsort(far_train, kind="mergesort")
            x, y = far_train[order], thresholds[order]
            threshold = float(BSpline(np.r_[x[0], x, x[-1]], y, 1)(1e-3))  # scipy <= 1.8.1's slinear
        else:
            threshold = 0.0
        p, s = dist[test] < threshold, issame[test]
        val.append(float(np.sum(p & s)) / float(np.sum(s)))
        far.append(float(np.sum(p & ~s)) / float(np.sum(~s)))
    return np.mean(acc), np.std(acc), np.mean(val), np.mean(far)


def core(embeddings, flips, issame, nfolds=10):
    """The vectorised module doing exactly the reference's work (accuracy, VAL, FAR), for a like-for-like ratio."""
    emb = normalize(embeddings.astype(np.float64) + flips.astype(np.float64))
    dist, _ = _pair_scores(emb)
    return core_protocol(dist, issame, nfolds)


def core_protocol(dist, issame, nfolds=10):
    acc = _accuracy_protocol(dist, issame, nfolds)[0]
    val, far = _val_protocol(dist, issame, nfolds)
    return np.mean(acc), np.std(acc), np.mean(val), np.mean(far)


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times), float(np.median(times))


def synthetic(num_pairs, dim, seed=0):
    """LFW-like layout (folds of 300 same then 300 different pairs) with realistic overlap."""
    rng = np.random.default_rng(seed)
    issame = (np.arange(num_pairs) // (num_pairs // 20)) % 2 == 0
    a = rng.normal(size=(num_pairs, dim)).astype(np.float32)
    b = np.where(issame[:, None], a + 4.0 * rng.normal(size=a.shape), rng.normal(size=a.shape)).astype(np.float32)
    emb = np.empty((2 * num_pairs, dim), np.float32)
    emb[0::2], emb[1::2] = a, b
    flips = (emb + 0.3 * rng.normal(size=emb.shape)).astype(np.float32)
    return emb, flips, issame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    emb, flips, issame = synthetic(args.pairs, args.dim)
    evaluate_embeddings(emb, issame, flip_embeddings=flips)  # warm-up (imports)
    result, full_best, full_median = _best(lambda: evaluate_embeddings(emb, issame, flip_embeddings=flips),
                                           args.repeats)
    fast, core_best, core_median = _best(lambda: core(emb, flips, issame), args.repeats)
    ref, slow, _ = _best(lambda: reference(emb, flips, issame), 1)
    dist, _ = _pair_scores(normalize(emb.astype(np.float64) + flips.astype(np.float64)))
    proto, proto_best, _ = _best(lambda: core_protocol(dist, issame), args.repeats)
    ref_proto, ref_proto_s, _ = _best(lambda: reference_protocol(dist, issame), 1)

    same = tuple(float(v) for v in fast) == tuple(float(v) for v in ref) == tuple(proto) == tuple(ref_proto) == (
        result.accuracy_mean, result.accuracy_std, result.val_mean, result.far_mean)
    if not same:
        raise SystemExit(f"results differ: vectorised {fast} / {result} vs reference {ref}")
    print(json.dumps({
        "pairs": args.pairs,
        "dim": args.dim,
        "accuracy": result.accuracy_mean,
        "val_at_far_1e-3": result.val_mean,
        "identical_to_reference": same,
        "reference_protocol_on_distances_s": round(ref_proto_s, 3),
        "vectorised_protocol_on_distances_s_best": round(proto_best, 5),
        "speedup_protocol": round(ref_proto_s / proto_best),
        "reference_loop_s": round(slow, 3),
        "vectorised_core_s_best": round(core_best, 4),
        "vectorised_core_s_median": round(core_median, 4),
        "speedup_core": round(slow / core_best, 1),
        "evaluate_embeddings_s_best": round(full_best, 4),
        "evaluate_embeddings_s_median": round(full_median, 4),
        "speedup_evaluate_embeddings": round(slow / full_best, 1),
        "note": "protocol: the threshold x fold work alone on precomputed distances. core and reference: flip sum, normalisation, accuracy, VAL and FAR. evaluate_embeddings adds "
                "the no-flip accuracy, exact ROC/AUC/EER/TAR@FAR, cosine figures and XNorm",
    }, indent=2))


if __name__ == "__main__":
    main()
