"""The packaged recipes do per update what the trainers they follow did.

The table below is written from the sources (arcface_torch's configs/*.py, train_v2.py, lr_scheduler.py,
iresnet.py, dataset.py; insightface's MXNet sample_config.py, train.py, fresnet.py and the ArcFace paper;
the 2019 project's README for its own recipes), not copied from the YAML files.  Each recipe is built for
real (schedule, optimizer, and a tiny backbone of the same config: r18 at 1/8 width on 32x32 inputs, so
the kinds of variables and layers are those of the full model) and compared through
`effective_settings`, the values a run prints and writes to RUN/effective.json.  Which variables weight
decay reaches is also checked by behaviour: a zero-gradient update (optimizer-side decay) or the gradient
of the L2 loss term (l2 mode) must move exactly those variables.
"""

import json

import keras

import numpy as np
import pytest
import tensorflow as tf

from face_recognition_tf.config import load_config
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.run_folder import EFFECTIVE as EFFECTIVE_FILE
from face_recognition_tf.training.effective import describe_settings, effective_settings
from face_recognition_tf.training.model_args import backbone_kwargs
from face_recognition_tf.training.optim import CoupledDecaySGD, build_optimizer, clip_by_global_norm
from face_recognition_tf.training.strategy import make_strategy
from face_recognition_tf.training.train_step import TrainStep

TINY = ["model.backbone=r18", "model.width_multiplier=0.125", "model.embedding_size=16", "model.input_size=32"]

# torch.optim.SGD over backbone.parameters() + the partial fc's, and MXNet's SGD built without parameter
# names, decay every trainable parameter; the 2019 project's L2 loss term only the kernels
EVERY_PARAMETER = {"backbone.kernel", "backbone.gamma", "backbone.beta", "backbone.alpha", "backbone.bias",
                   "head.kernel"}
KERNELS = {"backbone.kernel", "head.kernel"}


def polynomial(peak, total, power=1.0, warmup=0):
    """arcface_torch's PolynomialLRWarmup closed form (lr_scheduler.py:33-42), at optimizer step s."""
    def lr(s):
        if s < warmup:
            return peak * (s + 1) / warmup
        return peak * (1.0 - (s - warmup) / (total - warmup)) ** power
    return lr


def steps_down(peak, milestones, factor=0.1, warmup=0):
    """MXNet's train.py: after update m the rate is multiplied by `factor`, so step index m is the first lower."""
    def lr(s):
        if s < warmup:
            return peak * (s + 1) / warmup
        return peak * factor ** sum(s >= m for m in milestones)
    return lr


ARCFACE_TORCH = dict(
    backbone="r50", head=("arcface", 64.0, 0.5), dropout=0.0,
    gradient="straight_through",          # losses.py: the margin is applied under torch.no_grad()
    global_batch=1024,                    # config batch_size 128 x 8 GPUs (train_v2.py:136)
    reference_batch=None, peak=0.1,       # config lr 0.1, used as is
    total=101160,                         # 5179510 // 1024 x 20 epochs (train_v2.py:138)
    momentum=0.9, weight_decay=5e-4,      # train_v2.py:123; config weight_decay
    mode="coupled", decayed=EVERY_PARAMETER,
    clip=(5.0, "backbone"),               # train_v2.py:189 clip_grad_norm_(backbone.parameters(), 5)
    bn_epsilon=1e-5,                      # iresnet.py eps=1e-05
    input="(x - 127.5) / 127.5",          # dataset.py Normalize(0.5, 0.5) after ToTensor
    precision="mixed_float16", loss_scaling=True,   # config fp16 = True
    reg_loss=None,                        # no L2 term in the loss, no coefficient
)
ARCFACE_TORCH["lr"] = polynomial(0.1, ARCFACE_TORCH["total"])

MXNET = dict(
    backbone="r100", head=("arcface", 64.0, 0.5), dropout=0.4,   # symbol_utils.py 'E': BN-Dropout(0.4)-FC-BN
    gradient="exact",                     # train.py differentiates arccos and cos
    global_batch=512,                     # per_batch_size 128 x 4 GPUs
    reference_batch=None, peak=0.1,       # sample_config.py default.lr
    total=180000, milestones=(100000, 160000),   # the ArcFace paper, MS1MV2
    momentum=0.9, weight_decay=5e-4, mode="coupled", decayed=EVERY_PARAMETER,
    clip=None, bn_epsilon=2e-5, input="(x - 127.5) / 128",
    precision="float32", loss_scaling=False, reg_loss=None,
)
MXNET["lr"] = steps_down(0.1, MXNET["milestones"])

ORIGINAL = dict(                          # the 2019 project's recipes in this project's form
    backbone="r50", head=("arcface", 64.0, 0.5), dropout=0.0, gradient="exact",
    global_batch=512, reference_batch=512, peak=0.1,   # lr 0.1 per 512 images, linear scaling
    total=227000, momentum=0.9, weight_decay=5e-4, mode="l2", decayed=KERNELS,
    clip=None, bn_epsilon=2e-5, input="(x - 127.5) / 128",
    precision="float32", loss_scaling=False, reg_loss={"coefficient": 1.0, "decay": 0.8},
)
ORIGINAL["lr"] = polynomial(0.1, 227000, power=2.0, warmup=5000)

EXPECTED = {
    "arcface_torch_ms1mv3_r50": ARCFACE_TORCH,
    "arcface_torch_ms1mv3_r100": dict(ARCFACE_TORCH, backbone="r100"),
    "arcface_torch_glint360k_r50": dict(ARCFACE_TORCH, head=("cosface", 64.0, 0.4), gradient="exact", weight_decay=1e-4,
                                        total=333820, lr=polynomial(0.1, 333820)),
    "arcface_torch_wf4m_r50": dict(ARCFACE_TORCH, head=("cosface", 64.0, 0.4), gradient="exact", total=82700,
                                   lr=polynomial(0.1, 82700)),
    "insightface_mxnet_emore_r100": MXNET,
    "insightface_mxnet_emore_r50": dict(MXNET, backbone="r50"),
    "insightface_mxnet_casia_r50": dict(MXNET, backbone="r50", total=32000, milestones=(20000, 28000),
                                        lr=steps_down(0.1, (20000, 28000))),
    "ms1m_r50": ORIGINAL,
    "ms1m_r50_renorm": ORIGINAL,
    # piecewise at 20k and 28k of 32k (fractions 0.625, 0.875; Keras keeps the old rate up to the boundary
    # step), 1k warm-up, dropout 0.4
    "casia_r50": dict(ORIGINAL, dropout=0.4, total=32000, milestones=(20001, 28001),
                      lr=steps_down(0.1, (20001, 28001), warmup=1000)),
}

_STEPS = {}


def _built(name, overrides=()):
    key = (name, tuple(overrides))
    if key not in _STEPS:
        cfg = load_config(name, [*TINY, *overrides])
        step = TrainStep(cfg, make_strategy("default"), 5)
        step.finalize()
        _STEPS[key] = step
    return _STEPS[key]


def _decayed_by_behaviour(step) -> dict:
    """[moved, total] per kind of variable: what weight decay alone does to random weights."""
    rng = np.random.default_rng(0)
    variables = list(step.variables)
    for v in variables:  # zeros (BN beta, biases) would not show a multiplicative decay
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32))
    before = [v.numpy() for v in variables]
    if step.l2:
        with tf.GradientTape() as tape:
            reg = tf.add_n(step.backbone.losses + step.head.losses)
        moved = [g is not None and bool(np.any(g.numpy() != 0)) for g in tape.gradient(reg, variables)]
    else:
        step.optimizer.apply([tf.zeros_like(v) for v in variables], variables)
        moved = [bool(np.any(v.numpy() != b)) for v, b in zip(variables, before)]
    head_ids = {id(v) for v in step.head.trainable_variables}
    kinds = {}
    for v, m in zip(variables, moved):
        counts = kinds.setdefault(f"{'head' if id(v) in head_ids else 'backbone'}.{v.name}", [0, 0])
        counts[0] += int(m)
        counts[1] += 1
    return kinds


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_effective_values_match_the_sources(name):
    want = EXPECTED[name]
    step = _built(name)
    got = effective_settings(step)
    json.dumps(got)  # what the trainer writes must be JSON

    recipe = load_config(name)  # the tiny build replaces the backbone; the recipe names it
    assert recipe.model.backbone == want["backbone"]
    assert (recipe.head.name, recipe.head.s, recipe.head.m) == want["head"]
    assert recipe.model.dropout == want["dropout"]
    assert step.head.gradient == want["gradient"]
    assert got["global_batch"] == want["global_batch"] and got["replicas"] == 1

    lr = got["lr"]
    assert lr["reference_batch"] == want["reference_batch"]
    assert lr["peak"] == pytest.approx(want["peak"]) and lr["max_steps"] == want["total"]
    for where in ("first", "middle", "last"):
        s = {"first": 0, "middle": want["total"] // 2, "last": want["total"] - 1}[where]
        assert lr[where] == pytest.approx(want["lr"](s), rel=2e-2 if where == "last" else 1e-5), where
    for m in want.get("milestones", ()):  # the update after a milestone is the first at the lower rate
        for s in (m - 1, m):
            assert float(step.schedule(s)) == pytest.approx(want["lr"](s), rel=1e-5), (m, s)

    assert got["optimizer"]["name"] == "sgd" and got["optimizer"]["momentum"] == pytest.approx(want["momentum"])
    assert not got["optimizer"]["nesterov"]
    wd = got["weight_decay"]
    assert wd["value"] == pytest.approx(want["weight_decay"]) and wd["mode"] == want["mode"]
    full = {kind for kind, (d, n) in wd["decayed"].items() if d == n}
    none = {kind for kind, (d, n) in wd["decayed"].items() if d == 0}
    assert full == want["decayed"] and full | none == set(wd["decayed"])
    assert _decayed_by_behaviour(step) == wd["decayed"]

    clip = got["gradient_clipping"]
    assert (None if clip is None else (clip["norm"], clip["applies_to"])) == want["clip"]
    assert step.clip_first == (len(step.backbone.trainable_variables) if want["clip"] and want["clip"][1] == "backbone"
                               else None)
    assert got["normalization_layers"]["epsilon"] == pytest.approx([want["bn_epsilon"]])
    assert got["normalization_layers"]["momentum"] == pytest.approx([0.9])
    assert got["input_normalization"] == want["input"]
    assert got["precision"] == want["precision"] and got["loss_scaling"] == want["loss_scaling"]
    assert got["regularization_loss"] == want["reg_loss"]


def test_reference_recipes_never_rescale_the_lr():
    for name in EXPECTED:
        if name.startswith(("arcface_torch_", "insightface_mxnet_")):
            assert load_config(name).train.lr_reference_batch is None, name


def test_linear_scaling_is_stated_at_start():
    """ms1m_r50 on 8 GPUs with its one-GPU accumulation kept: 2x the images per update, 2x the lr."""
    step = _built("ms1m_r50", ["train.accumulation_steps=8"])
    got = effective_settings(step)
    assert got["global_batch"] == 1024 and got["lr"]["peak"] == pytest.approx(0.2)
    lines = describe_settings(got)
    assert "effective lr 0.2 = train.lr 0.1 x 1024 / 512" in lines[1]
    assert lines[0].startswith("effective global batch 1024 = 128 per replica x 1 replica(s) x 8")


def test_backbone_json_keeps_its_keys_unless_the_normalisation_differs():
    assert "input_mean" not in backbone_kwargs(load_config("ms1m_r50"))
    spec = backbone_kwargs(load_config("arcface_torch_ms1mv3_r50"))
    assert (spec["input_mean"], spec["input_std"], spec["bn_epsilon"]) == (127.5, 127.5, 1e-5)


def test_clip_scope_backbone_leaves_the_head_gradient():
    grads = [tf.constant([3.0, 4.0]), tf.constant([12.0]), tf.constant([100.0])]  # backbone: two, head: one
    clipped, norm = clip_by_global_norm(grads, 5.0, first=2)
    np.testing.assert_allclose(clipped[0].numpy(), [3.0 * 5 / 13, 4.0 * 5 / 13], rtol=1e-6)
    np.testing.assert_allclose(clipped[1].numpy(), [12.0 * 5 / 13], rtol=1e-6)
    np.testing.assert_allclose(clipped[2].numpy(), [100.0])
    assert float(norm) == pytest.approx(np.sqrt(9 + 16 + 144 + 10000))  # logged: every gradient
    together, _ = clip_by_global_norm(grads, 5.0)
    assert float(tf.linalg.global_norm(together)) == pytest.approx(5.0, rel=1e-6)


def test_coupled_decay_goes_through_momentum_like_torch_sgd():
    """torch.optim.SGD(lr, momentum=0.9, weight_decay=wd): buf = 0.9 buf + (g + wd w); w -= lr buf."""
    lr, wd, g = 0.1, 0.01, np.array([0.5, -1.0], np.float32)
    w = keras.Variable(np.array([2.0, 3.0], np.float32), name="kernel")
    opt = CoupledDecaySGD(learning_rate=lr, momentum=0.9, coupled_weight_decay=wd)
    ref_w, buf = np.array([2.0, 3.0]), np.zeros(2)
    for _ in range(3):
        opt.apply([tf.constant(g)], [w])
        buf = 0.9 * buf + (g + wd * ref_w)
        ref_w = ref_w - lr * buf
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6)
    again = CoupledDecaySGD.from_config(opt.get_config())  # serialisable like Keras' own optimizers
    assert (again.coupled_weight_decay, again.decay_all, again.momentum) == (wd, False, 0.9)
    # Keras' own (decoupled) weight_decay at the same wd decays less: w -= lr wd w beside the momentum
    cfg = load_config("arcface_torch_ms1mv3_r50", ["train.regularization=decoupled", "train.precision=float32"]).train
    decoupled = build_optimizer(cfg, lr)
    assert not isinstance(decoupled, CoupledDecaySGD) and decoupled.weight_decay == pytest.approx(5e-4)


def test_a_tiny_arcface_torch_update_runs():
    """coupled decay on every variable, backbone-only clipping and float16 loss scaling in one real step."""
    step = _built("arcface_torch_ms1mv3_r50", ["train.batch_size=4", "train.accumulation_steps=1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = (np.arange(8) % 5).astype("int32")
    fn = lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # noqa: E731
    iterator = iter(step.info.strategy.distribute_datasets_from_function(fn))
    results = [step(iterator) for _ in range(2)]
    assert all(np.isfinite(r.loss) and r.reg_loss == 0.0 for r in results)


@pytest.mark.parametrize("override, message", [
    ("train.optimizer=adamw", "coupled"),
    ("train.regularization=l2", "weight_decay_scope: all"),
    ("train.schedule.milestone_steps=[200,100]", "milestone_steps"),
    ("model.input_std=0", "input_std"),
])
def test_recipe_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("arcface_torch_ms1mv3_r50", [override])


def test_trainer_prints_and_keeps_the_effective_values(tmp_path, capsys):
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import make_sample_dataset
    from face_recognition_tf.training.trainer import Trainer

    src = make_sample_dataset(tmp_path / "src", num_identities=4, images_per_identity=4, pairs_per_set=20)
    convert_recordio(src, tmp_path / "data", progress=False)
    cfg = load_config("quickstart", ["model.width_multiplier=0.125", "model.embedding_size=16", "train.batch_size=4",
                                     "train.accumulation_steps=2", "train.lr_reference_batch=4"])
    # written while preparing, before the first update
    Trainer(cfg, make_strategy("default"), data_dir=tmp_path / "data", run_dir=tmp_path / "run",
            progress=False).prepare()
    saved = json.loads((tmp_path / "run" / EFFECTIVE_FILE).read_text())
    assert saved["global_batch"] == 8 and saved["lr"]["peak"] == pytest.approx(2 * 4e-3)
    assert "effective lr 0.008 = train.lr 0.004 x 8 / 4" in capsys.readouterr().out
