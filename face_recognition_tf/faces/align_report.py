"""What `frtf align` tells a person: `align_report.json` and `.csv` (one row per photo) and one contact
sheet PNG of crops per identity.

Why the sheets: a crop that is not the person (a face in the background that the policy picked, a
poster, a false detection) silently poisons fine-tuning, and only a look catches it.  A sheet shows all
of one person's crops with their file names, so the odd one stands out; names of crops that come with a
note (several faces, a downscaled photo) are drawn in red.  The CSV opens in a spreadsheet to sort by
score or filter by status; the JSON also holds the settings, the counts and what was not a photo.
Coordinates are in the pixels of the photo file as displayed (after EXIF orientation).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from face_recognition_tf import atomic
from face_recognition_tf.faces.align import LANDMARK_NAMES
from face_recognition_tf.faces.images import ALIGN_REPORT, CONTACT_SHEETS

REPORT_CSV = "align_report.csv"
REPORT_JSON, SHEETS = ALIGN_REPORT, CONTACT_SHEETS
SHEET_COLUMNS = 8
SHEET_TILE = 112
SHEET_LABEL = 16
SHEET_PAGE = 200  # crops per sheet; a person with more gets NAME-2.png, NAME-3.png, ...
CSV_FIELDS = (
    ["identity", "file", "status", "crop", "score", "faces", "box_x1", "box_y1", "box_x2", "box_y2"]
    + [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in ("x", "y")]
    + ["width", "height", "note"]
)


def identity_summaries(identities: list[str], rows: list[dict]) -> list[dict]:
    """Per person: photos, usable crops, and a note when there are too few for what comes next."""
    counts = {name: [0, 0] for name in identities}
    for row in rows:
        counts[row["identity"]][0] += 1
        counts[row["identity"]][1] += row["status"] == "ok"
    summaries = []
    for name in identities:
        photos, ok = counts[name]
        if photos == 0:
            note = "empty folder (no photo): skipped"
        elif ok == 0:
            note = "no usable crop: nothing written for this person (see the status of each photo)"
        elif photos == 1:
            note = "one photo: kept (a gallery can use it; same-person pairs need two)"
        elif ok == 1:
            note = "only one usable crop: kept (a gallery can use it; same-person pairs need two)"
        else:
            note = ""
        summaries.append({"identity": name, "photos": photos, "ok": ok, "note": note})
    return summaries


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = dict(row)
        for key, value in zip(CSV_FIELDS[6:10], row.get("box") or [None] * 4):
            flat[key] = value
        for i, name in enumerate(LANDMARK_NAMES):
            point = row["landmarks"][i] if row.get("landmarks") else (None, None)
            flat[f"{name}_x"], flat[f"{name}_y"] = point
        writer.writerow({key: "" if flat.get(key) is None else flat[key] for key in CSV_FIELDS})
    return buffer.getvalue()


def write_report(src: Path, out: Path, settings, plan, rows: list[dict], *, aligned_now: int, workers: int,
                 seconds: float) -> dict:
    """Write the JSON and CSV reports and the contact sheets (each atomically); return the report."""
    from face_recognition_tf.faces.align_folder import STATUSES

    counts = {status: 0 for status in STATUSES}
    for row in rows:
        counts[row["status"]] += 1
    report = {
        "format": "frtf-align-report",
        "version": 1,
        "source": str(Path(src).resolve()),
        "out": str(Path(out).resolve()),
        "settings": settings.as_dict(),
        "photos_total": len(rows),
        "counts": counts,
        "aligned_this_run": aligned_now,
        "reused_from_earlier_runs": len(rows) - aligned_now,
        "workers": workers,
        "seconds": round(seconds, 2),
        "identities": identity_summaries(plan.identities, rows),
        "empty_identities": list(plan.empty),
        "ignored": list(plan.ignored),
        "contact_sheets": write_contact_sheets(out, rows),
        "photos": rows,
    }
    atomic.write_text(out / REPORT_CSV, csv_text(rows))
    atomic.write_json(out / REPORT_JSON, report, sort_keys=False)
    return report


def write_contact_sheets(out: Path, rows: list[dict]) -> list[str]:
    """One PNG grid of crops per identity (`contact_sheets/<identity>.png`); old sheets of people who
    no longer have a crop are removed.  Returns the sheets' paths relative to OUT."""
    import cv2

    by_identity: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            by_identity.setdefault(row["identity"], []).append(row)
    folder = out / SHEETS
    written = []
    for identity, items in by_identity.items():
        for page, start in enumerate(range(0, len(items), SHEET_PAGE)):
            name = f"{identity}.png" if page == 0 else f"{identity}-{page + 1}.png"
            ok, png = cv2.imencode(".png", contact_sheet(out, items[start:start + SHEET_PAGE]))
            if ok:
                atomic.write_bytes(folder / name, png.tobytes())
                written.append(f"{SHEETS}/{name}")
    if folder.is_dir():
        keep = {Path(path).name for path in written}
        for old in folder.glob("*.png"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
    return written


def contact_sheet(out: Path, rows: list[dict]) -> np.ndarray:
    """A BGR image: crops in rows of SHEET_COLUMNS, each over its file name."""
    import cv2

    from face_recognition_tf.errors import DatasetError
    from face_recognition_tf.faces.images import read_rgb

    columns = min(SHEET_COLUMNS, len(rows))
    tile_h = SHEET_TILE + SHEET_LABEL
    sheet = np.full((math.ceil(len(rows) / columns) * tile_h, columns * SHEET_TILE, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        top, left = (i // columns) * tile_h, (i % columns) * SHEET_TILE
        try:
            crop = cv2.cvtColor(read_rgb(out / row["crop"]), cv2.COLOR_RGB2BGR)
        except DatasetError:
            crop = np.full((SHEET_TILE, SHEET_TILE, 3), 200, np.uint8)  # deleted since: a grey tile
        if crop.shape[:2] != (SHEET_TILE, SHEET_TILE):
            crop = cv2.resize(crop, (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_AREA)
        sheet[top:top + SHEET_TILE, left:left + SHEET_TILE] = crop
        label = _fit_label(Path(row["file"]).name, SHEET_TILE - 4)
        colour = (0, 0, 200) if row.get("note") else (0, 0, 0)
        cv2.putText(sheet, label, (left + 2, top + SHEET_TILE + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33, colour, 1,
                    cv2.LINE_AA)
    return sheet


def _fit_label(name: str, width: int) -> str:
    """The file name in OpenCV's ASCII font, shortened in the middle to fit `width` pixels."""
    import cv2

    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in name)
    if cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.33, 1)[0][0] <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        short = text[: keep // 2] + ".." + text[len(text) - (keep - keep // 2):]
        if cv2.getTextSize(short, cv2.FONT_HERSHEY_SIMPLEX, 0.33, 1)[0][0] <= width:
            return short
    return text[:4]
