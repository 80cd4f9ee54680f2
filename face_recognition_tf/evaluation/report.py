"""Present verification results: a console table, results.json / .csv / .md and one ROC figure per target.

`results.json` is the machine-readable contract (format below); the CSV is one row per checkpoint and
target for spreadsheets; the Markdown is what people paste into a README or an issue.  Accuracies are
shown in percent with two decimals, the way face-recognition tables print them; files keep full
precision.  Every file is written through `face_recognition_tf.atomic` (a temporary name, then a rename,
with the mode the user's umask gives), so an interrupted run never leaves a half-written report and a
folder that cannot be written is one `OutputError` naming it.

results.json:
    {"format_version": 1, "created": ISO time, "data": folder or null, "flip": bool, "folds": int,
     "targets": [name, ...], "checkpoints": [{"name": display name, "path": path}, ...],
     "results": {checkpoint name: {target: VerificationResult.to_dict()}}}
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from face_recognition_tf.atomic import ensure_dir, write_bytes, write_text
from face_recognition_tf.evaluation.verification import TAR_FAR_TARGETS, VerificationResult

FORMAT_VERSION = 1
Results = Mapping[str, Mapping[str, VerificationResult]]  # checkpoint name -> target -> result


def percent(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:.2f}"
    return text if std is None else f"{text} +- {100 * std:.2f}"


def _targets_of(results: Results) -> list[str]:
    return list(dict.fromkeys(target for per_target in results.values() for target in per_target))


def format_table(results: Results) -> str:
    """Target rows x checkpoint columns of `accuracy +- std` (percent), aligned for a terminal."""
    checkpoints = list(results)
    rows = [["target", *checkpoints]]
    for target in _targets_of(results):
        row = [target]
        for name in checkpoints:
            r = results[name].get(target)
            row.append(percent(r.accuracy_mean, r.accuracy_std) if r else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_CSV_FIELDS = [
    "num_pairs", "accuracy_mean", "accuracy_std", "accuracy_noflip_mean", "accuracy_noflip_std",
    "val_mean", "val_std", "far_mean", "auc", "eer", "xnorm", "threshold_mean", "cosine_threshold",
    "cosine_same_mean", "cosine_diff_mean",
]


def to_json(results: Results, *, paths: Mapping[str, str], data: str | None, flip: bool, folds: int) -> str:
    document = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data,
        "flip": flip,
        "folds": folds,
        "targets": _targets_of(results),
        "checkpoints": [{"name": name, "path": paths.get(name)} for name in results],
        "results": {name: {t: r.to_dict() for t, r in per.items()} for name, per in results.items()},
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def to_csv(results: Results, *, paths: Mapping[str, str]) -> str:
    buffer = io.StringIO()
    far_columns = [f"tar_at_far_{far:g}" for far in TAR_FAR_TARGETS]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["checkpoint", "path", "target", *_CSV_FIELDS, *far_columns])
    for name, per_target in results.items():
        for target, result in per_target.items():
            plain = result.to_dict()
            tars = plain["tar_at_far"]
            writer.writerow([
                name, paths.get(name, ""), target,
                *("" if plain[f] is None else plain[f] for f in _CSV_FIELDS),
                *("" if tars.get(f"{far:g}") is None else tars[f"{far:g}"] for far in TAR_FAR_TARGETS),
            ])
    return buffer.getvalue()


def to_markdown(results: Results, *, flip: bool, folds: int) -> str:
    checkpoints = list(results)
    targets = _targets_of(results)
    protocol = "image + flip embeddings summed" if flip else "image embeddings only (no flip)"
    lines = [
        "# Verification results",
        "",
        f"insightface protocol, {folds}-fold, {protocol}. Accuracy in percent, mean +- std over folds.",
        "",
        "| target | " + " | ".join(checkpoints) + " |",
        "|---|" + "---:|" * len(checkpoints),
    ]
    for target in targets:
        cells = [percent(results[n][target].accuracy_mean, results[n][target].accuracy_std)
                 if target in results[n] else "-" for n in checkpoints]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    far_heads = [f"TAR@FAR={far:g}" for far in TAR_FAR_TARGETS]
    for target in targets:
        lines += [
            "",
            f"## {target}",
            "",
            "| checkpoint | pairs | accuracy | no-flip | VAL@FAR=1e-3 | AUC | EER | "
            + " | ".join(far_heads) + " | XNorm | threshold (dist / cos) |",
            "|---|" + "---:|" * (9 + len(far_heads) - 1),
        ]
        for name in checkpoints:
            r = results[name].get(target)
            if r is None:
                continue
            tars = [percent(r.tar_at_far.get(far)) for far in TAR_FAR_TARGETS]
            val = "-" if r.val_mean != r.val_mean else f"{percent(r.val_mean, r.val_std)} @ {r.far_mean:.5f}"
            lines.append(
                f"| {name} | {r.num_pairs} | {percent(r.accuracy_mean, r.accuracy_std)} | "
                f"{percent(r.accuracy_noflip_mean, r.accuracy_noflip_std)} | {val} | {r.auc:.5f} | "
                f"{percent(r.eer)} | " + " | ".join(tars)
                + f" | {r.xnorm:.3f} | {r.threshold_mean:.3f} / {r.cosine_threshold:.3f} |"
            )
    return "\n".join(lines) + "\n"


def roc_png(target: str, per_checkpoint: Mapping[str, VerificationResult]) -> bytes:
    """One ROC figure (TAR against FAR on a log axis) with a curve per checkpoint, as PNG bytes.

    Uses matplotlib's object API with the Agg canvas, never pyplot, so nothing global is touched and no
    display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    draw_roc(figure.add_subplot(), target, per_checkpoint)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def draw_roc(axes, target: str, per_checkpoint: Mapping[str, VerificationResult]) -> None:
    """Draw one pair set's ROC curves (one per checkpoint) on matplotlib `axes` (several panels share a figure)."""
    import numpy as np

    curves = {name: (np.asarray(r.roc_far), np.asarray(r.roc_tar)) for name, r in per_checkpoint.items()}
    positive = [far[far > 0].min() for far, _ in curves.values() if (far > 0).any()]
    # a log axis cannot show FAR 0: draw it at half the smallest measurable FAR so perfect curves stay visible
    floor = max(min(min(positive, default=0.1), 0.1) / 2, 1e-6)
    for name, (far, tar) in curves.items():
        result = per_checkpoint[name]
        axes.plot(np.maximum(far, floor), tar,
                  label=f"{name} (AUC {result.auc:.4f}, acc {percent(result.accuracy_mean)}%)")
    axes.set_xscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_title(f"ROC on {target}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")


def write_reports(out_dir: str | Path, results: Results, *, paths: Mapping[str, str] | None = None,
                  data: str | None = None, flip: bool = True, folds: int = 10) -> list[Path]:
    """Write results.json, results.csv, results.md and roc_<target>.png into `out_dir`; return the paths."""
    out = ensure_dir(out_dir)
    paths = dict(paths or {})
    written = []
    for name, text in (
        ("results.json", to_json(results, paths=paths, data=data, flip=flip, folds=folds)),
        ("results.csv", to_csv(results, paths=paths)),
        ("results.md", to_markdown(results, flip=flip, folds=folds)),
    ):
        write_text(out / name, text)
        written.append(out / name)
    for target in _targets_of(results):
        per_checkpoint = {name: per[target] for name, per in results.items() if target in per}
        png = out / f"roc_{_safe(target)}.png"
        write_bytes(png, roc_png(target, per_checkpoint))
        written.append(png)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def checkpoint_names(paths: Sequence[str], describe) -> dict[str, str]:
    """Unique display name -> path (a second `run/ckpt-5` becomes `run/ckpt-5#2`)."""
    names: dict[str, str] = {}
    for path in paths:
        base = describe(path)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        names[name] = path
    return names
