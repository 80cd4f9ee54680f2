"""Margin transforms: what a margin head does to the target cosine, apart from where the cosines come from.

arcface_torch keeps the margin (a function of the logits and labels) separate from the store of
class centres (``PartialFC``, which may hold only a sample of the centres).  The same split is kept
here: every function below takes float32 cosines and returns the modified target value, and knows
nothing about the ``kernel`` that produced them, so a sharded or sampled centre store can reuse them.

Two ways to differentiate the ArcFace margin exist in insightface's history:

``exact``
    The classic implementation (insightface's MXNet code and arcface_torch until late 2022):
    ``cos(theta + m)`` written as ``cos*cos(m) - sin*sin(m)`` and differentiated, with the
    ``cos - m*sin(m)`` fallback once ``theta + m`` would pass pi (where ``cos(theta + m)`` stops
    decreasing in theta).
``straight_through``
    Today's arcface_torch: ``arccos``, ``+ m`` and ``cos`` run under ``torch.no_grad()`` and the
    result is written into the logits in place, so the forward value is ``cos(theta + m)`` for every
    theta (no fallback) while the backward pass sees the identity: d(logit)/d(cos) = s for every
    class.  Here that is ``cos + stop_gradient(value - cos)``.
"""

from __future__ import annotations

import math

import tensorflow as tf

GRADIENTS = ("exact", "straight_through")

_SQRT_FLOOR = 1e-12  # below any positive 1 - cos^2 float32 can represent near |cos| = 1


def check_gradient(gradient: str) -> str:
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    return gradient


def sin_from_cos(cos):
    # tf.maximum routes the gradient to the constant floor when 1 - cos^2 == 0, so d/dcos is 0
    # instead of inf * 0 = NaN at |cos| = 1.
    return tf.sqrt(tf.maximum(1.0 - tf.square(cos), _SQRT_FLOOR))


def straight_through(cos, value):
    """``value`` forward, the identity backward (what arcface_torch's in-place no_grad edit amounts to)."""
    return cos + tf.stop_gradient(value - cos)


def arc_margin(cos, m: float, easy_margin: bool = False):
    """insightface's classic ArcFace target: cos(theta + m) with its fallback past theta = pi - m."""
    cos_theta_m = cos * math.cos(m) - sin_from_cos(cos) * math.sin(m)
    if easy_margin:
        return tf.where(cos > 0.0, cos_theta_m, cos)
    return tf.where(cos > math.cos(math.pi - m), cos_theta_m, cos - m * math.sin(m))


def angle_plus(cos, m1: float, m2: float):
    """cos(m1 * acos(cos) + m2) with no fallback, computed without gradient (the value straight-through uses).

    No gradient flows here, so acos' infinite slope at +-1 never reaches a tape.
    """
    theta = tf.acos(tf.clip_by_value(tf.stop_gradient(cos), -1.0, 1.0))
    return tf.stop_gradient(tf.cos(m1 * theta + m2))


def monotonic_cos(phi):
    """(-1)^k cos(phi) - 2k with k = floor(phi / pi): decreasing in phi for all phi >= 0."""
    k = tf.floor(phi / math.pi)
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(phi) - 2.0 * k


def a_softmax_psi(cos, m: int):
    """SphereFace's psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi), from cos alone.

    cos(m theta) is the Chebyshev polynomial T_m(cos), so no acos (and no infinite derivative at
    |cos| = 1) is involved; k is found by comparing cos with cos(j pi / m), as the original
    Caffe and MXNet operators do.
    """
    t_prev, t = tf.ones_like(cos), cos
    for _ in range(1, m):
        t_prev, t = t, 2.0 * cos * t - t_prev
    k = tf.zeros_like(cos)
    for j in range(1, m + 1):
        k += tf.cast(cos <= math.cos(j * math.pi / m), cos.dtype)
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * t - 2.0 * k


def annealed_lambda(iteration, base: float, gamma: float, power: float, minimum: float):
    """SphereFace's softmax weight at update ``iteration``: max(minimum, base * (1 + gamma * it)^-power).

    The blend (lambda * cos + psi) / (1 + lambda) starts as almost plain softmax (lambda 1000), which
    A-Softmax needs to converge from random weights, and hardens towards the margin as lambda falls.
    The formula and the defaults (1000, 0.12, 1, 5) are those of SphereFace's Caffe layer and of
    insightface's MXNet train_softmax.py.
    """
    it = tf.cast(iteration, tf.float32)
    return tf.maximum(float(minimum), float(base) * tf.pow(1.0 + float(gamma) * it, -float(power)))


def replace_target(logits, one_hot, target):
    """``logits`` with each row's target entry replaced by ``target`` (B, 1)."""
    current = tf.reduce_sum(logits * one_hot, axis=1, keepdims=True)
    return logits + one_hot * (target - current)
