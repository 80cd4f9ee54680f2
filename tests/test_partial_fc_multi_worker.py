"""Partial FC across two worker processes on 127.0.0.1: equivalence, SIGKILL, resume on another replica count.

Subprocesses on purpose, as in test_multi_worker.py: MultiWorkerMirroredStrategy must configure the
runtime before it starts, and only a real SIGKILL shows what a killed run leaves behind.  One launch
tells the story (each launch costs two TensorFlow starts): every worker first computes the sharded
head's update for ArcFace, CosFace and combined margins on its own replica and shard (held here to the
full head on one device), then trains a tiny backbone with sampled partial FC, checkpointing every two
updates, until both workers are SIGKILLed.  This process then resumes the run on one replica: the two
saved shards are re-sharded into one, and training goes on from the checkpoint's step.
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
import keras

import partial_fc_cases as cases
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training.centre_checkpoints import centres_dir, read_layout
from face_recognition_tf.training.strategy import make_strategy
from test_multi_worker import _free_ports, _train_steps

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300  # far above what a phase needs; only there so that a hang fails instead of blocking CI


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 identities x 6 images in two shard files (one per worker)."""
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("pfc")
    src = make_sample_dataset(root / "src", num_identities=12, images_per_identity=6, pairs_per_set=20)
    convert_recordio(src, root / "data", progress=False)
    return root / "data"


def _launch(data, run, out):
    hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    procs = []
    for task in range(2):
        cmd = [sys.executable, str(REPO / "tests" / "partial_fc_worker.py"), hosts, str(task), str(out), str(data), str(run)]
        with open(out / f"log{task}", "w") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _report(procs, out):
    return "\n".join(f"worker {i} rc={p.poll()}\n{(out / f'log{i}').read_text()[-2000:]}" for i, p in enumerate(procs))


def test_two_workers_equal_the_full_head_then_resume_after_sigkill_on_one_replica(data, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    procs = _launch(data, run, out)
    try:
        deadline = time.time() + DEADLINE
        while time.time() < deadline:
            assert all(p.poll() is None for p in procs), _report(procs, out)
            steps = _train_steps(run)
            if ck.checkpoint_paths(run) and steps and steps[-1] >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no progress within {DEADLINE} s\n{_report(procs, out)}")
        for p in procs:  # mid-run, at whatever instant: the test's point is what a kill leaves
            p.send_signal(signal.SIGKILL)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()

    # 1. each worker's replica and shard: the full head on one device, computed another way
    x, y, w = cases.case(seed=1)
    parts = [np.load(out / f"equivalence-{task}.npz") for task in range(2)]
    for name in cases.MARGINS:
        reference = cases.full_head_update(name, "sgd", x, y, w)
        for key, value in reference.items():
            got = np.concatenate([part[f"{name}/{key}"] for part in parts])
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")

    # 2. the killed run: the newest listed checkpoint has both workers' shards, complete
    listed = ck.checkpoint_paths(run)
    saved = int(listed[0].name.rsplit("-", 1)[-1])
    layout = read_layout(centres_dir(run / ck.CHECKPOINT_DIR, saved))
    assert layout is not None and [(m["start"], m["end"]) for m in layout] == [(0, 6), (6, 12)]
    folder = centres_dir(run / ck.CHECKPOINT_DIR, saved)
    saved_centres = np.concatenate([np.load(next(folder.glob(f"shard-0000{i}-of-00002")) / "weight.npy") for i in range(2)])
    saved_momentum = np.concatenate([np.load(next(folder.glob(f"shard-0000{i}-of-00002")) / "momentum.npy") for i in range(2)])

    # 3. resume here on one replica: the two shards become one, training continues from the checkpoint
    from face_recognition_tf.training.trainer import Trainer
    from partial_fc_worker import tiny_config

    trainer = Trainer(tiny_config(), make_strategy("default"), data_dir=data, run_dir=run, max_steps=saved + 2,
                      progress=False).prepare()
    assert trainer.resumed_from == listed[0] and trainer.start_step == saved
    (shard,) = trainer.step_fn.head.shards.values()
    np.testing.assert_array_equal(shard.weight.numpy(), saved_centres)
    np.testing.assert_array_equal(shard.slots["momentum"].numpy(), saved_momentum)
    summary = trainer.train()
    assert summary["step"] == saved + 2 and summary["steps_this_run"] == 2
    assert not np.array_equal(shard.weight.numpy(), saved_centres)
    final = read_layout(centres_dir(run / ck.CHECKPOINT_DIR, saved + 2))
    assert [(m["start"], m["end"], m["num_shards"]) for m in final] == [(0, 12, 1)]
    steps = _train_steps(run)
    assert steps == sorted(set(steps)) and steps[-2:] == [saved + 1, saved + 2]
    assert json.loads((run / "head.json").read_text())["partial_fc"] is True
    exported = keras.models.load_model(run / "embedding.keras", compile=False)  # the backbone alone, no centres
    assert exported.output_shape == (None, 8) and all(12 not in v.shape for v in exported.weights)
