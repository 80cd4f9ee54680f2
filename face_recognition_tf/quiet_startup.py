"""Keep TensorFlow's start-up chatter off a command's output.

Importing TensorFlow 2.21 prints about seven lines on stderr from its C++ runtime before any
logging setting applies (`TF_CPP_MIN_LOG_LEVEL=3` does not remove them: they are absl messages
written "before absl::InitializeLog() is called"), and the first device look-up adds
"failed call to cuInit ... CUDA error" on every machine without a GPU.  A person running `frtf
verify a.jpg b.jpg` should read the verdict, not that.

So the `frtf` command imports TensorFlow and lists the devices once, up front, with file
descriptor 2 pointed at a temporary file, then puts stderr back and replays whatever was not
TensorFlow's start-up chatter (a genuine error printed while importing stays visible).
`frtf --verbose ...` skips this.  Importing the library from Python changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# C++ log lines: "I0000 00:00:1796240465.717891    4796 port.cc:153] ...", the absl banner, and the
# continuation line of the CPU-feature notice
_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\]"
    r"|E\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] failed call to cuInit"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow)"
)


def is_startup_chatter(line: str) -> bool:
    return bool(_CHATTER.match(line))


@contextlib.contextmanager
def stderr_filtered():
    """Point fd 2 at a temporary file for the block; replay the lines that are not chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not is_startup_chatter(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow_quietly():
    """Import TensorFlow (and Keras) and discover devices without the start-up lines; returns `tf`.

    Listing physical devices does not initialise the runtime, so strategies and logical device
    splits configured afterwards still work.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with stderr_filtered():
        import tensorflow as tf

        import keras  # noqa: F401  (its import sets up backends; keep any notice it prints quiet too)

        tf.config.list_physical_devices()
    return tf
