"""What a training run reports while it runs: TensorBoard scalars, RUN/history.jsonl and the progress bar.

One owner for the three, so a logged step writes the same values to each and the loop only says when.
Only the chief writes files (RUN/logs, history.jsonl) and shows the bar: the other workers hold
identical copies and would write the same lines again.  The scalars are written with TensorFlow core
only; the `tensorboard` package is needed to view them, not to train.
"""

from __future__ import annotations

import time
from pathlib import Path

import tensorflow as tf

from face_recognition_tf.run_folder import RunFolder
from face_recognition_tf.training import checkpoints as ck


class RunLog:
    """Per-update progress, per-logged-step records and per-validation scores of one `Trainer.train()`.

    Train records go out on every `every_steps`-th update, on the first update of this run and on the
    last (`stop_step`); `images_per_sec` is measured over the updates since the previous record.
    """

    def __init__(self, run_dir: Path, *, is_chief: bool, progress: bool, every_steps: int, global_batch: int,
                 first_step: int, stop_step: int):
        self.run_dir = run_dir
        self.is_chief = is_chief
        self.every_steps = int(every_steps)
        self.global_batch = global_batch
        self.first_step = first_step
        self.stop_step = stop_step
        self.writer = tf.summary.create_file_writer(str(RunFolder(run_dir).logs)) if is_chief else tf.summary.create_noop_writer()
        self.bar = None
        if progress and is_chief:
            from tqdm import tqdm

            self.bar = tqdm(total=stop_step, initial=first_step, unit="step", dynamic_ncols=True, desc=run_dir.name)
        self._window_start, self._window_steps = time.perf_counter(), 0

    def update(self, step: int, epoch: int, result, step_fn) -> None:
        """After every update: advance the bar and, on a logged step, write the train record."""
        self._window_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.every_steps == 0 or step == self.stop_step or step == self.first_step + 1:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            rate = self._window_steps * self.global_batch / elapsed
            self._train_record(step, epoch, result, step_fn.learning_rate(), float(step_fn.reg_coef.numpy()), rate)
            self._window_start, self._window_steps = time.perf_counter(), 0

    def _train_record(self, step: int, epoch: int, result, lr: float, coef: float, rate: float) -> None:
        record = {"event": "train", "step": step, "epoch": epoch, "loss": result.loss,
                  "inference_loss": result.inference_loss, "reg_loss": result.reg_loss, "reg_coef": coef,
                  "lr": lr, "accuracy": result.accuracy, "grad_norm": result.grad_norm, "images_per_sec": rate}
        with self.writer.as_default(step=step):
            _scalar("loss/total", result.loss)
            _scalar("loss/inference", result.inference_loss)
            _scalar("loss/regularization", result.reg_loss)
            _scalar("train/reg_coef", coef)
            _scalar("train/accuracy", result.accuracy)
            _scalar("train/learning_rate", lr)
            _scalar("train/grad_norm", result.grad_norm)
            _scalar("train/images_per_sec", rate)
        self.event(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{result.accuracy:.3f}", lr=f"{lr:.2e}",
                                 img_s=f"{rate:.0f}", refresh=False)

    def validation(self, step: int, scores: dict) -> dict:
        """Scalars `val/NAME`, a history record and a printed line; returns the scores with their step."""
        with self.writer.as_default(step=step):
            for name, value in scores.items():
                _scalar(f"val/{name}", value)
        scores = dict(scores, step=step)
        self.event({"event": "validation", **scores})
        tqdm_write("step {}: validation {}".format(
            step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "step")))
        return scores

    def event(self, record: dict) -> None:
        """One line of RUN/history.jsonl (chief only)."""
        if self.is_chief:
            ck.append_history(self.run_dir, record)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.flush()


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar written with TensorFlow core only.

    `tf.summary.scalar` lives in the `tensorboard` package, which is only needed to *view* logs; the
    event written here (float tensor + "scalars" plugin metadata) is what it would write.
    """
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=metadata.SerializeToString())


def tqdm_write(message: str) -> None:
    """Print a line without breaking the progress bar."""
    from tqdm import tqdm

    tqdm.write(message)
