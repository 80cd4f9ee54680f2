"""Broken or mismatched models, and unwritable evaluation outputs, end `frtf evaluate` with one line.

A checkpoint of another architecture used to print its clean error followed by hundreds of TensorFlow
"Value in checkpoint could not be found" warnings (logged when the failed restore was garbage
collected); a truncated `.keras` file was reported as "File not found".
"""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf import model_io
from face_recognition_tf.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
_TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
SPEC = {"name": "r18", "embedding_size": 16, "width_multiplier": 0.25}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import tensorflow as tf

    from face_recognition_tf.data import save_bin
    from face_recognition_tf.models import build_backbone

    root = tmp_path_factory.mktemp("model_io_errors")
    model = build_backbone("r18", embedding_size=16, width_multiplier=0.25)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    tf.train.CheckpointManager(tf.train.Checkpoint(backbone=model), run / "checkpoints", max_to_keep=1).save(5)
    # the run now claims a wider network: every variable differs from the first convolution on
    (run / "backbone.json").write_text(json.dumps({**SPEC, "width_multiplier": 0.5}))
    model.save(root / "m.keras")
    data = (root / "m.keras").read_bytes()
    (root / "truncated.keras").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    jpegs = [cv2.imencode(".jpg", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))[1].tobytes() for _ in range(8)]
    (root / "data").mkdir()
    save_bin(root / "data" / "lfw.bin", jpegs, [True, False, True, False])
    return root


def _evaluate(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", "evaluate", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=180, cwd=REPO)


def _one_error_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not _TF_LOG_LINE.match(line)]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "could not be found" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("frtf evaluate: error:"), lines[:5]
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def test_checkpoint_of_another_architecture_is_one_line(workspace):
    proc = _evaluate(workspace / "run", "--data", workspace / "data", "--out", workspace / "out", "--quiet")
    line = _one_error_line(proc, "ckpt-5", "backbone.json")
    assert "does not fit" in line
    assert not (workspace / "out" / "results.json").exists()


def test_checkpoint_mismatch_leaves_no_restore_warnings_in_process(workspace):
    import gc
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    keep = Keep()
    logger = logging.getLogger("tensorflow")  # TensorFlow's own logger, which does not propagate
    logger.addHandler(keep)
    try:
        with pytest.raises(CheckpointError, match="ckpt-5: checkpoint does not fit the architecture"):
            model_io.load_embedding_model(workspace / "run")
        gc.collect()
    finally:
        logger.removeHandler(keep)
    assert not [m for m in keep.messages if "could not be found" in m]


def test_truncated_keras_file_is_named_as_not_a_keras_archive(workspace):
    line = _one_error_line(_evaluate(workspace / "truncated.keras", "--data", workspace / "data", "--quiet"),
                           "truncated.keras", "not a valid .keras archive")
    assert "File not found" not in line
    with pytest.raises(CheckpointError, match="truncated.keras: not a valid .keras archive"):
        model_io.load_embedding_model(workspace / "truncated.keras")


def test_unwritable_out_fails_before_any_model_is_scored(workspace, readonly_dir, capsys):
    from face_recognition_tf.cli import main

    # the model is the broken one: the output place is what is reported, so nothing was loaded first
    assert main(["evaluate", str(workspace / "truncated.keras"), "--data", str(workspace / "data"),
                 "--out", str(readonly_dir / "eval"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("frtf evaluate: error:") and str(readonly_dir) in err[0], err
    assert list(readonly_dir.iterdir()) == []


def test_results_get_the_umask_mode(workspace, tmp_path, capsys):
    from face_recognition_tf.cli import main

    old = os.umask(0o022)
    try:
        assert main(["evaluate", str(workspace / "m.keras"), "--data", str(workspace / "data"),
                     "--out", str(tmp_path / "eval"), "--folds", "2", "--quiet"]) == 0
    finally:
        os.umask(old)
    written = sorted((tmp_path / "eval").iterdir())
    assert [p.name for p in written] == ["results.csv", "results.json", "results.md", "roc_lfw.png"]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o644 for p in written}
