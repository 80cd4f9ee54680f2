"""Learning-rate schedules counted in optimizer updates.

Keras ships the decays themselves (piecewise constant, polynomial, cosine with warm restarts); what it
lacks is a linear warm-up in front of them, which large-batch margin training needs (insightface warms
up before its decay).  `LinearWarmup` wraps any schedule, is serialisable, and hands the wrapped
schedule the step counted from the end of the warm-up when `offset=True` (polynomial and cosine decay
their whole length after it), or the absolute step (piecewise milestones are fractions of the run).

Because the optimizer evaluates the schedule at its own `iterations` counter, which is saved in the
checkpoint, a resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from face_recognition_tf.errors import ConfigError


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class ConstantLR(keras.optimizers.schedules.LearningRateSchedule):
    """A constant rate that still behaves like a schedule (logged and wrapped the same way)."""

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        return tf.constant(self.learning_rate, tf.float32)

    def get_config(self):
        return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="face_recognition_tf")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Rise linearly from `start_lr` to `peak_lr` over `warmup_steps`, then follow `after`."""

    def __init__(self, after, warmup_steps: int, peak_lr: float, start_lr: float = 0.0, offset: bool = True):
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.peak_lr = float(peak_lr)
        self.start_lr = float(start_lr)
        self.offset = bool(offset)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(self.warmup_steps, tf.float32)
        # (step + 1) / warm: the first update already moves off zero, the last warm-up update hits the peak
        rising = self.start_lr + (self.peak_lr - self.start_lr) * tf.minimum((step + 1.0) / tf.maximum(warm, 1.0), 1.0)
        later = tf.cast(self.after(step - warm if self.offset else step), tf.float32)
        return tf.where(step < warm, rising, later)

    def get_config(self):
        return {
            "after": keras.optimizers.schedules.serialize(self.after),
            "warmup_steps": self.warmup_steps,
            "peak_lr": self.peak_lr,
            "start_lr": self.start_lr,
            "offset": self.offset,
        }


def piecewise_boundaries(milestones, total_steps: int) -> list[int]:
    """Milestone fractions -> strictly increasing update counts inside the run."""
    bounds = []
    for fraction in milestones:
        step = max(1, int(round(float(fraction) * total_steps)))
        if bounds and step <= bounds[-1]:
            step = bounds[-1] + 1
        bounds.append(step)
    return bounds


def build_schedule(sched, base_lr: float, total_steps: int):
    """A `LearningRateSchedule` from the `train.schedule` config section.

    `base_lr` is the peak rate after linear batch scaling; `total_steps` the run's optimizer updates.
    """
    base_lr = float(base_lr)
    total_steps = int(total_steps)
    warmup = int(sched.warmup_steps)
    decay_steps = max(1, total_steps - warmup)
    name = sched.name
    offset = True
    if name == "constant":
        main = ConstantLR(base_lr)
    elif name == "piecewise":
        # published recipes state their decay points in updates: after update s the rate drops (MXNet's
        # train.py multiplies it once update s is done), so update s + 1, optimizer step s, is the first at
        # the lower rate; Keras' boundary b keeps the old value up to step b, hence b = s - 1
        steps = list(getattr(sched, "milestone_steps", None) or [])
        bounds = [int(s) - 1 for s in steps] if steps else piecewise_boundaries(sched.milestones, total_steps)
        values = [base_lr * float(sched.factor) ** i for i in range(len(bounds) + 1)]
        main = ConstantLR(base_lr) if not bounds else keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
        offset = False
    elif name == "polynomial":
        main = keras.optimizers.schedules.PolynomialDecay(
            base_lr, decay_steps, end_learning_rate=base_lr * float(sched.end_factor), power=float(sched.power)
        )
    elif name == "cosine_restarts":
        main = keras.optimizers.schedules.CosineDecayRestarts(
            base_lr,
            first_decay_steps=max(1, int(round(float(sched.first_period) * decay_steps))),
            t_mul=float(sched.t_mul),
            m_mul=float(sched.m_mul),
            alpha=float(sched.alpha),
        )
    else:
        raise ConfigError(f"train.schedule.name: unknown schedule {name!r}")
    if warmup <= 0:
        return main
    return LinearWarmup(main, warmup, base_lr, start_lr=base_lr * float(sched.warmup_start_factor), offset=offset)
