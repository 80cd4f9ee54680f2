"""One worker process of tests/test_partial_fc_multi_worker.py (MultiWorkerMirroredStrategy on 127.0.0.1).

    python tests/partial_fc_worker.py HOSTS TASK OUT DATA RUN

First the sharded head's update for each margin (partial_fc_cases.py) on this worker's replica, written
to OUT/equivalence-TASK.npz; then partial-FC training of a tiny backbone into RUN, until the test kills it.
The backbone is registered here (not a config choice) so the run costs seconds, not a ResNet's minutes.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OVERRIDES = ["model.embedding_size=8", "train.batch_size=4", "head.s=16", "head.m=0.2", "train.optimizer=sgd",
             "train.lr=0.05", "train.lr_reference_batch=null", "train.max_steps=400", "checkpoint.every_steps=2",
             "checkpoint.keep=3", "log.every_steps=1", "validation.every_steps=1000", "validation.sets=[lfw]",
             "validation.max_pairs=0", "validation.folds=2", "head.partial_fc.enabled=true", "head.partial_fc.sample_rate=0.5"]


def tiny_config(*extra):
    from face_recognition_tf.config import load_config

    import partial_fc_cases as cases

    cases.register_tiny()
    cfg = load_config("quickstart", OVERRIDES + list(extra))
    cfg.model.backbone = cases.TINY
    return cfg


def main(hosts, task, out, data, run):
    from face_recognition_tf.training.strategy import make_strategy

    info = make_strategy("multi_worker", worker_hosts=hosts.split(","), task_index=int(task))
    import partial_fc_cases as cases

    x, y, w = cases.case(seed=1)
    got = cases.sharded_updates(list(cases.MARGINS), "sgd", x, y, w, info.strategy, info.num_replicas,
                                first_shard=info.worker_index)
    results = {f"{name}/{key}": value for name, part in got.items() for key, value in part.items()}
    tmp = Path(out) / f".equivalence-{task}.npz"
    np.savez(tmp, **results)
    tmp.replace(Path(out) / f"equivalence-{task}.npz")

    from face_recognition_tf.training.trainer import Trainer

    Trainer(tiny_config(), info, data_dir=data, run_dir=run, progress=False).prepare().train()


if __name__ == "__main__":
    main(*sys.argv[1:])
