"""Raw photos of people -> aligned face crops: the engine of `frtf align SRC OUT`.

SRC holds one sub-folder of photos per person; OUT gets `OUT/<person>/<photo stem>.jpg`, each the face
warped onto insightface's five-point template (`align.align_face`), which is what `frtf convert
--from-folder`, `make-pairs`, galleries and fine-tuning take.  `align_report` writes the report and
the contact sheets.  The choices, and why:

* Crops are JPEG, quality 95: insightface's training sets are JPEG crops, and `convert --from-folder`
  stores 112x112 JPEGs byte for byte (a PNG would be re-encoded to JPEG there anyway, at a quarter of
  the disk space here).
* `--min-face-size` is in the photo's own pixels.  MTCNN runs on a copy whose longer side is at most
  `detect_size` (time and memory stay bounded on huge photos); a photo so large that P-Net's 12-pixel
  window is bigger than the minimum gets a note saying which faces could not be searched for.
* A face more than twice the crop size is shrunk with area averaging before the warp (`align.warp_face`):
  a bilinear warp straight from a 1000-pixel face to 112 pixels aliases.  Smaller faces are warped
  exactly as insightface does.
* Worker processes are started with "spawn" and each builds its MTCNN once: TensorFlow is not safe in
  forked children, and detection is CPU-bound.
* Resumable and kill-safe: a crop is written under a temporary name and renamed (`atomic.py`), so a
  SIGKILL leaves no half-written crop; each finished photo is then one line appended to
  `OUT/.align_journal.jsonl`.  A rerun skips a photo whose line is there, whose file is unchanged (size
  and mtime) and whose crop, if any, still exists; it redoes everything else.  A rerun with other
  settings is refused unless `overwrite` (mixed settings would make a silently inconsistent dataset).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from face_recognition_tf import atomic
from face_recognition_tf.errors import ConfigError, DatasetError, FaceRecognitionError, OutputError
from face_recognition_tf.faces import align_report
from face_recognition_tf.faces.align import template_for_size, warp_face
from face_recognition_tf.faces.align_report import REPORT_JSON
from face_recognition_tf.faces.images import (
    IMAGE_SUFFIXES,
    JPEG_QUALITY,
    downscale,
    encode_jpeg,
    has_image_suffix,
    load_image,
)

POLICIES = ("largest", "confident", "center", "skip")
STATUSES = ("ok", "no_face", "several_faces", "unreadable", "too_small")
JOURNAL = ".align_journal.jsonl"
PNET_WINDOW = 12  # MTCNN's smallest face, in pixels of the image it runs on


@dataclasses.dataclass(frozen=True)
class AlignSettings:
    """What decides a crop; a rerun with different settings must start over (see module docstring)."""

    min_face_size: int = 40
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    policy: str = "largest"
    image_size: int = 112
    detect_size: int = 1280

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy {self.policy!r}: choose from {', '.join(POLICIES)}")
        if self.min_face_size < 1:
            raise ConfigError(f"--min-face-size {self.min_face_size}: must be a positive number of pixels")
        if len(self.thresholds) != 3 or not all(0.0 <= float(t) <= 1.0 for t in self.thresholds):
            raise ConfigError(f"--thresholds {list(self.thresholds)}: need three numbers in [0, 1] (P-Net, R-Net, O-Net)")
        if self.detect_size < 64:
            raise ConfigError(f"--detect-size {self.detect_size}: must be at least 64 pixels")
        try:
            template_for_size(self.image_size)
        except FaceRecognitionError as exc:
            raise ConfigError(f"--image-size {self.image_size}: {exc}") from None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "thresholds": [float(t) for t in self.thresholds]}


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photo to align: where it is, where its crop goes (relative to OUT), and its stamp."""

    identity: str
    file: str  # path inside the identity folder, with "/" separators
    source: str
    crop: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> tuple[str, str]:
        return self.identity, self.file


@dataclasses.dataclass
class Plan:
    photos: list[Photo]
    identities: list[str]  # every identity folder, empty ones included
    empty: list[str]
    ignored: list[dict]  # files that are not photos: {"path", "reason"}


def check_folders(src, out) -> tuple[Path, Path]:
    """SRC must be a folder; OUT must not be SRC, inside it (its crops would be read as photos next
    time) or contain it (SRC would look like an identity of OUT to every later command)."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder (expected SRC/<person>/<photo>)")
    real_src, real_out = src.resolve(), out.resolve()
    if real_out == real_src or real_src in real_out.parents:
        raise ConfigError(f"{out}: OUT is inside SRC {src}; its crops would be taken for photos on the next run "
                          "(choose a folder outside SRC)")
    if real_out in real_src.parents:
        raise ConfigError(f"{out}: OUT contains SRC {src}; choose a folder beside SRC")
    return src, out


def plan_folder(src: Path) -> Plan:
    """List SRC/<identity>/** (sorted, hidden entries skipped) and name each photo's crop.

    A crop keeps its photo's relative path with `.jpg` as suffix; when two photos would share a name
    (`a.png` and `a.jpg`) the later one in sorted order gets its suffix into the name (`a_png.jpg`).
    """
    photos, identities, empty, ignored = [], [], [], []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append({"path": entry.name, "reason": "not inside an identity folder"})
            continue
        identities.append(entry.name)
        taken: set[str] = set()
        count = 0
        for path in sorted(entry.rglob("*")):
            rel = path.relative_to(entry)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if not has_image_suffix(path):
                ignored.append({"path": f"{entry.name}/{rel.as_posix()}", "reason": "not an image file name "
                                f"(suffix {path.suffix or 'none'}; photos are {', '.join(sorted(IMAGE_SUFFIXES))})"})
                continue
            crop = rel.with_suffix(".jpg").as_posix()
            if crop in taken:
                crop = rel.with_name(f"{rel.stem}_{rel.suffix[1:]}.jpg").as_posix()
                n = 2
                while crop in taken:
                    crop, n = rel.with_name(f"{rel.stem}_{rel.suffix[1:]}_{n}.jpg").as_posix(), n + 1
            taken.add(crop)
            stat = path.stat()
            photos.append(Photo(entry.name, rel.as_posix(), str(path), f"{entry.name}/{crop}", stat.st_size,
                                stat.st_mtime_ns))
            count += 1
        if count == 0:
            empty.append(entry.name)
    return Plan(photos, identities, empty, ignored)


class Aligner:
    """Detect and align one photo at a time with one MTCNN (built once per process)."""

    def __init__(self, settings: AlignSettings, out: Path):
        from face_recognition_tf.faces.detect import FaceDetector

        self.settings = settings
        self.out = Path(out)
        self.detector = FaceDetector(min_face_size=PNET_WINDOW, thresholds=settings.thresholds, max_size=None)

    def __call__(self, photo: Photo) -> dict:
        row = {"identity": photo.identity, "file": photo.file, "status": "", "crop": photo.crop, "score": None,
               "box": None, "landmarks": None, "faces": 0, "width": None, "height": None, "note": "",
               "source_size": photo.size, "source_mtime_ns": photo.mtime_ns}
        crop_path = self.out / photo.crop
        try:
            row.update(self._align(photo, crop_path))
        except (KeyboardInterrupt, SystemExit, OutputError):
            raise  # OUT cannot be written (disk full, read-only): no use going on
        except FaceRecognitionError as exc:  # MTCNN's own failure on an odd photo
            row.update(status="unreadable", note=str(exc).removeprefix(f"{photo.source}: "))
        except Exception as exc:  # one odd photo must not stop a run over thousands: it is recorded
            row.update(status="unreadable", note=f"unexpected error: {type(exc).__name__}: {exc}")
        if row["status"] != "ok":
            crop_path.unlink(missing_ok=True)  # a crop an earlier run (other settings) left
            row["crop"] = ""
        return row

    def _align(self, photo: Photo, crop_path: Path) -> dict:
        settings = self.settings
        try:
            loaded = load_image(photo.source)
        except DatasetError as exc:
            return {"status": "unreadable", "note": str(exc).removeprefix(f"{photo.source}: ")}
        notes = [loaded.note] if loaded.note else []
        result = {"width": loaded.width, "height": loaded.height}
        if min(loaded.width, loaded.height) < settings.min_face_size:
            return {**result, "status": "too_small", "note": f"photo is {loaded.width}x{loaded.height}, smaller "
                    f"than --min-face-size {settings.min_face_size}"}
        image = loaded.image
        small, shrink = downscale(image, settings.detect_size)
        to_photo = 1.0 / (shrink * loaded.scale)  # detection-copy pixels -> the file's pixels
        window = settings.min_face_size / to_photo
        if window < PNET_WINDOW:
            notes.append(f"only faces of {math.ceil(PNET_WINDOW * to_photo)} px and larger could be searched for "
                         f"(detected on a {small.shape[1]}x{small.shape[0]} copy)")
        faces = self.detector.detect(small, photo.source, min_face_size=max(PNET_WINDOW, math.floor(window)))
        result["faces"] = len(faces)
        sized = [f for f in faces if max(f.box[2] - f.box[0], f.box[3] - f.box[1]) * to_photo >= settings.min_face_size]

        def describe(face) -> dict:
            return {"score": round(float(face.confidence), 4), "box": _rounded(face.box * to_photo),
                    "landmarks": _rounded(face.landmarks * to_photo)}

        if not faces:
            return {**result, "status": "no_face", "note": "; ".join(notes)}
        if not sized:
            biggest = max(faces, key=lambda f: f.area)
            side = round(float(max(biggest.box[2] - biggest.box[0], biggest.box[3] - biggest.box[1])) * to_photo)
            notes.append(f"{len(faces)} face(s) found, all smaller than --min-face-size {settings.min_face_size} px "
                         f"(largest {side} px)")
            return {**result, **describe(biggest), "status": "too_small", "note": "; ".join(notes)}
        if len(sized) > 1 and settings.policy == "skip":
            notes.append(f"{len(sized)} faces (policy skip): no crop")
            return {**result, **describe(sized[0]), "status": "several_faces", "note": "; ".join(notes),
                    "all_faces": [describe(f) for f in sized]}
        if len(sized) > 1:
            from face_recognition_tf.faces.detect import pick_face

            face = pick_face(sized, settings.policy, small.shape[:2])
            notes.append(f"{len(sized)} faces found; kept the {settings.policy} one")
        else:
            face = sized[0]
        crop = warp_face(image, face.landmarks / shrink, settings.image_size)
        encoded = encode_jpeg(crop, JPEG_QUALITY)
        if encoded is None:
            raise FaceRecognitionError("cannot encode the crop as JPEG")
        atomic.write_bytes(crop_path, encoded)
        return {**result, **describe(face), "status": "ok", "note": "; ".join(notes)}


def _rounded(values: np.ndarray) -> list:
    return np.round(np.asarray(values, dtype=np.float64), 2).tolist()


# -- worker processes -------------------------------------------------------------------------------
_WORKER: dict = {}  # per worker process: its Aligner, built once by _init_worker


def _init_worker(settings: AlignSettings, out: str, threads: int, quiet: bool) -> None:
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process only: mtcnn's "no face" is a TF warning
        from face_recognition_tf.quiet_startup import import_tensorflow_quietly

        tf = import_tensorflow_quietly()
    else:
        import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)  # N workers share the cores
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for gpu in tf.config.list_physical_devices("GPU"):  # several workers share a GPU
        tf.config.experimental.set_memory_growth(gpu, True)
    _WORKER["aligner"] = Aligner(settings, Path(out))


def _work(photo: Photo) -> dict:
    return _WORKER["aligner"](photo)


def default_workers(todo: int) -> int:
    """One process per core, at most 4, and one per 30 photos: a worker pays TensorFlow's and MTCNN's
    start-up (about 8 s, some 15 photos' detection), so a small folder is faster in this process
    (docs/benchmarks.md, "Aligning raw photos")."""
    return max(1, min(os.cpu_count() or 1, 4, math.ceil(todo / 30)))


# -- resuming ----------------------------------------------------------------------------------------
def previous_rows(out: Path, settings: AlignSettings, overwrite: bool) -> dict:
    """Rows of earlier runs into OUT, keyed by (identity, file); refuses OUT if it is not ours."""
    journal, report = out / JOURNAL, out / REPORT_JSON
    if not out.is_dir():
        return {}
    if not journal.is_file() and not report.is_file():
        if not overwrite and any(not p.name.startswith(".") for p in out.iterdir()):
            raise ConfigError(f"{out}: folder exists and is not the output of `frtf align` "
                              "(choose a new or empty folder, or pass --overwrite to write into it)")
        return {}
    stored, rows = None, {}
    if report.is_file():
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
            stored = data.get("settings")
            rows.update({(r["identity"], r["file"]): r for r in data.get("photos", [])})
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged report: the journal (or a fresh start) takes over
    if journal.is_file():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                if "settings" in entry:
                    stored = entry["settings"]
                else:
                    rows[(entry["identity"], entry["file"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # the line a kill cut short: its photo is redone
    if overwrite:
        return {}
    if stored is not None and stored != settings.as_dict():
        changed = ", ".join(f"{k} {stored.get(k)} -> {v}" for k, v in settings.as_dict().items() if stored.get(k) != v)
        raise ConfigError(f"{out}: was aligned with other settings ({changed}); pass --overwrite to redo every "
                          "photo, or choose another OUT")
    return rows


def is_done(photo: Photo, row: dict | None, out: Path) -> bool:
    if row is None or row.get("source_size") != photo.size or row.get("source_mtime_ns") != photo.mtime_ns:
        return False
    if row.get("status") not in STATUSES:
        return False
    return row["status"] != "ok" or (row.get("crop") == photo.crop and (out / photo.crop).is_file())


def remove_temporaries(out: Path, identities: list[str]) -> int:
    """Temporary crops (`.NAME.jpg.XXXX.tmp`) a killed run left behind."""
    removed = 0
    for identity in identities:
        folder = out / identity
        if folder.is_dir():
            for tmp in folder.rglob(".*.jpg.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _run_in_workers(todo, record, settings: AlignSettings, out: Path, workers: int, quiet: bool) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold TF threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(settings, str(out), threads, quiet)) as pool:
        futures = [pool.submit(_work, photo) for photo in todo]
        try:
            for future in as_completed(futures):
                record(future.result())
        except BrokenProcessPool as exc:
            raise FaceRecognitionError(f"{out}: an align worker process died ({exc}); the photos done so far "
                                       "are kept, run the same command again to resume") from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def align_folder(src, out, settings: AlignSettings | None = None, *, workers: int | None = None,
                 overwrite: bool = False, progress: bool = True, quiet_workers: bool = True) -> dict:
    """Align every photo of SRC/<identity>/ into OUT; returns the report (also written to OUT)."""
    from tqdm import tqdm

    settings = settings or AlignSettings()
    started = time.time()
    src, out = check_folders(src, out)
    plan = plan_folder(src)
    if not plan.identities:
        raise DatasetError(f"{src}: holds no identity sub-folders (expected SRC/<person>/<photo>)")
    old = previous_rows(out, settings, overwrite)
    atomic.check_writable_dir(out)
    remove_temporaries(out, plan.identities)
    done = {p.key: old[p.key] for p in plan.photos if is_done(p, old.get(p.key), out)}
    todo = [p for p in plan.photos if p.key not in done]
    lines = [json.dumps({"settings": settings.as_dict()})] + [json.dumps(row) for row in done.values()]
    atomic.write_text(out / JOURNAL, "\n".join(lines) + "\n")  # compacted: one line per photo still there
    workers = default_workers(len(todo)) if workers is None else max(1, int(workers))
    rows = dict(done)
    with open(out / JOURNAL, "a", encoding="utf-8") as journal, \
            tqdm(total=len(todo), unit="photo", desc="align", disable=not progress or not todo,
                 file=sys.stderr) as bar:
        def record(row: dict) -> None:
            rows[(row["identity"], row["file"])] = row
            journal.write(json.dumps(row) + "\n")
            journal.flush()  # in the page cache: survives a kill of this process
            bar.update(1)

        if workers == 1 or len(todo) <= 1:
            aligner = Aligner(settings, out) if todo else None
            for photo in todo:
                record(aligner(photo))
        else:
            _run_in_workers(todo, record, settings, out, workers, quiet_workers)
    ordered = [rows[p.key] for p in plan.photos]
    return align_report.write_report(src, out, settings, plan, ordered, aligned_now=len(todo), workers=workers,
                                     seconds=time.time() - started)
