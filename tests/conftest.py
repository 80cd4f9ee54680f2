"""Test session set-up shared by every test file.

TensorFlow is imported once for the whole session, and the CPU is split into two logical devices
*before* anything initialises the runtime, so multi-replica strategies (mirrored, central storage)
can be exercised without a GPU.  Single-device code keeps running on /cpu:0 as usual.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    if cpus and len(tf.config.get_logical_device_configuration(cpus[0]) or []) < 2:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
