"""Identification (1:N) and thresholded verification figures from embeddings: numpy only.

`frtf report` (identify_report.py) embeds the photos; this module turns embeddings into the numbers
people compare models with, kept apart so they can be tested on hand-made vectors:

* scores as "higher is more alike" whatever the distance: the cosine similarity, or minus the L2
  distance, so ranking, thresholds and ROC code need one convention.  A threshold given in the user's
  unit (cosine: accept >= t; L2: accept <= t) is turned into that convention by `score_threshold`;
* templates: one per gallery identity, the mean of its embeddings (re-normalised when embeddings are);
* rank-k accuracy, per-person accuracy and confusions (true -> predicted at rank 1);
* at one threshold: accuracy, precision, recall (TAR), specificity (1 - FAR), F1, and from the
  exact ROC (verification.py's), AUC, EER and TAR at FAR 1e-3 / 1e-4 where the set can resolve them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from face_recognition_tf.errors import DatasetError
from face_recognition_tf.evaluation.verification import _roc_figures

DISTANCES = ("cosine", "l2")
RANKS = (1, 5)
REPORTED_FARS = (1e-3, 1e-4)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prepare(embeddings, normalize: bool) -> np.ndarray:
    """float64 embeddings, L2-normalised or as the model gave them."""
    embeddings = np.asarray(embeddings, np.float64)
    return _unit(embeddings) if normalize else embeddings


def templates(embeddings, labels, count: int, normalize: bool) -> np.ndarray:
    """(count, D): the mean embedding of each identity (re-normalised when `normalize`)."""
    embeddings = prepare(embeddings, normalize)
    sums = np.zeros((count, embeddings.shape[1]), np.float64)
    np.add.at(sums, np.asarray(labels, np.int64), embeddings)
    means = sums / np.maximum(np.bincount(labels, minlength=count), 1)[:, None]
    return _unit(means) if normalize else means


def score_matrix(queries, references, distance: str) -> np.ndarray:
    """(Q, N) scores, higher = more alike: cosine similarity, or minus the Euclidean distance."""
    q, r = np.asarray(queries, np.float64), np.asarray(references, np.float64)
    if distance == "cosine":
        return np.clip(_unit(q) @ _unit(r).T, -1.0, 1.0)
    if distance == "l2":
        squared = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T
        return -np.sqrt(np.maximum(squared, 0.0))
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def pair_scores(embeddings, distance: str) -> np.ndarray:
    """Scores of consecutive rows `[a0, b0, a1, b1, ...]` (a pair set's layout)."""
    e = np.asarray(embeddings, np.float64)
    a, b = e[0::2], e[1::2]
    if distance == "cosine":
        return np.clip(np.einsum("ij,ij->i", _unit(a), _unit(b)), -1.0, 1.0)
    return -np.linalg.norm(a - b, axis=1)


def score_threshold(threshold: float, distance: str) -> float:
    """A threshold in the user's unit as a score threshold (accept score >= it)."""
    return float(threshold) if distance == "cosine" else -float(threshold)


def user_threshold(score: float, distance: str) -> float:
    return float(score) if distance == "cosine" else -float(score)


@dataclasses.dataclass(frozen=True)
class Identification:
    probes: int  # probes scored (embedded)
    known: int  # probes whose identity is in the gallery
    rank_accuracy: dict  # k -> share of known probes whose identity is within the top k
    identified: float | None  # known probes correct at rank 1 AND above the threshold (open-set DIR)
    unknown_rejected: float | None  # probes of people not in the gallery that no identity accepted
    per_person: dict  # name -> {"probes", "rank1", "accuracy", "identified"}
    confusions: list  # [{"true", "predicted", "count"}], most frequent first
    people_recognised: int  # people with most of their probes right at rank 1
    people: int


def identify(scores, probe_names, gallery_names, score_thr: float, ranks=RANKS) -> Identification:
    """Rank-k accuracy, per-person accuracy and confusions of probes (rows) against gallery identities."""
    scores = np.asarray(scores, np.float64)
    index = {name: i for i, name in enumerate(gallery_names)}
    truth = np.asarray([index.get(name, -1) for name in probe_names])
    known = truth >= 0
    best = np.argmax(scores, axis=1) if scores.shape[1] else np.zeros(len(scores), int)
    best_score = scores[np.arange(len(scores)), best]
    true_score = np.where(known, scores[np.arange(len(scores)), np.maximum(truth, 0)], np.nan)
    rank = 1 + np.sum(scores > true_score[:, None], axis=1)  # ties count in the probe's favour
    correct = known & (best == truth)
    accepted = best_score >= score_thr
    n_known = int(known.sum())
    rank_accuracy = {k: (float(np.mean(rank[known] <= k)) if n_known else None) for k in ranks}
    per_person, confusions = {}, Counter()
    for name in dict.fromkeys(probe_names):
        rows = np.asarray([p == name for p in probe_names])
        entry = {"probes": int(rows.sum()), "in_gallery": name in index}
        if name in index:
            entry.update(rank1=int(correct[rows].sum()), accuracy=float(correct[rows].mean()),
                         identified=float((correct & accepted)[rows].mean()))
        else:
            entry.update(rejected=float((~accepted)[rows].mean()))
        per_person[name] = entry
    for i in np.flatnonzero(known & ~correct):
        confusions[(probe_names[i], gallery_names[best[i]])] += 1
    unknown = ~known
    return Identification(
        probes=len(probe_names),
        known=n_known,
        rank_accuracy=rank_accuracy,
        identified=float(np.mean((correct & accepted)[known])) if n_known else None,
        unknown_rejected=float(np.mean(~accepted[unknown])) if unknown.any() else None,
        per_person=per_person,
        confusions=[{"true": t, "predicted": p, "count": c}
                    for (t, p), c in sorted(confusions.items(), key=lambda item: (-item[1], item[0]))],
        people_recognised=sum(1 for e in per_person.values() if e.get("in_gallery") and e["accuracy"] > 0.5),
        people=sum(1 for e in per_person.values() if e.get("in_gallery")),
    )


@dataclasses.dataclass(frozen=True)
class Verification:
    """Figures of one set of genuine / impostor comparisons at one threshold, and its exact ROC."""

    comparisons: int
    genuine: int
    impostor: int
    accuracy: float
    precision: float | None
    recall: float  # TAR: genuine comparisons accepted
    specificity: float  # impostor comparisons rejected (1 - FAR)
    f1: float | None
    far: float
    tar_at_far: dict  # FAR -> TAR, only FARs the impostor count can resolve
    auc: float
    eer: float
    roc_far: tuple = dataclasses.field(repr=False)
    roc_tar: tuple = dataclasses.field(repr=False)

    @property
    def accuracy_mean(self) -> float:  # the name report.roc_png labels curves with
        return self.accuracy

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("roc_")}
        out["tar_at_far"] = {f"{far:g}": self.tar_at_far.get(far) for far in REPORTED_FARS}
        return out


def verify(scores, genuine, score_thr: float, where: str = "comparisons") -> Verification:
    """Thresholded confusion figures and ROC of comparisons `scores` (higher = alike) labelled `genuine`."""
    scores, genuine = np.asarray(scores, np.float64).ravel(), np.asarray(genuine, bool).ravel()
    if not genuine.any() or genuine.all():
        kind = "impostor (different-person)" if genuine.all() else "genuine (same-person)"
        raise DatasetError(f"{where}: no {kind} comparison among {genuine.size}; verification needs both")
    accept = scores >= score_thr
    tp, fp = int(np.sum(accept & genuine)), int(np.sum(accept & ~genuine))
    fn, tn = int(np.sum(~accept & genuine)), int(np.sum(~accept & ~genuine))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn)
    if precision is None:  # nothing accepted: precision (and F1) undefined
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    roc_far, roc_tar, auc, eer, tar_at_far = _roc_figures(scores, genuine)
    return Verification(
        comparisons=int(scores.size), genuine=tp + fn, impostor=fp + tn, accuracy=(tp + tn) / scores.size,
        precision=precision, recall=recall, specificity=tn / (tn + fp), f1=f1, far=fp / (tn + fp),
        tar_at_far={far: tar_at_far[far] for far in REPORTED_FARS if far in tar_at_far}, auc=auc, eer=eer,
        roc_far=tuple(map(float, roc_far)), roc_tar=tuple(map(float, roc_tar)),
    )
