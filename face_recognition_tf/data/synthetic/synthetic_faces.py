"""Synthetic identities for the embedded sample: parametric cartoon faces drawn with OpenCV.

What makes it a useful stand-in for face recognition (and not a toy a pixel matcher solves):
* identity = a point in a continuous/combinatorial space shared by training and held-out
  identities (face shape, skin tone, eye spacing/size/tilt/colour, brows, nose, mouth, hair style
  and colour, beard, glasses, moles), so what a network learns transfers to unseen people;
* every photo of a person adds strong nuisance: pose (rotation, scale, shift, yaw that moves the
  features and shrinks the far side), expression, blinking, lighting gradients, colour casts,
  cluttered backgrounds, occluders, blur, noise and JPEG quality.  Raw pixels and random features
  are dominated by the nuisance, so an untrained model verifies poorly; identity stays learnable.
All strengths live in `Nuisance` so the difficulty can be tuned in one place.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math

import cv2
import numpy as np

SIZE = 112
HAIR_STYLES = ("bald", "short", "long", "fringe", "parted", "curly")


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """Within-identity variation of every photo (the difficulty knobs)."""

    # Tuned (benchmarks/bench_sample.py and a GPU sweep): raw pixels verify at ~0.55-0.65, an
    # IR-ResNet18 x0.25 reaches >= 0.95 on every pair set after ~32k training images (batch 64).
    rotation_deg: float = 7.0
    scale: float = 0.07  # +- relative
    shift_px: float = 4.0
    yaw: float = 0.12  # +- fraction of the face half-width the features move sideways
    expression: float = 0.6  # mouth curvature/opening and eye openness variation
    light_gradient: float = 0.3  # max strength of a directional light ramp
    brightness: tuple = (0.8, 1.2)
    color_cast: float = 0.06  # +- per-channel gain
    clutter: tuple = (3, 10)  # background shapes
    occlusion_prob: float = 0.05
    glasses_off_prob: float = 0.05
    blur_prob: float = 0.25
    blur_sigma: float = 1.0
    noise_std: float = 5.0
    jpeg_quality: tuple = (70, 95)


def _hsv_to_bgr(h, s, v):
    """OpenCV-style HSV (h in [0, 180), s and v in [0, 255]) -> BGR ints."""
    r, g, b = colorsys.hsv_to_rgb((h % 180) / 180.0, min(max(s, 0), 255) / 255.0, min(max(v, 0), 255) / 255.0)
    return (int(b * 255), int(g * 255), int(r * 255))


def _u(rng, lo, hi):
    """Uniform float; Generator.uniform costs ~4 us per scalar call, random() ~0.4 us."""
    return lo + (hi - lo) * rng.random()


def _i(rng, lo, hi):
    """Uniform int in [lo, hi); Generator.integers costs ~15 us per scalar call."""
    return lo + int(rng.random() * (hi - lo))


def _ipt(rng, lo, hi):
    return (_i(rng, lo, hi), _i(rng, lo, hi))


_YY, _XX = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j].astype(np.float32)
_NOISE = np.random.default_rng(12345).normal(0, 1, (SIZE + 64, SIZE + 64, 3)).astype(np.float32)  # crops of it
_NOISE.setflags(write=False)


def sample_identity(rng: np.random.Generator) -> dict:
    """One person's fixed traits."""
    u = rng.uniform
    hair_style = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
    hair_hsv = (u(0, 30) if rng.random() < 0.8 else u(0, 180), u(20, 220), u(15, 230))
    return {
        "face_rx": u(25, 35), "face_ry": u(33, 43), "jaw": u(0.55, 1.0),
        "skin": (u(4, 22), u(40, 170), u(90, 235)),
        "eye_dx": u(10, 17), "eye_y": u(-12, -3), "eye_rx": u(3.5, 7.5), "eye_open": u(0.35, 0.8),
        "eye_tilt": u(-15, 15), "iris": (u(0, 180), u(40, 255), u(30, 200)), "iris_r": u(0.35, 0.7),
        "brow_gap": u(4, 10), "brow_thick": int(rng.integers(1, 5)), "brow_angle": u(-22, 22),
        "brow_len": u(0.8, 1.6), "brow_arch": u(-3, 4),
        "nose_len": u(7, 17), "nose_w": u(3, 9), "nose_style": int(rng.integers(3)),
        "mouth_y": u(13, 25), "mouth_w": u(7, 17), "lip": int(rng.integers(1, 5)), "smile": u(-4, 4),
        "lip_color": (u(0, 12) if rng.random() < 0.8 else u(150, 179), u(60, 220), u(60, 220)),
        "hair_style": hair_style, "hair": hair_hsv, "hairline": u(0.15, 0.6), "hair_volume": u(2, 12),
        "beard": int(rng.integers(4)) if rng.random() < 0.35 else 0,
        "glasses": int(rng.integers(1, 3)) if rng.random() < 0.25 else 0,
        "glasses_color": (u(0, 180), u(0, 255), u(0, 200)),
        "moles": [(u(-0.7, 0.7), u(-0.2, 0.8), u(1.0, 2.2)) for _ in range(int(rng.integers(0, 4)))],
        "ear": u(4, 9),
    }


def _background(rng, nz: Nuisance):
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = _hsv_to_bgr(_u(rng, 0, 180), _u(rng, 0, 255), _u(rng, 30, 255))
    for _ in range(_i(rng, nz.clutter[0], nz.clutter[1] + 1)):
        color = _hsv_to_bgr(_u(rng, 0, 180), _u(rng, 0, 255), _u(rng, 20, 255))
        kind = _i(rng, 0, 3)
        p = _ipt(rng, -10, SIZE + 10)
        if kind == 0:
            cv2.rectangle(img, p, _ipt(rng, -10, SIZE + 10), color, -1)
        elif kind == 1:
            cv2.circle(img, p, _i(rng, 4, 30), color, -1, cv2.LINE_AA)
        else:
            cv2.line(img, p, _ipt(rng, -10, SIZE + 10), color, _i(rng, 1, 6), cv2.LINE_AA)
    return img


def _pt(x, y):
    return (int(round(x * 16)), int(round(y * 16)))  # 4 fractional bits for cv2's shift=4


def _draw_face(canvas, p, view):
    """Draw the person centred at (56, 60) in a frontal frame; `view` holds per-photo changes."""
    cx, cy = 56.0, 62.0
    yaw = view["yaw"]
    rx = p["face_rx"] * (1 - 0.25 * abs(yaw))
    ry = p["face_ry"]
    skin = _hsv_to_bgr(*p["skin"])
    hair = _hsv_to_bgr(*view["hair"])
    aa = cv2.LINE_AA
    sh = 4

    # hair behind the head (long styles)
    if p["hair_style"] == "long":
        cv2.ellipse(canvas, _pt(cx, cy + 4), _pt(rx + p["hair_volume"] + 4, ry + 10), 0, 180, 360, hair, -1, aa, sh)
        cv2.rectangle(canvas, _pt(cx - rx - p["hair_volume"] - 4, cy)[:2], _pt(cx + rx + p["hair_volume"] + 4,
                      cy + ry * 0.9), hair, -1, aa, sh)
    # ears
    for side in (-1, 1):
        ex = cx + side * (rx - 1) + yaw * -side * 3
        cv2.ellipse(canvas, _pt(ex, cy - 2), _pt(p["ear"] * (1 - 0.4 * max(0, side * -yaw) * 2), p["ear"] * 1.5),
                    0, 0, 360, skin, -1, aa, sh)
    # head: upper ellipse + jaw
    cv2.ellipse(canvas, _pt(cx, cy), _pt(rx, ry), 0, 0, 360, skin, -1, aa, sh)
    jaw = np.array([[cx - rx * 0.98, cy], [cx - rx * p["jaw"], cy + ry * 0.85], [cx, cy + ry * 1.08],
                    [cx + rx * p["jaw"], cy + ry * 0.85], [cx + rx * 0.98, cy]])
    cv2.fillPoly(canvas, [np.round(jaw * 16).astype(np.int32)], skin, aa, sh)

    fx = cx + yaw * rx  # features slide with yaw
    shade = tuple(int(c * 0.75) for c in skin)
    dark = tuple(int(c * 0.5) for c in skin)
    # beard
    if p["beard"]:
        beard_col = tuple(int(c * 0.8) for c in hair)
        if p["beard"] in (1, 2):
            pts = np.array([[fx - rx * 0.85, cy + 4], [fx - rx * p["jaw"] * 0.9, cy + ry * 0.85], [fx, cy + ry * 1.1],
                            [fx + rx * p["jaw"] * 0.9, cy + ry * 0.85], [fx + rx * 0.85, cy + 4],
                            [fx + p["mouth_w"], cy + p["mouth_y"] - 4], [fx - p["mouth_w"], cy + p["mouth_y"] - 4]])
            if p["beard"] == 2:  # goatee only
                pts = np.array([[fx - p["mouth_w"] * 0.6, cy + p["mouth_y"] + 3], [fx, cy + ry * 1.08],
                                [fx + p["mouth_w"] * 0.6, cy + p["mouth_y"] + 3]])
            cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], beard_col, aa, sh)
        cv2.ellipse(canvas, _pt(fx, cy + p["mouth_y"] - 4), _pt(p["mouth_w"] * 0.9, 3), 0, 180, 360, beard_col, -1,
                    aa, sh)
    # eyes, irises, brows
    for side in (-1, 1):
        scale = 1 - 0.35 * max(0.0, side * -yaw) * 2  # the far eye looks smaller
        ex, ey = fx + side * p["eye_dx"] * (1 - 0.3 * abs(yaw)), cy + p["eye_y"]
        erx = p["eye_rx"] * scale
        ery = max(0.6, erx * p["eye_open"] * view["eye_open"])
        tilt = side * p["eye_tilt"]
        cv2.ellipse(canvas, _pt(ex, ey), _pt(erx, ery), tilt, 0, 360, (245, 245, 245), -1, aa, sh)
        cv2.circle(canvas, _pt(ex + yaw * 2, ey), int(16 * min(ery, erx * p["iris_r"])),
                   _hsv_to_bgr(*p["iris"]), -1, aa, sh)
        cv2.ellipse(canvas, _pt(ex, ey), _pt(erx, ery), tilt, 0, 360, dark, 1, aa, sh)
        by = ey - p["brow_gap"] - ery
        half = erx * p["brow_len"]
        ang = math.radians(side * p["brow_angle"])
        b0 = (ex - half * math.cos(ang), by - side * half * math.sin(ang))
        b1 = (ex + half * math.cos(ang), by + side * half * math.sin(ang))
        mid = ((b0[0] + b1[0]) / 2, (b0[1] + b1[1]) / 2 - p["brow_arch"])
        cv2.polylines(canvas, [np.round(np.array([b0, mid, b1]) * 16).astype(np.int32)], False, hair,
                      p["brow_thick"], aa, sh)
    # glasses
    if p["glasses"] and view["glasses"]:
        col = _hsv_to_bgr(*p["glasses_color"])
        r = p["eye_rx"] + 4
        for side in (-1, 1):
            ex, ey = fx + side * p["eye_dx"] * (1 - 0.3 * abs(yaw)), cy + p["eye_y"]
            if p["glasses"] == 1:
                cv2.circle(canvas, _pt(ex, ey), int(r * 16), col, 2, aa, sh)
            else:
                cv2.rectangle(canvas, _pt(ex - r, ey - r * 0.7), _pt(ex + r, ey + r * 0.7), col, 2, aa, sh)
        cv2.line(canvas, _pt(fx - p["eye_dx"] + r, cy + p["eye_y"]), _pt(fx + p["eye_dx"] - r, cy + p["eye_y"]),
                 col, 2, aa, sh)
    # nose
    nx, ny = fx + yaw * 4, cy + p["eye_y"] + 4
    tip = (nx + yaw * 3, ny + p["nose_len"])
    if p["nose_style"] == 0:
        cv2.line(canvas, _pt(nx, ny), _pt(*tip), shade, 2, aa, sh)
    elif p["nose_style"] == 1:
        tri = np.array([[nx, ny], [tip[0] - p["nose_w"], tip[1]], [tip[0] + p["nose_w"], tip[1]]])
        cv2.fillPoly(canvas, [np.round(tri * 16).astype(np.int32)], shade, aa, sh)
    else:
        cv2.ellipse(canvas, _pt(*tip), _pt(p["nose_w"], p["nose_w"] * 0.6), 0, 0, 360, shade, -1, aa, sh)
    for side in (-1, 1):
        cv2.circle(canvas, _pt(tip[0] + side * p["nose_w"] * 0.6, tip[1]), 16, dark, -1, aa, sh)
    # mouth
    my = cy + p["mouth_y"]
    smile = p["smile"] + view["smile"]
    half = p["mouth_w"] * (1 - 0.3 * abs(yaw))
    xs = np.linspace(-half, half, 9)
    ys = my - smile * (1 - (xs / half) ** 2) + smile
    mouth = np.stack([fx + yaw * 3 + xs, ys], 1)
    lip = _hsv_to_bgr(*p["lip_color"])
    if view["mouth_open"] > 0.5:
        inner = np.concatenate([mouth, mouth[::-1] + [0, view["mouth_open"]]])
        cv2.fillPoly(canvas, [np.round(inner * 16).astype(np.int32)], (40, 30, 60), aa, sh)
    cv2.polylines(canvas, [np.round(mouth * 16).astype(np.int32)], False, lip, p["lip"], aa, sh)
    # moles
    for mx, my_, r in p["moles"]:
        cv2.circle(canvas, _pt(fx + mx * rx, cy + my_ * ry), int(r * 16), dark, -1, aa, sh)
    # hair on top
    top = cy - ry
    vol = view["hair_volume"]
    style = p["hair_style"]
    if style != "bald":
        line = top + p["hairline"] * ry * 0.7
        cv2.ellipse(canvas, _pt(cx, line), _pt(rx + vol * 0.5, (line - top) + vol), 0, 180, 360, hair, -1, aa, sh)
        if style == "fringe":
            cv2.rectangle(canvas, _pt(cx - rx * 0.8, line - 2), _pt(cx + rx * 0.8, line + 7), hair, -1, aa, sh)
        elif style == "parted":
            cv2.line(canvas, _pt(cx + rx * 0.3, top - vol + 2), _pt(cx + rx * 0.2, line), skin, 2, aa, sh)
        elif style == "curly":
            for k in range(9):
                a = math.pi * (1 + k / 8)
                cv2.circle(canvas, _pt(cx + (rx + vol * 0.4) * math.cos(a), line + (line - top + vol) * math.sin(a)),
                           int(16 * (3 + vol * 0.3)), hair, -1, aa, sh)
        elif style == "short":
            for side in (-1, 1):
                cv2.rectangle(canvas, _pt(cx + side * rx * 0.95 - 2, line), _pt(cx + side * rx * 0.95 + 2, cy - 6),
                              hair, -1, aa, sh)


def render(identity: dict, rng: np.random.Generator, nz: Nuisance = Nuisance(), *, yaw=None, age: float = 0.0) -> bytes:
    """One photo of `identity` as JPEG bytes (112x112, RGB content, stored as JPEG)."""
    p = identity
    hair = np.array(p["hair"], float)
    if age > 0:  # grey hair, wrinkles below
        hair = hair * np.array([1, 1 - 0.8 * age, 1]) + np.array([0, 0, 160 * age])
    view = {
        "yaw": _u(rng, -nz.yaw, nz.yaw) if yaw is None else float(yaw),
        "eye_open": 0.2 if rng.random() < 0.08 * nz.expression else _u(rng, 1 - 0.3 * nz.expression, 1.15),
        "smile": _u(rng, -2.5, 2.5) * nz.expression,
        "mouth_open": _u(rng, 0, 6) if rng.random() < 0.25 * nz.expression else 0.0,
        "glasses": rng.random() >= nz.glasses_off_prob,
        "hair": tuple(hair),
        "hair_volume": max(0.0, p["hair_volume"] + _u(rng, -2.5, 2.5)),
    }
    face = np.zeros((SIZE, SIZE, 3), np.uint8)
    _draw_face(face, p, view)
    if age > 0:
        col = tuple(int(c * 0.6) for c in _hsv_to_bgr(*p["skin"]))
        for k in range(int(1 + 4 * age)):
            y = 62 + p["eye_y"] + 6 + k * 3
            cv2.line(face, (56 - 22, int(y)), (56 - 16, int(y + 2)), col, 1, cv2.LINE_AA)
            cv2.line(face, (56 + 16, int(y + 2)), (56 + 22, int(y)), col, 1, cv2.LINE_AA)
    _, mask = cv2.threshold(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), 0, 255, cv2.THRESH_BINARY)  # all drawn

    m = cv2.getRotationMatrix2D((56, 62), _u(rng, -nz.rotation_deg, nz.rotation_deg), 1 + _u(rng, -nz.scale, nz.scale))
    m[0, 2] += _u(rng, -nz.shift_px, nz.shift_px)
    m[1, 2] += _u(rng, -nz.shift_px, nz.shift_px)
    face = cv2.warpAffine(face, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, m, (SIZE, SIZE), flags=cv2.INTER_NEAREST)

    img = _background(rng, nz)
    cv2.copyTo(face, mask, img)
    if rng.random() < nz.occlusion_prob:
        color = _hsv_to_bgr(_u(rng, 0, 180), _u(rng, 0, 255), _u(rng, 20, 255))
        cv2.ellipse(img, _ipt(rng, 20, 92), _ipt(rng, 8, 22), _u(rng, 0, 180), 0, 360, color, -1, cv2.LINE_AA)

    # lighting (directional ramp, brightness, colour cast), blur, sensor noise
    phi = _u(rng, 0, 2 * math.pi)
    ramp = 1 + _u(rng, 0, nz.light_gradient) * (math.cos(phi) * _XX + math.sin(phi) * _YY)
    level = _u(rng, *nz.brightness)
    gain = cv2.merge([ramp * np.float32(level * (1 + _u(rng, -nz.color_cast, nz.color_cast))) for _ in range(3)])
    out = cv2.multiply(img.astype(np.float32), gain)
    if rng.random() < nz.blur_prob:
        out = cv2.GaussianBlur(out, (0, 0), _u(rng, 0.4, nz.blur_sigma))
    y0, x0 = _i(rng, 0, 64), _i(rng, 0, 64)
    out = cv2.scaleAdd(np.ascontiguousarray(_NOISE[y0 : y0 + SIZE, x0 : x0 + SIZE]), _u(rng, 0, nz.noise_std), out)
    img = cv2.convertScaleAbs(out)  # |x| saturated to uint8: a fast clip for this use
    quality = _i(rng, nz.jpeg_quality[0], nz.jpeg_quality[1] + 1)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])  # colours were drawn as BGR
    assert ok
    return buf.tobytes()
