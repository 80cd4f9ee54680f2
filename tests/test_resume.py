"""Kill a training process with SIGKILL mid-run, resume it, and check it continues where it was.

Subprocesses on purpose: only a real SIGKILL shows that a process dying at any instant (mid-step or
mid-save) leaves readable checkpoints, and that the resumed run continues with the same step count,
learning-rate schedule and reg-loss coefficient.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.config import load_config
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training.schedules import build_schedule

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=8", "head.s=16",
             "head.m=0.2", "train.optimizer=sgd", "train.lr=0.05", "train.lr_reference_batch=null",
             "train.regularization=l2", "train.weight_decay=0.5", "train.max_steps=400",
             "train.schedule.name=polynomial", "train.schedule.warmup_steps=3", "train.schedule.end_factor=0.1",
             "checkpoint.every_steps=2", "checkpoint.keep=3", "log.every_steps=1", "validation.every_steps=1000"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from face_recognition_tf.data.convert import convert_recordio
    from face_recognition_tf.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("tiny")
    src = make_sample_dataset(root / "src", num_identities=8, images_per_identity=8, pairs_per_set=20)
    convert_recordio(src, root / "data", progress=False)
    return root / "data"


def _command(data, run, *extra):
    return [sys.executable, "-m", "face_recognition_tf", "train", "--config", "quickstart", "--data", str(data),
            "--out", str(run), "--no-progress", *extra, *OVERRIDES]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))


def _records(run):
    path = run / ck.HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the kill may cut the last line short
            pass
    return out


def _value(reader, name):
    return reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


def test_sigkill_then_resume_continues_step_lr_and_coefficient(data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_command(data, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            steps = [r["step"] for r in _records(run) if r.get("event") == "train"]
            if steps and steps[-1] >= 7:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_records = [r for r in _records(run) if r.get("event") == "train"]

    # every listed checkpoint is readable; the newest is where the resume must start
    listed = ck.checkpoint_paths(run)
    assert listed
    for prefix in listed:
        tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
    reader = tf.train.load_checkpoint(str(listed[0]))
    saved_step = int(_value(reader, "step"))
    saved_coef = float(_value(reader, "reg_coef"))
    assert saved_step >= 6 and saved_step % 2 == 0
    # the coefficient in the checkpoint is the one the killed run logged at that step
    logged = {r["step"]: r for r in killed_records}
    assert logged[saved_step]["reg_coef"] == pytest.approx(saved_coef)

    result = subprocess.run(_command(data, run, "--resume", "--max-steps", str(saved_step + 3)), env=_env(),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming {listed[0]}" in result.stdout

    resumed = [r for r in _records(run) if r.get("event") == "train"][len(killed_records):]
    assert [r["step"] for r in resumed] == [saved_step + 1, saved_step + 2, saved_step + 3]
    cfg = load_config(run / "config.yaml")
    schedule = build_schedule(cfg.train.schedule, cfg.train.lr, cfg.train.max_steps)
    for r in resumed:  # the lr logged after update k is the schedule at k (optimizer iterations)
        assert r["lr"] == pytest.approx(float(schedule(r["step"])), rel=1e-6)
    # the coefficient continues from the checkpoint: unchanged or decayed by 0.8 per update
    first = resumed[0]["reg_coef"]
    assert first == pytest.approx(saved_coef) or first == pytest.approx(saved_coef * 0.8)
    assert all(b["reg_coef"] <= a["reg_coef"] for a, b in zip(resumed, resumed[1:]))

    final = tf.train.load_checkpoint(str(ck.checkpoint_paths(run)[0]))
    assert int(_value(final, "step")) == saved_step + 3
    assert int(final.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == saved_step + 3
    assert np.isfinite(float(_value(final, "reg_coef")))
