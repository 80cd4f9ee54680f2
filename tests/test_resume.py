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

    # the steps the killed run logged after its checkpoint are redone, and logged once
    train_steps = [r["step"] for r in _records(run) if r.get("event") == "train"]
    assert train_steps == sorted(set(train_steps)), train_steps
    assert train_steps[-3:] == [saved_step + 1, saved_step + 2, saved_step + 3]
    resumed = [r for r in _records(run) if r.get("event") == "train"][-3:]
    for line in (run / ck.HISTORY).read_text().splitlines():  # a line the kill cut short is gone too
        json.loads(line)
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


def _train_in(cwd, data, out, max_steps):
    command = [sys.executable, "-m", "face_recognition_tf", "train", "--config", "quickstart", "--data", str(data),
               "--out", out, "--no-progress", "--max-steps", str(max_steps), *OVERRIDES]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)


def test_resume_with_relative_out_and_after_moving_the_run(data, tmp_path):
    """The default --out (output/<config>) is relative: resuming it failed with a doubled path
    (runs/x/checkpoints/runs/x/checkpoints/ckpt-5).  A run folder moved elsewhere resumes too."""
    first = _train_in(tmp_path, data, "runs/qs", 3)
    assert first.returncode == 0, first.stderr[-2000:]
    second = _train_in(tmp_path, data, "runs/qs", 5)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming runs/qs/checkpoints/ckpt-3" in second.stdout
    listed = ck.checkpoint_paths(tmp_path / "runs" / "qs")
    assert listed[0] == tmp_path / "runs" / "qs" / "checkpoints" / "ckpt-5"

    (tmp_path / "moved").mkdir()
    os.replace(tmp_path / "runs" / "qs", tmp_path / "moved" / "qs")
    third = _train_in(tmp_path / "moved", data, "qs", 6)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "resuming qs/checkpoints/ckpt-5" in third.stdout
    steps = [r["step"] for r in _records(tmp_path / "moved" / "qs") if r.get("event") == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_rewind_history_drops_redone_steps_and_cut_lines(tmp_path):
    lines = [{"event": "train", "step": s} for s in range(1, 8)] + [{"event": "validation", "step": 4, "mean": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"event": "train", "st'
    (tmp_path / ck.HISTORY).write_text(text)
    assert ck.rewind_history(tmp_path, 4) == 4  # steps 5, 6, 7 and the cut line
    kept = [json.loads(line) for line in (tmp_path / ck.HISTORY).read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 4]
    assert ck.rewind_history(tmp_path, 4) == 0
