"""Multi-worker training: two real worker processes on 127.0.0.1, one killed, both restarted.

Subprocesses on purpose: MultiWorkerMirroredStrategy must configure TensorFlow's runtime before it
starts (so it cannot run inside this already-initialised pytest process), the workers talk over gRPC,
and only a real SIGKILL shows what a dying worker does to the others and to the run folder.

Each launch costs a TensorFlow start and a trace of the distributed step per worker, so the story is
told with two launches: train, SIGKILL worker 1 once the chief has a checkpoint (the chief must then
stop on its own with a one-line error, not hang in an all-reduce), restart both (they resume from the
chief's newest checkpoint and continue its step count), and finish with identical weights on both
workers (each prints a sha256 of its copy).  Every process is killed in `finally` and every wait has
a deadline, so a hang fails the test instead of blocking CI.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

from face_recognition_tf.config import load_config
from face_recognition_tf.errors import CheckpointError
from face_recognition_tf.training import checkpoints as ck
from face_recognition_tf.training import trainer as trainer_module
from face_recognition_tf.training.strategy import StrategyInfo
from tiny import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=4", "head.s=16",
             "head.m=0.2", "train.optimizer=sgd", "train.lr=0.05", "train.lr_reference_batch=null",
             "train.max_steps=400", "checkpoint.every_steps=2", "checkpoint.keep=3", "log.every_steps=1",
             "validation.every_steps=1000", "validation.max_pairs=10", "validation.folds=2"]
DEADLINE = 300  # seconds for any one phase; far above what it needs, only there so a hang cannot block CI
DIGEST = re.compile(r"weights sha256 ([0-9a-f]{16})")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 identities x 8 images in two shard files: each worker's input pipeline reads its own file."""
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_dataset(root)
    assert len(json.loads((root / "data" / "manifest.json").read_text())["shards"]) == 2
    return root / "data"


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Two `frtf train --strategy multi_worker` processes; output to files (a full pipe would block them)."""

    def __init__(self, data, run, logs: Path, *extra):
        logs.mkdir(parents=True)
        (logs / "tmp").mkdir()
        hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        # CPU only (two processes must not fight over one GPU); TMPDIR shows where non-chief copies go
        env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", TMPDIR=str(logs / "tmp"))
        self.logs, self.procs = logs, []
        for i in range(2):
            cmd = [sys.executable, "-m", "face_recognition_tf", "train", "--config", "quickstart", "--data", str(data),
                   "--out", str(run), "--no-progress", "--strategy", "multi_worker", "--worker-hosts", hosts,
                   "--task-index", str(i), *extra, *OVERRIDES]
            with open(logs / f"out{i}", "w") as out, open(logs / f"err{i}", "w") as err:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err))

    def output(self, i):
        return (self.logs / f"out{i}").read_text(), (self.logs / f"err{i}").read_text()

    def report(self):
        return "\n".join(f"worker {i} rc={p.poll()}\n{''.join(t[-1500:] for t in self.output(i))}"
                         for i, p in enumerate(self.procs))

    def wait(self, i, timeout):
        try:
            return self.procs[i].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {i} still running after {timeout} s (hang?)\n{self.report()}")

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


def _train_steps(run):
    path = run / ck.HISTORY
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("event") == "train":
            steps.append(record["step"])
    return steps


def _step_of(reader):
    return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_kill_one_worker_restart_both_resume_and_end_identical(data, tmp_path):
    run = tmp_path / "run"

    # 1. two workers train; once the chief has a checkpoint and has gone past it, SIGKILL worker 1
    first = Cluster(data, run, tmp_path / "launch1")
    try:
        deadline = time.time() + DEADLINE
        while time.time() < deadline:
            assert all(p.poll() is None for p in first.procs), f"a worker stopped early\n{first.report()}"
            steps = _train_steps(run)
            if ck.checkpoint_paths(run) and steps and steps[-1] >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no progress within {DEADLINE} s\n{first.report()}")
        first.procs[1].send_signal(signal.SIGKILL)
        # the chief notices (TF's peer health check) and stops with one clear line instead of hanging
        assert first.wait(0, DEADLINE) == 2, first.report()
        chief_err = first.output(0)[1]
        assert "frtf train: error: step" in chief_err and "another worker stopped" in chief_err, chief_err[-2000:]
        assert "Traceback" not in chief_err
    finally:
        first.kill()
    steps_before = _train_steps(run)
    listed = ck.checkpoint_paths(run)
    assert listed, "the chief wrote no checkpoint"
    saved = _step_of(tf.train.load_checkpoint(str(listed[0])))
    assert saved >= 2 and saved % 2 == 0 and listed[0].name == f"ckpt-{saved}"
    # the chief alone wrote the run folder; worker 1 checkpointed into its own temporary folder
    assert {"config.yaml", "backbone.json", "head.json", "history.jsonl", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert not (run / "embedding.keras").exists()  # the killed run never finished

    # 2. restart both: they resume from the chief's newest checkpoint and continue its step count
    stop = saved + 3
    second = Cluster(data, run, tmp_path / "launch2", "--max-steps", str(stop))
    try:
        codes = [second.wait(i, DEADLINE) for i in range(2)]
        assert codes == [0, 0], second.report()
    finally:
        second.kill()
    (chief_out, _), (worker_out, _) = second.output(0), second.output(1)
    assert f"resuming {listed[0]}" in chief_out
    assert f"stopped at step {stop} (3 this run)" in worker_out
    # steps the killed run logged after its checkpoint are redone and logged once (history is rewound)
    steps_after = _train_steps(run)
    assert steps_after == sorted(set(steps_after)), steps_after
    assert steps_after[-3:] == [saved + 1, saved + 2, saved + 3]
    assert steps_after[:-3] == [s for s in steps_before if s <= saved]
    final = ck.checkpoint_paths(run)[0]
    assert final.name == f"ckpt-{stop}" and _step_of(tf.train.load_checkpoint(str(final))) == stop

    # 3. both workers end with identical weights (BN statistics included)
    digests = [DIGEST.findall(text) for text in (chief_out, worker_out)]
    assert all(len(d) == 1 for d in digests), (chief_out, worker_out)
    assert digests[0] == digests[1]

    # the chief wrote the final and best models and validation; worker 1 removed its temporary copies
    assert (run / "embedding.keras").is_file() and (run / "best" / "embedding.keras").is_file()
    history = [json.loads(line) for line in (run / ck.HISTORY).read_text().splitlines() if line.strip()]
    assert [r["step"] for r in history if r["event"] == "validation"] == [stop]
    assert list((tmp_path / "launch2" / "tmp").iterdir()) == []


def test_workers_that_see_different_checkpoints_refuse_to_start(data, tmp_path, monkeypatch):
    """A run folder on a disk only the chief sees: refuse on every worker before the first update."""
    cfg = load_config("quickstart", OVERRIDES)
    info = StrategyInfo(strategy=tf.distribute.get_strategy(), name="multi_worker", num_replicas=2, num_workers=2,
                        is_chief=True, worker_index=0, devices=())
    # stands in for the collective; the real one runs in every launch of the test above
    monkeypatch.setattr(trainer_module, "gather_from_workers", lambda info, value: [value, 6])
    trainer = trainer_module.Trainer(cfg, info, data_dir=data, run_dir=tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"worker 0: no checkpoint, worker 1: ckpt-6.*shares"):
        trainer.prepare()
    assert trainer.step_fn is None  # nothing was built
