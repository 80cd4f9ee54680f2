"""The checks a config's types cannot express: choices, ranges, cross-field consistency.

Why apart from config.py: the schema there says what keys exist and their types; this module says which
values make sense together, and grows with every training feature.  It runs at load time, before any
TensorFlow work, so it imports nothing that imports TensorFlow: the model names come from
`model_names` (the built-ins plus whatever `register_backbone` / `register_head` added), the strategy
names from `training.strategy` (TensorFlow-free at import); the other choices are the config's own.
Every failure is a one-line `ConfigError` naming the key and the file (or the overrides).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from face_recognition_tf.errors import ConfigError
from face_recognition_tf.model_names import NORMALIZATIONS, backbone_choices, head_choices
from face_recognition_tf.training.strategy import STRATEGIES

HEAD_GRADIENTS = ("exact", "straight_through")
SPHEREFACE_FORMS = ("normalized", "insightface")
TRIPLET_MINING = ("batch_hard", "semi_hard")
SAMPLERS = ("shuffle", "pk")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "piecewise", "polynomial", "cosine_restarts")
REGULARIZATION = ("l2", "decoupled", "coupled")
WEIGHT_DECAY_SCOPES = ("kernels", "all")
CLIP_SCOPES = ("all", "backbone")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
FREEZE = ("none", "first_layers", "all_but_embedding", "all_but_head")

# a callable is asked at check time: the model registries can grow after this module is imported
_CHOICES = {
    "model.backbone": backbone_choices,
    "model.normalization": NORMALIZATIONS,
    "head.name": head_choices,
    "head.gradient": HEAD_GRADIENTS,
    "head.sphereface_form": SPHEREFACE_FORMS,
    "head.mining": TRIPLET_MINING,
    "data.sampler": SAMPLERS,
    "train.strategy": STRATEGIES,
    "train.optimizer": OPTIMIZERS,
    "train.regularization": REGULARIZATION,
    "train.weight_decay_scope": WEIGHT_DECAY_SCOPES,
    "train.clip_scope": CLIP_SCOPES,
    "train.precision": PRECISIONS,
    "train.schedule.name": SCHEDULES,
    "finetune.freeze": FREEZE,
}
_POSITIVE = ("model.embedding_size", "model.input_size", "train.batch_size", "train.accumulation_steps", "train.max_steps",
             "checkpoint.every_steps", "checkpoint.keep", "log.every_steps", "validation.every_steps",
             "validation.batch_size", "validation.folds")


def validate(cfg: DictConfig, source: str) -> None:
    """Checks the schema's types cannot express: choices, ranges, cross-field consistency."""
    for key, choices in _CHOICES.items():
        choices = choices() if callable(choices) else choices
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: '{key}' is {value!r}; choose one of {', '.join(choices)}")
    for key in _POSITIVE:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{source}: '{key}' must be positive, got {OmegaConf.select(cfg, key)}")
    t = cfg.train
    if t.lr <= 0:
        raise ConfigError(f"{source}: 'train.lr' must be positive, got {t.lr}")
    if not 0 < t.reg_coef_decay <= 1:
        raise ConfigError(f"{source}: 'train.reg_coef_decay' must be in (0, 1] (1 disables the decay)")
    if t.weight_decay < 0:
        raise ConfigError(f"{source}: 'train.weight_decay' must be >= 0")
    if t.clip_norm is not None and t.clip_norm <= 0:
        raise ConfigError(f"{source}: 'train.clip_norm' must be positive or null")
    if t.regularization == "coupled" and t.optimizer != "sgd":
        raise ConfigError(f"{source}: 'train.regularization: coupled' is SGD's weight decay; use it with "
                          "train.optimizer=sgd (adamw decays decoupled)")
    if t.weight_decay_scope == "all" and t.regularization == "l2":
        raise ConfigError(f"{source}: 'train.weight_decay_scope: all' needs train.regularization coupled or "
                          "decoupled (l2 mode puts regularizers on the models' kernels only)")
    if cfg.model.input_std <= 0:
        raise ConfigError(f"{source}: 'model.input_std' must be positive, got {cfg.model.input_std}")
    steps = list(t.schedule.milestone_steps)
    if any(s <= 0 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"{source}: 'train.schedule.milestone_steps' must be increasing positive update counts")
    if t.lr_reference_batch is not None and t.lr_reference_batch <= 0:
        raise ConfigError(f"{source}: 'train.lr_reference_batch' must be positive or null")
    sched = t.schedule
    if sched.warmup_steps < 0 or sched.warmup_steps >= t.max_steps and t.max_steps > 1:
        raise ConfigError(f"{source}: 'train.schedule.warmup_steps' must be in [0, train.max_steps)")
    if sorted(sched.milestones) != list(sched.milestones) or any(not 0 < m < 1 for m in sched.milestones):
        raise ConfigError(f"{source}: 'train.schedule.milestones' must be increasing fractions in (0, 1)")
    if not 0 < sched.first_period <= 1:
        raise ConfigError(f"{source}: 'train.schedule.first_period' must be a fraction in (0, 1]")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"{source}: 'model.dropout' must be in [0, 1)")
    if cfg.data.num_classes is not None and cfg.data.num_classes <= 0:
        raise ConfigError(f"{source}: 'data.num_classes' comes from the manifest; remove it or make it positive")
    _validate_head_and_sampler(cfg, source)
    _validate_partial_fc(cfg, source)
    if cfg.finetune.freeze == "first_layers" and cfg.finetune.freeze_layers <= 0:
        raise ConfigError(f"{source}: 'finetune.freeze: first_layers' needs 'finetune.freeze_layers' > 0")
    from face_recognition_tf.training.finetune import check_finetune_config

    check_finetune_config(cfg, source)


def _validate_head_and_sampler(cfg: DictConfig, source: str) -> None:
    h, d = cfg.head, cfg.data
    if h.gradient == "straight_through" and h.name not in ("arcface", "combined", "cosface"):
        raise ConfigError(f"{source}: 'head.gradient: straight_through' is for arcface, combined and cosface; "
                          f"head {h.name} has only the exact gradient")
    if h.gradient == "straight_through" and h.easy_margin:
        raise ConfigError(f"{source}: 'head.easy_margin' belongs to the exact gradient; the straight-through form "
                          "(today's arcface_torch) has no fallback to choose")
    if min(h.lambda_base, h.lambda_gamma, h.lambda_power, h.lambda_min) < 0:
        raise ConfigError(f"{source}: 'head.lambda_base/lambda_gamma/lambda_power/lambda_min' must be >= 0")
    if h.name == "triplet" and d.sampler != "pk":
        raise ConfigError(f"{source}: 'head.name: triplet' mines triplets inside each batch and needs identity-"
                          "balanced batches: set data.sampler=pk (and data.images_per_identity)")
    if h.name == "triplet" and h.m is not None and h.m < 0:
        raise ConfigError(f"{source}: 'head.m' (the triplet margin) must be >= 0")
    if d.sampler == "pk":
        from face_recognition_tf.data.input.pk_sampler import check_pk

        try:
            check_pk(int(cfg.train.batch_size), int(d.images_per_identity))
        except ConfigError as exc:
            raise ConfigError(f"{source}: data.sampler=pk: {exc}") from None


def _validate_partial_fc(cfg: DictConfig, source: str) -> None:
    pfc, h = cfg.head.partial_fc, cfg.head
    if not 0 < pfc.sample_rate <= 1:
        raise ConfigError(f"{source}: 'head.partial_fc.sample_rate' must be in (0, 1], got {pfc.sample_rate}")
    if pfc.enabled and (h.name not in ("arcface", "cosface", "combined", "sphereface")
                        or h.sphereface_form != "normalized"):
        raise ConfigError(f"{source}: 'head.partial_fc' shards the class centres of a normalised margin head "
                          f"(arcface, cosface, combined, sphereface in its normalized form), not head {h.name}")
    if pfc.enabled and cfg.train.strategy == "central_storage":
        raise ConfigError(f"{source}: 'head.partial_fc' keeps centres on each replica's device; central_storage "
                          "keeps every variable in one place: use mirrored or multi_worker")
    if pfc.enabled and cfg.train.jit_compile:
        raise ConfigError(f"{source}: 'head.partial_fc' samples a varying number of centres; set train.jit_compile=false")
