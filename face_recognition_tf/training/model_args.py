"""What a training config means for the models: the exact `build_backbone` / `build_head` arguments.

Why here and not in config.py: the config module only describes and checks settings; turning them into
model arguments is the trainer's business (and partial_fc_step's, which builds the sharded head), and
the result is what a run folder records (RUN/backbone.json, RUN/head.json) and resume compares, so it
must stay stable: options added later are listed only where they differ from their defaults.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from face_recognition_tf.config import HeadConfig


def _l2_factor(cfg: DictConfig) -> float:
    """The models' L2 factor for `train.weight_decay`.

    `train.weight_decay` means what it means in insightface's SGD: the update adds wd x w to the
    gradient.  A Keras L2(f) regularizer adds f x ||w||^2 (gradient 2 f w), hence f = wd / 2.
    Decoupled and coupled modes put no regularizer on the models at all: the optimizer decays.
    """
    if cfg.train.regularization != "l2":
        return 0.0
    return float(cfg.train.weight_decay) / 2.0


def backbone_kwargs(cfg: DictConfig) -> dict:
    """The exact `build_backbone` arguments (written to RUN/backbone.json).

    The input normalisation is listed only when it is not the models' standard (x - 127.5) / 128, so
    the backbone.json of every run that does not ask for another one stays as it was (resume compares it).
    """
    m = cfg.model
    weight_decay = _l2_factor(cfg)
    clipping = OmegaConf.to_container(m.renorm_clipping) if isinstance(m.renorm_clipping, DictConfig) else m.renorm_clipping
    from face_recognition_tf.models.input_normalization import is_standard

    normalisation = {} if is_standard(m.input_mean, m.input_std) else {
        "input_mean": float(m.input_mean), "input_std": float(m.input_std)}
    return {
        "name": m.backbone,
        "embedding_size": int(m.embedding_size),
        "normalization": m.normalization,
        "input_shape": [int(m.input_size), int(m.input_size), 3],
        "dropout": float(m.dropout),
        "width_multiplier": float(m.width_multiplier),
        "weight_decay": float(weight_decay),
        "bn_momentum": float(m.bn_momentum),
        "bn_epsilon": float(m.bn_epsilon),
        "renorm_clipping": clipping,
        "renorm_momentum": float(m.renorm_momentum),
        "groups": int(m.groups),
        **normalisation,
    }


def head_kwargs(cfg: DictConfig, num_classes: int) -> dict:
    h = cfg.head
    weight_decay = _l2_factor(cfg)
    return {
        "name": h.name, "num_classes": int(num_classes), "embedding_size": int(cfg.model.embedding_size),
        "s": float(h.s), "m": None if h.m is None else float(h.m), "m1": float(h.m1), "m2": float(h.m2), "m3": float(h.m3),
        "easy_margin": bool(h.easy_margin), "weight_decay": float(weight_decay), **_head_options(h),
    }


def _head_options(h) -> dict:
    """The head settings added with issue 12, listed only where they differ from the defaults, so the
    head.json of every earlier run stays as it was (resume compares it)."""
    defaults = HeadConfig()
    keys = ("gradient", "sphereface_form", "lambda_base", "lambda_gamma", "lambda_power", "lambda_min", "mining")
    return {k: h[k] for k in keys if h[k] != getattr(defaults, k)}
