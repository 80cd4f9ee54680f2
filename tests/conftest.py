"""Test session set-up shared by every test file.

`make test` runs the suite in pytest-xdist worker processes: TensorFlow and oneDNN run native code
that can crash the process (a SIGSEGV in a kernel), and a crash must fail the one test that caused
it, by name, while the rest of the suite goes on in a fresh worker.

TensorFlow is imported once for the whole session, and the CPU is split into two logical devices
*before* anything initialises the runtime, so multi-replica strategies (mirrored, central storage)
can be exercised without a GPU.  Single-device code keeps running on /cpu:0 as usual.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    if os.environ.get("FRTF_REQUIRE_TORCH"):
        # CI: the tests that build insightface reference models in PyTorch must run, not skip
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise pytest.UsageError("FRTF_REQUIRE_TORCH is set but torch is not installed (make test installs it)")
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the pytest-xdist controller only hands out tests; its workers run them (and TensorFlow)
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    if cpus and len(tf.config.get_logical_device_configuration(cpus[0]) or []) < 2:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )

    _give_each_mirrored_strategy_its_own_collective_keys()


def _give_each_mirrored_strategy_its_own_collective_keys():
    """Every MirroredStrategy numbers its collectives from the same start, so a second one in the same
    process reuses the first one's keys and TF aborts with "Shape mismatch in the collective instance".
    TensorFlow's own tests move `_collective_key_base` on by 100000 per strategy; we do the same for
    every strategy a test builds, directly or through make_strategy."""
    from tensorflow.python.distribute import mirrored_strategy

    strategy_class = mirrored_strategy.MirroredStrategy
    original_init = strategy_class.__init__

    def init(self, *args, **kwargs):
        strategy_class._collective_key_base += 100000
        original_init(self, *args, **kwargs)

    strategy_class.__init__ = init


import contextlib
import subprocess

import pytest


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written into: a read-only tmpfs mount when running as root (root ignores
    permission bits, and CI runs as root), else a folder with its write bits removed."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", str(folder)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny converted sample (8 identities x 8 images, 20 pairs per set) training tests run on."""
    from tiny import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))
