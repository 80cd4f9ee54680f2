"""What a run really does per update, read off the objects the trainer built.

Why: a recipe's numbers pass through rules before they reach an update.  The linear scaling rule
multiplies `train.lr` by global batch / `train.lr_reference_batch`, and the global batch depends on
how many replicas the strategy found; weight decay reaches kernels only or every variable depending on
the mode; the backbone may carry its own input normalisation.  A recipe written for one GPU and run on
eight can so train at another learning rate without anyone noticing.  The trainer prints these values
at start-up and writes them to RUN/effective.json; the recipe tests compare them with the values the
reference trainers (arcface_torch, insightface's MXNet train.py) used.

Everything here is read from the built schedule, optimizer, backbone and head (through the one rule
each module owns: `optim.decays`, the schedule itself, the layers' own epsilon), not re-derived from
the config, so what is reported is what runs.
"""

from __future__ import annotations

import keras

from face_recognition_tf.models.input_normalization import (
    MODEL_INPUT_MEAN,
    MODEL_INPUT_STD,
    InputNormalization,
    describe,
)
from face_recognition_tf.training.optim import decays, inner_optimizer

def _lr(step) -> dict:
    t = step.cfg.train
    total = int(t.max_steps)
    middle, last = total // 2, max(total - 1, 0)
    # the optimizer's iterations count from 0: update k runs at schedule(k - 1); 8 digits drop float32 noise
    value = lambda s: float(f"{float(step.schedule(s)):.8g}")  # noqa: E731
    return {
        "train_lr": float(t.lr),
        "reference_batch": None if t.lr_reference_batch is None else int(t.lr_reference_batch),
        "scale": step.base_lr / float(t.lr),
        "peak": float(step.base_lr),
        "schedule": str(t.schedule.name),
        "warmup_steps": int(t.schedule.warmup_steps),
        "max_steps": total,
        "first": value(0),
        "middle_step": middle,
        "middle": value(middle),
        "last_step": last,
        "last": value(last),
    }


def _weight_decay(step) -> dict:
    """Per kind of variable (`backbone.kernel`, `backbone.gamma`, `head.kernel`...): [decayed, total]."""
    t = step.cfg.train
    head_ids = {id(v) for v in step.head.trainable_variables}
    variables = list(getattr(step, "optimizer_variables", None)
                     or step.backbone.trainable_variables + step.head.trainable_variables)
    kinds: dict[str, list[int]] = {}
    for variable in variables:
        key = f"{'head' if id(variable) in head_ids else 'backbone'}.{variable.name}"
        counts = kinds.setdefault(key, [0, 0])
        counts[0] += int(decays(t, variable))
        counts[1] += 1
    if getattr(step, "partial_fc", False):  # the sharded centres are updated (and decayed as kernels) apart
        kinds["head.partial_fc_centres"] = [int(t.weight_decay > 0), 1]
    through = {
        "l2": "L2 term in the loss (kernel regularizers, factor wd/2), times the regularization coefficient",
        "decoupled": "optimizer: w -= lr x wd x w beside the update",
        "coupled": "optimizer: wd x w added to the gradient after clipping, before momentum",
    }[t.regularization]
    return {"value": float(t.weight_decay), "mode": str(t.regularization),
            "scope": str(getattr(t, "weight_decay_scope", "kernels")), "through": through,
            "decayed": dict(sorted(kinds.items()))}


def _input_normalization(backbone) -> str:
    for layer in backbone.layers:
        if isinstance(layer, InputNormalization):
            return describe(layer.mean, layer.std)
    return describe(MODEL_INPUT_MEAN, MODEL_INPUT_STD)


def _normalization_layers(backbone) -> dict:
    epsilons = sorted({float(layer.epsilon) for layer in backbone.layers if hasattr(layer, "epsilon")})
    momenta = sorted({float(layer.momentum) for layer in backbone.layers
                      if hasattr(layer, "epsilon") and hasattr(layer, "momentum")})
    return {"epsilon": epsilons, "momentum": momenta}


def effective_settings(step) -> dict:
    """The per-update values of a built `TrainStep` (any object with its attributes), JSON-ready."""
    t = step.cfg.train
    optimizer = inner_optimizer(step.optimizer)
    settings = {
        "global_batch": int(step.global_batch),
        "batch_size": int(t.batch_size),
        "replicas": int(step.replicas),
        "accumulation_steps": int(step.accum),
        "lr": _lr(step),
        "optimizer": {"name": str(t.optimizer), "class": type(optimizer).__name__,
                      "momentum": float(getattr(optimizer, "momentum", 0.0) or 0.0),
                      "nesterov": bool(getattr(optimizer, "nesterov", False))},
        "weight_decay": _weight_decay(step),
        "gradient_clipping": None if t.clip_norm is None else {
            "norm": float(t.clip_norm),
            "applies_to": "backbone" if getattr(t, "clip_scope", "all") == "backbone" else "backbone and head"},
        "normalization_layers": _normalization_layers(step.backbone),
        "input_normalization": _input_normalization(step.backbone),
        "precision": step.backbone.dtype_policy.name,
        "loss_scaling": isinstance(step.optimizer, keras.optimizers.LossScaleOptimizer),
        # the original project's L2 loss term and its decaying coefficient; null: no L2 term in the loss
        "regularization_loss": {"coefficient": float(t.reg_coef), "decay": float(t.reg_coef_decay)}
        if step.l2 else None,
    }
    return settings


def _number(value: float) -> str:
    return f"{value:.4g}"


def describe_settings(s: dict) -> list[str]:
    """Three lines for the start of a run: batch, learning rate, the rest."""
    lr = s["lr"]
    if lr["reference_batch"] is None:
        rule = f"train.lr {_number(lr['train_lr'])}, not rescaled (train.lr_reference_batch: null)"
    else:
        rule = (f"train.lr {_number(lr['train_lr'])} x {s['global_batch']} / {lr['reference_batch']} "
                f"(linear scaling, train.lr_reference_batch: {lr['reference_batch']}; null trains at train.lr)")
    wd = s["weight_decay"]
    reached = sorted(k for k, (d, n) in wd["decayed"].items() if d)
    clip = s["gradient_clipping"]
    reg = s["regularization_loss"]
    l2_term = "off" if reg is None else f"coefficient {_number(reg['coefficient'])}, decay {_number(reg['decay'])}"
    return [
        f"effective global batch {s['global_batch']} = {s['batch_size']} per replica x {s['replicas']} "
        f"replica(s) x {s['accumulation_steps']} accumulation step(s)",
        f"effective lr {_number(lr['peak'])} = {rule}; {lr['schedule']} schedule: {_number(lr['first'])} at update 1, "
        f"{_number(lr['middle'])} at {lr['middle_step'] + 1}, {_number(lr['last'])} at {lr['last_step'] + 1}",
        f"{s['optimizer']['name']} momentum {_number(s['optimizer']['momentum'])}; weight decay "
        f"{_number(wd['value'])} {wd['mode']} on {', '.join(reached) or 'nothing'}; "
        f"clip {'off' if clip is None else _number(clip['norm']) + ' on ' + clip['applies_to']}; "
        f"BN epsilon {', '.join(_number(e) for e in s['normalization_layers']['epsilon'])}; "
        f"input {s['input_normalization']}; {s['precision']}; "
        f"L2 loss term {l2_term}",
    ]
