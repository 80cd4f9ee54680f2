"""Commands print their own output only: TensorFlow's start-up lines (absl banner, oneDNN and CUDA notices,
the cuInit error on machines without a GPU) are filtered unless `frtf --verbose`; validation shows progress."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from face_recognition_tf.quiet_startup import is_startup_chatter, stderr_filtered

REPO = Path(__file__).resolve().parents[1]
CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796240465.717891    4796 port.cc:153] oneDNN custom operations are on. You may see slightly",
    "I0000 00:00:1796240465.718209    4796 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will",
    "E0000 00:00:1796240470.294800    4796 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
]


def test_chatter_is_recognised_and_real_errors_are_not():
    assert all(is_startup_chatter(line) for line in CHATTER)
    for line in ("E0000 00:00:1.0  1 gpu_device.cc:9] GPU out of memory", "frtf train: error: x", "Traceback"):
        assert not is_startup_chatter(line)


def test_filtered_block_replays_what_is_not_chatter(capfd):
    with stderr_filtered():
        os.write(2, ("\n".join(CHATTER) + "\nreal problem\n").encode())
    err = capfd.readouterr().err
    assert err.strip() == "real problem"


def _frtf(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_command_prints_only_its_own_error_line(tmp_path):
    result = _frtf("evaluate", str(tmp_path / "no_such_run"), "--data", str(tmp_path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("frtf evaluate: error: "), result.stderr


def test_verbose_keeps_tensorflow_messages_and_the_error(tmp_path):
    result = _frtf("--verbose", "evaluate", str(tmp_path / "no_such_run"), "--data", str(tmp_path))
    assert result.returncode == 2
    assert "frtf evaluate: error: " in result.stderr


def test_validation_reports_progress_per_pair_set(capsys):
    import keras

    from face_recognition_tf.training.validation import Validator

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    issame = np.array([True, False] * 10)
    inputs = keras.Input((112, 112, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs)))
    scores = Validator({"lfw": (images, issame)}, batch_size=8)(model, progress=True)
    assert set(scores) == {"lfw", "mean"}
    err = capsys.readouterr().err
    assert "lfw" in err and "img" in err
