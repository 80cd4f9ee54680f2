"""Atomic outputs: the one place that writes a file or folder under a temporary name and renames it.

Why one owner: every output of the package (manifests, configs, results, galleries, exports) must
be either the old version or the complete new one, never half-written, and must carry the
permissions a user expects from `umask` (``tempfile.mkstemp``/``mkdtemp`` create 0600/0700, which
hid results from colleagues and web servers).  A failure to write (read-only file system, a
folder where a file should go, no permission) is a user error: it becomes one line naming the
path, and the temporary file is removed.

`durable=True` fsyncs the data before the rename, for files that other processes rely on across
a crash (dataset manifests); the rest are renamed without an fsync, which is what a killed
process needs (the rename is atomic either way).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from face_recognition_tf.errors import OutputError


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back (no thread writes files here
    # between the two calls that would care about a transient 0o022)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode `mkdir` would give a new folder: 0o777 less the umask."""
    return 0o777 & ~_umask()


def describe_os_error(path, exc: OSError, action: str = "cannot write") -> str:
    """'PATH: cannot write (Read-only file system)': the path the user named, not a temporary one."""
    reason = exc.strerror or type(exc).__name__
    return f"{path}: {action} ({reason})"


def make_parent(path) -> Path:
    """Create the folder that will hold `path`; a user-facing error when that is impossible."""
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: cannot write ({_first_file_in(parent)} is a file, not a folder)") from None
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc)) from None
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write ({_first_file_in(parent)} is a file, not a folder)")
    return path


def ensure_dir(path) -> Path:
    """Create an output folder (and parents), refusing a file in its place, with a one-line error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; an output folder is needed here")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: cannot create folder ({_first_file_in(path)} is a file)") from None
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc, "cannot create folder")) from None
    return path


def check_writable_dir(path) -> Path:
    """Fail now, not after an hour of work, when files cannot be created in the folder `path`."""
    path = ensure_dir(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".frtf-write-test-", dir=path)
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc)) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _first_file_in(path: Path) -> Path:
    """The nearest ancestor of `path` that exists as a non-folder (what blocks mkdir)."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate if not candidate.is_dir() else path
    return path


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", *, durable: bool = False):
    """Yield a handle on a temporary file beside `path`; on success it replaces `path` atomically.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = make_parent(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; a file is needed here")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc)) from None
    with _renamed_onto(tmp, path):
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` with the same suffix, for writers that want a file name
    rather than a handle (Keras `model.save` picks the format from `.keras`); on success it replaces
    `path` atomically with the umask's mode, on any exception it is removed and `path` left as it was.
    """
    path = make_parent(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with _renamed_onto(tmp, path):
        yield tmp
        os.chmod(tmp, file_mode())


@contextlib.contextmanager
def _renamed_onto(tmp, path: Path):
    """Run the block that fills the temporary file `tmp`, then rename it onto `path`; on any
    failure `tmp` is removed (and an OSError becomes one line naming `path`)."""
    try:
        yield
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(describe_os_error(path, exc)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes, *, durable: bool = False) -> Path:
    with atomic_file(path, "wb", durable=durable) as handle:
        handle.write(data)
    return Path(path)


def write_text(path, text: str, *, durable: bool = False) -> Path:
    with atomic_file(path, "w", durable=durable) as handle:
        handle.write(text)
    return Path(path)


def write_json(path, obj, *, indent: int = 2, sort_keys: bool = True, durable: bool = False) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    return write_text(path, text, durable=durable)


def temporary_dir_beside(path) -> Path:
    """A fresh hidden folder beside `path` (same file system, so it can be renamed onto it)."""
    path = make_parent(path)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc)) from None
    os.chmod(work, dir_mode())
    return work


def replace_path(tmp, path, *, overwrite: bool = True) -> Path:
    """Move a finished file or folder `tmp` onto `path`; an old folder is removed only afterwards."""
    tmp, path = Path(tmp), Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (pass --overwrite to replace it)")
    try:
        if path.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(describe_os_error(path, exc)) from None
    return path
