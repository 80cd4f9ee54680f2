"""What the demo found, drawn on the photos: face boxes, the five landmarks, a label per face, and a
strip of aligned crops.

Why draw on the photo rather than list coordinates: a person checks at a glance that the box is on the
face they meant (the photo may hold several) and that the landmarks sit on eyes, nose and mouth
corners, which is what alignment, and so recognition, depends on.  Sizes scale with the photo so the
drawing reads the same on a 400-pixel portrait and on a 1600-pixel group photo.  OpenCV's fonts know
ASCII only: labels are reduced to it here (accents dropped), the page's tables show the full names.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import numpy as np

from face_recognition_tf.faces.detect import Face

# RGB
GREEN = (30, 150, 60)  # accepted: same person / a gallery match
RED = (210, 45, 45)  # rejected: different people / unknown
BLUE = (40, 110, 220)  # neutral: a face found, nothing decided about it
GREY = (150, 150, 150)  # found but not used (the other faces of a verify photo)
LANDMARK = (255, 210, 0)
WHITE = (255, 255, 255)


@dataclasses.dataclass(frozen=True)
class Mark:
    """One face to draw: where it is, the text over it, its colour (RGB)."""

    face: Face
    label: str = ""
    color: tuple[int, int, int] = BLUE


def ascii_label(text: str) -> str:
    """`text` in the characters OpenCV can draw: accents dropped (José -> Jose), others as '?'."""
    plain = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    kept = "".join(c if 32 <= ord(c) < 127 else "?" for c in plain).strip()
    return kept if kept.strip("? ") else ""


def annotate(image: np.ndarray, marks: list[Mark]) -> np.ndarray:
    """A copy of the RGB photo with each mark's box, landmarks and label; the photo is not changed."""
    import cv2

    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    longer = max(height, width)
    thickness = max(2, round(longer / 350))
    font_scale = max(0.5, longer / 1100)
    # draw the unused (grey) faces first so the faces that matter stay on top where boxes overlap
    for mark in sorted(marks, key=lambda m: m.color != GREY):
        x1, y1, x2, y2 = (int(round(float(v))) for v in mark.face.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), mark.color, thickness, cv2.LINE_AA)
        radius = max(2, thickness + 1)
        for x, y in np.asarray(mark.face.landmarks, np.float64):
            cv2.circle(canvas, (int(round(x)), int(round(y))), radius, LANDMARK, -1, cv2.LINE_AA)
        label = ascii_label(mark.label)
        if label:
            _label(canvas, label, (x1, y1, x2, y2), mark.color, font_scale, max(1, thickness // 2))
    return canvas


def _label(canvas, text, box, color, font_scale, weight) -> None:
    """The text on a filled band of the box's colour, above the box, or inside its top when the box
    touches the photo's top edge; kept inside the photo horizontally."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), baseline = cv2.getTextSize(text, font, font_scale, weight)
    pad = max(3, th // 4)
    x1, y1, _, _ = box
    band_h = th + baseline + 2 * pad
    top = y1 - band_h if y1 - band_h >= 0 else max(0, y1)
    left = min(max(0, x1), max(0, canvas.shape[1] - tw - 2 * pad))
    cv2.rectangle(canvas, (left, top), (left + tw + 2 * pad, top + band_h), color, -1)
    cv2.putText(canvas, text, (left + pad, top + pad + th), font, font_scale, WHITE, weight, cv2.LINE_AA)


def crop_strip(crops, labels=None, size: int = 112, gap: int = 6) -> np.ndarray | None:
    """The aligned crops side by side on white, each with its label under it (None for no crop):
    what the model was actually shown."""
    import cv2

    crops = [np.asarray(c) for c in crops]
    if not crops:
        return None
    labels = [ascii_label(t) for t in (labels or [""] * len(crops))]
    label_h = 22 if any(labels) else 0
    strip = np.full((size + label_h + 2 * gap, len(crops) * (size + gap) + gap, 3), 255, np.uint8)
    for i, (crop, text) in enumerate(zip(crops, labels)):
        if crop.shape[:2] != (size, size):
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        left = gap + i * (size + gap)
        strip[gap:gap + size, left:left + size] = crop
        if text:
            cv2.putText(strip, text[:16], (left + 2, gap + size + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (40, 40, 40), 1, cv2.LINE_AA)
    return strip
