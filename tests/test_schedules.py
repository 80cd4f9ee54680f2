"""Learning-rate schedules (counted in optimizer updates), scaling and the reg-coefficient rule."""

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from face_recognition_tf.config import ScheduleConfig
from face_recognition_tf.training.optim import decayed_coefficient, scaled_lr
from face_recognition_tf.training.schedules import LinearWarmup, build_schedule, piecewise_boundaries


def _sched(**kw):
    return OmegaConf.merge(OmegaConf.structured(ScheduleConfig), kw)


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_piecewise_with_warmup():
    s = build_schedule(_sched(name="piecewise", warmup_steps=10, milestones=[0.5, 0.75], factor=0.1), 0.4, 100)
    v = _values(s, [0, 4, 9, 10, 49, 50, 51, 75, 76, 99])
    np.testing.assert_allclose(v[:3], [0.04, 0.2, 0.4], rtol=1e-6)  # linear rise, peak at the last warm-up step
    np.testing.assert_allclose(v[3:], [0.4, 0.4, 0.4, 0.04, 0.04, 0.004, 0.004], rtol=1e-5)
    assert piecewise_boundaries([0.5, 0.5], 3) == [2, 3]  # kept strictly increasing


def test_polynomial_decays_to_end_factor_after_warmup():
    s = build_schedule(_sched(name="polynomial", warmup_steps=20, power=2.0, end_factor=0.1), 1.0, 120)
    v = _values(s, [19, 20, 70, 120, 500])
    np.testing.assert_allclose(v, [1.0, 1.0, 0.1 + 0.9 * 0.25, 0.1, 0.1], rtol=1e-5)


def test_cosine_with_warm_restarts():
    s = build_schedule(_sched(name="cosine_restarts", first_period=0.25, t_mul=2.0, m_mul=0.5), 1.0, 100)
    v = _values(s, [0, 12.5, 24, 25, 75])
    assert v[0] == pytest.approx(1.0) and v[1] == pytest.approx(0.5, rel=1e-4)
    assert v[2] < 0.01 and v[3] == pytest.approx(0.5, rel=1e-4)  # restart at half the height
    assert v[4] == pytest.approx(0.25, rel=1e-4)


def test_constant_and_serialisation_round_trip():
    s = build_schedule(_sched(name="constant", warmup_steps=4, warmup_start_factor=0.5), 0.2, 10)
    np.testing.assert_allclose(_values(s, [0, 3, 9]), [0.125, 0.2, 0.2], rtol=1e-6)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert isinstance(again, LinearWarmup)
    np.testing.assert_allclose(_values(again, [0, 3, 9]), _values(s, [0, 3, 9]))


def test_linear_scaling_and_coefficient_rule():
    assert scaled_lr(0.1, 1024, 512) == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, None) == pytest.approx(0.1)
    # the original rule: shrink while inference loss < coef * reg loss
    assert float(decayed_coefficient(1.0, 2.0, 3.0, 0.8)) == pytest.approx(0.8)
    assert float(decayed_coefficient(1.0, 4.0, 3.0, 0.8)) == pytest.approx(1.0)
    assert float(decayed_coefficient(0.5, 2.0, 3.0, 0.8)) == pytest.approx(0.5)


def test_piecewise_milestone_steps_are_update_counts():
    # MXNet's train.py: the rate drops once update 100 is done, so update 101 (step 100) is the first lower
    s = build_schedule(_sched(name="piecewise", milestone_steps=[100, 160], milestones=[0.1]), 0.1, 180)
    np.testing.assert_allclose(_values(s, [0, 99, 100, 159, 160, 179]), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                               rtol=1e-6)
