"""CRC-32C for TFRecord framing, from the fastest implementation available.

A TFRecord stores a masked CRC-32C of each record's length and data.  Computing it in Python
would cost more than everything else in conversion, so: the `google-crc32c` or `crc32c` package
when installed; otherwise the hardware-accelerated function inside TensorFlow's own shared library
(abseil's ExtendCrc32cInternal, loaded with ctypes and checked against known vectors before use);
otherwise None, and the writer falls back to TensorFlow's TFRecordWriter.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
from pathlib import Path

_CHECK = ((b"123456789", 0xE3069283), (b"", 0), (bytes(32), 0x8A9136AA))


def _crc_python_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


def crc32c_python(data, crc: int = 0) -> int:
    """Reference CRC-32C (slow, for tests and for checking the fast backends)."""
    table = _crc_python_table()
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class _PackageCrc:
    def __init__(self, fn, name):
        self._fn, self.name = fn, name

    def crc(self, buf, start, end):
        return self._fn(memoryview(buf)[start:end])


_ABSL_SYMBOL_HINT = "crc_internal20ExtendCrc32cInternal"


class _AbslCrc:
    """abseil's ExtendCrc32cInternal(crc32c_t, std::string_view) from libtensorflow_framework.

    x86-64/aarch64 pass the string_view {size, data} in two registers, so the C signature is
    (uint32 crc, size_t size, const void* data) -> uint32.
    """

    name = "tensorflow-abseil"

    def __init__(self, fn):
        self._fn = fn
        self._buf = None
        self._addr = 0

    def crc(self, buf, start, end):
        if buf is not self._buf:  # keeping a reference makes the cached address safe
            self._buf = buf
            self._addr = ctypes.addressof(ctypes.c_char.from_buffer(buf)) if len(buf) else 0
        return self._fn(0, end - start, self._addr + start)


@contextlib.contextmanager
def _quiet_stderr():
    """TensorFlow's shared library logs CUDA probing lines while it loads; keep workers quiet."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _find_symbol(lib_path, hint: bytes):
    """The full (mangled) symbol name containing `hint`; it embeds abseil's version, so search."""
    tail = b""
    with open(lib_path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            data = tail + block
            at = data.find(hint)
            if at >= 0:
                start = data.rfind(b"\0", 0, at) + 1
                data += f.read(512)  # the name may run past this block
                stop = data.find(b"\0", at)
                return data[start:stop].decode("ascii", "replace")
            tail = data[-512:]
    return None


def _load_absl_crc():
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        lib_path = Path(folder) / "libtensorflow_framework.so.2"
        if not lib_path.is_file():
            continue
        symbol = _find_symbol(lib_path, _ABSL_SYMBOL_HINT.encode())
        if symbol is None:
            return None
        with _quiet_stderr():
            lib = ctypes.CDLL(str(lib_path))
        fn = getattr(lib, symbol)
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_size_t, ctypes.c_void_p]
        return _AbslCrc(fn)
    return None


def _check(backend) -> bool:
    for data, want in _CHECK:
        buf = bytearray(data) + bytearray(8)  # never zero-length
        if backend.crc(buf, 0, len(data)) != want:
            return False
    return True


def find_crc32c(preferred: str | None = None):
    """The fastest CRC-32C backend that passes known vectors, or None (use TensorFlow's writer).

    `preferred` (or $FRTF_CRC32C): "package", "absl", or "tf" to force the fallback.
    """
    preferred = preferred or os.environ.get("FRTF_CRC32C") or "auto"
    candidates = []
    if preferred in ("auto", "package"):
        try:
            import google_crc32c

            candidates.append(lambda: _PackageCrc(google_crc32c.value, "google-crc32c"))
        except ImportError:
            pass
        try:
            import crc32c as _crc32c_pkg

            candidates.append(lambda: _PackageCrc(_crc32c_pkg.crc32c, "crc32c"))
        except ImportError:
            pass
    if preferred in ("auto", "absl"):
        candidates.append(_load_absl_crc)
    for make in candidates:
        try:
            backend = make()
        except Exception:  # noqa: BLE001 - an unusable backend is just skipped
            backend = None
        if backend is not None and _check(backend):
            return backend
    return None


def masked_crc(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
