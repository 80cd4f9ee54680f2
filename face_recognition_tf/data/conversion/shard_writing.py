"""Writing a planned conversion: shards in worker processes, resume state, manifest last.

Shared by the .rec converter (convert.py) and the photo-folder converter (folder.py).  A *source*
object (RecSource, FolderSource) knows how to write its rows into a ShardWriter; this module
decides which shards to write, runs them in parallel, and keeps the output folder consistent:
a shard is written under a temporary name, its count and sha256 go to a sidecar, then it is
renamed, so anything named like a shard is complete; manifest.json is written last.

A run that fails leaves OUT as it was; one that is interrupted can be resumed (see run_conversion).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np

from face_recognition_tf.atomic import atomic_file, check_writable_dir, ensure_dir, replace_path, write_json
from face_recognition_tf.data.formats.verification_bin import find_bins
from face_recognition_tf.data.records import tfrecord
from face_recognition_tf.errors import ConfigError, DatasetError, OutputError

STATE_NAME = ".frtf-convert.json"
SHARD_TARGET_BYTES = 64 << 20  # default shard size: enough shards to interleave and to balance workers


# ---------------------------------------------------------------------------------------------
# a source's identity: the resume check compares it with the one in the state file
def fingerprint_files(paths, extra: str = "") -> str:
    """Cheap identity of a source: sizes, small files in full, the ends of large ones."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}\n".encode())
        with open(p, "rb") as f:
            if size <= 4 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 16))
                f.seek(size - (1 << 16))
                h.update(f.read())
    return h.hexdigest()


def fingerprint_listing(entries, extra: str = "") -> str:
    """Identity of a folder source: every relative path and size."""
    h = hashlib.sha256(extra.encode())
    for rel, size in entries:
        h.update(f"{rel}:{size}\n".encode())
    return h.hexdigest()


def default_num_shards(total_bytes: int, num_images: int) -> int:
    """Depends only on the data (not on the machine) so a seed gives the same output anywhere."""
    return max(1, min(num_images, max(2, math.ceil(total_bytes / SHARD_TARGET_BYTES))))


def _write_json(path, obj) -> None:
    """Sidecars, state and manifest: atomic, fsynced (other runs rely on them across a crash)."""
    write_json(path, obj, indent=1, sort_keys=False, durable=True)


def check_arguments(num_shards=None, workers=None, seed=0) -> None:
    """The numbers a user typed, checked before anything is read or written (None = the default)."""
    for flag, value in (("--shards", num_shards), ("--workers", workers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{flag} {value}: must be a whole number, at least 1 (leave it out for the default)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--seed {seed}: must be a whole number, 0 or more")


# ---------------------------------------------------------------------------------------------
# shard writing (worker side)
_COUNTER = None


def _init_worker(counter):
    global _COUNTER  # per-process progress counter shared with the parent, set once at start-up
    _COUNTER = counter


def _tick(n):
    if _COUNTER is not None and n:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def _write_shard(task):
    """Write one shard: temporary file -> sidecar with count and sha256 -> rename."""
    source, rows, final, verify, skip_corrupt = task
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    writer = tfrecord.ShardWriter(tmp, name=final)
    try:
        skipped = source.write_rows(writer, rows, verify, skip_corrupt, _tick)
        info = writer.close()
        info.update(file=final.name, skipped=skipped, verified=bool(verify))
        _write_json(_sidecar(final), info)
        replace_path(tmp, final)
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    return info


def _sidecar(final: Path) -> Path:
    return final.with_name(f".{final.name}.json")


def _remove_debris(out_dir: Path) -> None:
    """Unfinished shards and the temporary files of writes cut short (a killed worker leaves them)."""
    for pattern in (".train-*.partial", "..train-*.tmp", f".{STATE_NAME}.*.tmp"):
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
class _Output:
    """OUT, and what this run wrote into it, so that a failed run can take it back (see run_conversion)."""

    def __init__(self, path, resume: bool):
        self.path = Path(path)
        self.resume = bool(resume)
        self.created = None  # the top-most folder this run created
        self.written: set[Path] = set()  # files this run wrote or is writing

    def check(self) -> None:
        """Fail now, before any work and without creating anything, when OUT cannot be written."""
        if self.path.exists():
            check_writable_dir(self.path)  # a file in its place, or a folder nothing can be written into
            return
        existing = next(p for p in self.path.parents if p.exists())
        if not existing.is_dir():
            raise OutputError(f"{self.path}: cannot create folder ({existing} is a file)")
        if not os.access(existing, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
            raise OutputError(f"{self.path}: cannot create folder ({existing}: "
                              f"{'Read-only file system' if read_only else 'Permission denied'})")

    def create(self) -> Path:
        self.created = next((p for p in [*reversed(self.path.parents), self.path] if not p.exists()), None)
        return ensure_dir(self.path)

    def undo(self, interrupted: bool) -> None:
        """After a failure: keep what --resume can use, or remove what this run wrote."""
        if not self.path.is_dir() or (self.created is None and not self.written):
            return  # nothing of this run's is there (it failed before writing)
        if (self.path / STATE_NAME).is_file() and (interrupted or (self.resume and self.created is None)):
            _remove_debris(self.path)  # finished shards and the state stay for --resume
        elif self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        else:
            for path in self.written:
                path.unlink(missing_ok=True)
            _remove_debris(self.path)


def _prepare_out(out_dir: Path, fingerprint: str, settings: dict, resume: bool, verify: bool):
    """Check what the output folder holds; return {shard file: sidecar info} of reusable shards."""
    manifest_path = out_dir / tfrecord.MANIFEST_NAME
    state_path = out_dir / STATE_NAME
    prior = None
    for path in (manifest_path, state_path):
        if path.is_file():
            try:
                prior = json.loads(path.read_text())
            except ValueError:
                raise DatasetError(f"{path}: unreadable; delete {out_dir} or choose another output folder") from None
            break
    if prior is None and any(out_dir.glob("train-*.tfrecord")):
        raise DatasetError(f"{out_dir}: holds TFRecord shards of unknown origin (no {tfrecord.MANIFEST_NAME}); "
                           "choose another output folder")
    if prior is not None and prior.get("fingerprint") != fingerprint:
        raise DatasetError(f"{out_dir}: holds a different dataset (converted from {prior.get('source_dir', '?')}); "
                           "choose another output folder or delete it")
    same_settings = prior is not None and all(prior.get(k) == v for k, v in settings.items())
    if resume and prior is not None and not same_settings:
        was = ", ".join(f"{k}={prior.get(k)!r}" for k in settings)
        raise DatasetError(f"{out_dir}: the interrupted conversion used {was}; resume with the same settings "
                           "or start over without --resume")
    reusable = {}
    _remove_debris(out_dir)
    if resume and same_settings:
        if manifest_path.is_file() and (not verify or prior.get("verified")):
            return None  # already complete
        for sidecar in out_dir.glob(".train-*.tfrecord.json"):
            try:
                info = json.loads(sidecar.read_text())
            except ValueError:
                continue
            shard = out_dir / info.get("file", "")
            if (shard.is_file() and shard.stat().st_size == info.get("bytes") and (info.get("verified") or not verify)
                    and tfrecord.file_sha256(shard) == info.get("sha256")):  # shards are not fsynced: check
                reusable[info["file"]] = info
    else:  # start over: remove only what a conversion writes
        for path in [*out_dir.glob("train-*.tfrecord"), *out_dir.glob(".train-*.tfrecord.json"), manifest_path]:
            path.unlink(missing_ok=True)
    return reusable


def _copy_pair_sets(src_dir: Path, out_dir: Path, written: set) -> list[str]:
    """Hard-link (or copy) the .bin pair sets next to the shards; new ones are added to `written`."""
    names = []
    for src in sorted(src_dir.glob("*.bin")):
        dst = out_dir / src.name
        names.append(src.name)
        if dst.exists() and os.path.samefile(src, dst):
            continue
        if not dst.exists():
            written.add(dst)
        tmp = out_dir / f".{src.name}.link-{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or no hard links: copy
            with open(src, "rb") as f, atomic_file(dst, "wb") as out:
                shutil.copyfileobj(f, out, 4 << 20)
            continue
        try:
            replace_path(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    return names


def run_conversion(plan, out_dir, *, num_shards=None, workers=None, resume=False, verify=False,
                   skip_corrupt=False, seed=0, progress=True) -> dict:
    """Shared by .rec and folder conversion: check, plan, write the missing shards, then the manifest.

    `plan()` reads and validates the source and returns (source, rows, info, src_dir); it runs only
    after the arguments and OUT have been checked, and OUT is created only after it.

    When a run fails, OUT is left as it was before the run:
    * an error (a corrupt image under --verify, more shards than images, an unwritable or full
      disk): a folder the run created is removed; in a folder that was already there, the files this
      run wrote (shards, their sidecars, the state file, pair-set copies) are removed, so after
      fixing the cause the same command simply runs again.  Exception: a `resume=True` run into a
      folder that holds a conversion's state keeps it and the finished shards, to be resumed again.
    * an interruption (Ctrl-C, SIGTERM, a kill): the finished shards and the state file stay (only
      unfinished files are removed), and `resume=True` finishes the conversion.
    Starting over (no resume) in a folder holding an earlier conversion of the same source removes
    that conversion's shards and manifest first.
    """
    check_arguments(num_shards, workers, seed)
    out = _Output(out_dir, resume)
    out.check()
    try:
        source, rows, info, src_dir = plan()
        return _convert(out, source, rows, info, src_dir, num_shards=num_shards, workers=workers,
                        resume=resume, verify=verify, skip_corrupt=skip_corrupt, seed=seed, progress=progress)
    except BaseException as exc:
        out.undo(interrupted=not isinstance(exc, Exception))
        raise


def _convert(out: _Output, source, rows, info, src_dir, *, num_shards, workers, resume, verify, skip_corrupt,
             seed, progress) -> dict:
    n = len(rows["labels"])
    num_shards = int(num_shards or default_num_shards(info["total_bytes"], n))
    if num_shards > n:
        raise ConfigError(f"--shards {num_shards}: more shards than images ({n}); use at most {n}")
    out_dir = out.create()
    verify = bool(verify or skip_corrupt)
    settings = {"format_version": tfrecord.FORMAT_VERSION, "num_shards": num_shards, "seed": int(seed)}
    reusable = _prepare_out(out_dir, info["fingerprint"], settings, resume, verify)
    if reusable is None:
        return tfrecord.read_manifest(out_dir)
    out.written.add(out_dir / STATE_NAME)
    _write_json(out_dir / STATE_NAME, {"fingerprint": info["fingerprint"], "source_dir": info["source_dir"],
                                      **settings})
    perm = np.random.default_rng(int(seed)).permutation(n)
    parts = np.array_split(perm, num_shards)
    tasks, done = [], {}
    for s, part in enumerate(parts):
        name = tfrecord.shard_name(s, num_shards)
        if name in reusable:
            done[name] = reusable[name]
            continue
        shard_rows = {k: v[part] for k, v in rows.items()}
        tasks.append((source, shard_rows, str(out_dir / name), verify, skip_corrupt))
        out.written.update((out_dir / name, _sidecar(out_dir / name)))
    workers = int(workers or min(os.cpu_count() or 1, max(1, info["total_bytes"] // (16 << 20))))
    workers = max(1, min(workers, len(tasks)))
    todo = sum(len(t[1]["labels"]) for t in tasks)
    started = time.perf_counter()
    bar = _progress_bar(todo, progress, f"converting {info['source_dir']}")
    try:
        if workers == 1:
            counter = _LocalCounter(bar)
            _init_worker(counter)
            try:
                for task in tasks:
                    result = _write_shard(task)
                    done[result["file"]] = result
            finally:
                _init_worker(None)
        else:
            ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold TF threads
            counter = ctx.Value("q", 0)
            with ctx.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
                pending = pool.map_async(_write_shard, tasks, chunksize=1)
                seen = 0
                while not pending.ready():
                    pending.wait(0.2)
                    seen = _advance(bar, counter.value, seen)
                _advance(bar, counter.value, seen)
                for result in pending.get():
                    done[result["file"]] = result
    finally:
        if bar is not None:
            bar.close()
        _remove_debris(out_dir)
    shards = [done[tfrecord.shard_name(s, num_shards)] for s in range(num_shards)]
    skipped = sorted((x for sh in shards for x in sh["skipped"]), key=lambda x: str(x["key"]))
    _copy_pair_sets(src_dir, out_dir, out.written)
    pair_sets = list(find_bins(out_dir))
    labels = rows["labels"]
    counts = np.bincount(labels, minlength=info["num_classes"])
    manifest = {
        "format_version": tfrecord.FORMAT_VERSION,
        "num_images": int(sum(sh["records"] for sh in shards)),
        "num_classes": int(info["num_classes"]),
        "num_classes_source": info["num_classes_source"],
        # smallest and largest class index among the source's images (skipped ones included), so a
        # trainer can check them against its class count before training
        "label_range": [int(labels.min()), int(labels.max())],
        "image_size": list(info["image_size"]),
        "schema": {tfrecord.IMAGE_KEY: "bytes: the source JPEG, never re-encoded", tfrecord.LABEL_KEY: "int64"},
        "shards": [{"file": sh["file"], "records": sh["records"], "bytes": sh["bytes"], "sha256": sh["sha256"]}
                   for sh in shards],
        "sources": info["sources"],
        "source_dir": info["source_dir"],
        "source_kind": source.kind,
        "fingerprint": info["fingerprint"],
        "seed": int(seed),
        "num_shards": num_shards,
        "verified": all(sh.get("verified") for sh in shards),
        "skipped": skipped,
        "images_per_class": {"min": int(counts.min()), "max": int(counts.max()), "mean": float(counts.mean()),
                             "empty_classes": int((counts == 0).sum())},
        "pair_sets": pair_sets,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    for key in ("layout", "classes"):
        if key in info:
            manifest[key] = info[key]
    _write_json(out_dir / tfrecord.MANIFEST_NAME, manifest)
    for path in [out_dir / STATE_NAME, *out_dir.glob(".train-*.tfrecord.json")]:
        path.unlink(missing_ok=True)
    return manifest


class _LocalCounter:
    """In-process stand-in for the shared counter: ticks go straight to the progress bar."""

    def __init__(self, bar):
        self._bar = bar
        self._value = 0

    def get_lock(self):
        return _NullLock()

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, new):
        if self._bar is not None:
            self._bar.update(new - self._value)
        self._value = new


class _NullLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _advance(bar, value, seen):
    if bar is not None and value > seen:
        bar.update(value - seen)
    return max(seen, value)


def _progress_bar(total, enabled, desc):
    if not enabled or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", unit_scale=True, desc=desc, mininterval=0.5)
