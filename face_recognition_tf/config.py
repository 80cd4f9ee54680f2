"""Typed training configs: a YAML file plus dotted command-line overrides, validated against a schema.

Why a schema: the original project kept its settings in Python literals (class count, paths,
checkpoint steps), so a typo silently trained the wrong thing.  Here every key is declared below with
its type; an unknown key or a wrong type is a `ConfigError` naming the key and the file *before* any
TensorFlow work starts.  OmegaConf structured configs do the type checking and the merging.

A config file may start from another one with `base: other.yaml` (path relative to the file, or a
packaged config name), the way insightface's arcface_torch keeps a base config and per-experiment
files.  `data.num_classes` is never typed by hand: the trainer fills it from the dataset manifest.

This module is the schema and the loading only.  What values make sense (choices, ranges, settings that
must agree) is `config_checks.py`; the model names it accepts are the model registries', so a backbone
added with `register_backbone` is a valid `model.backbone`.  Turning a config into model arguments is
training's business (`training/model_args.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from face_recognition_tf.config_checks import validate
from face_recognition_tf.errors import ConfigError

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass
class ModelConfig:
    backbone: str = "r50"
    embedding_size: int = 512
    # aligned faces are 112x112 in every insightface dataset; smaller sizes only for quick experiments
    input_size: int = 112
    normalization: str = "batch"
    dropout: float = 0.0
    width_multiplier: float = 1.0
    bn_momentum: float = 0.9
    bn_epsilon: float = 2e-5
    # batch renorm (normalization: batch_renorm): clipping {rmax, dmax}; null = Keras defaults
    renorm_clipping: Optional[Any] = None
    renorm_momentum: float = 0.99
    groups: int = 32
    # the input normalisation the backbone is trained on, (x - input_mean) / input_std; the data pipeline
    # always feeds (x - 127.5) / 128, so another value puts an InputNormalization layer first in the model
    # (arcface_torch trains on (x - 127.5) / 127.5)
    input_mean: float = 127.5
    input_std: float = 128.0


@dataclass
class PartialFCConfig:
    # Partial FC (arcface_torch): the class centres sharded across replicas (each holds C/R of them, no
    # all-reduce of their gradient), softmax exact across shards; for 100k+ classes (models/partial_fc.py)
    enabled: bool = False
    # < 1: each update keeps the batch's classes plus random others, up to this share of every shard
    sample_rate: float = 1.0


@dataclass
class HeadConfig:
    name: str = "arcface"
    s: float = 64.0
    # null = the head's own default (arcface 0.5, cosface 0.35 (arcface_torch's recipes: 0.4), sphereface 4,
    # triplet 0.5)
    m: Optional[float] = None
    # combined margin cos(m1*theta + m2) - m3 (insightface's m1, m2, m3)
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0
    easy_margin: bool = False
    # arcface / combined: exact (differentiate cos(theta + m), insightface's classic code) or straight_through
    # (today's arcface_torch: margin computed without gradient, d(logit)/d(cos) = s)
    gradient: str = "exact"
    # sphereface: normalized (features normalised, scale s) or insightface (raw features, lambda annealed)
    sphereface_form: str = "normalized"
    # sphereface insightface form: lambda = max(lambda_min, lambda_base * (1 + lambda_gamma * step)^-lambda_power)
    lambda_base: float = 1000.0
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0
    # triplet: batch_hard or semi_hard (FaceNet) online mining; needs data.sampler: pk
    mining: str = "batch_hard"
    partial_fc: PartialFCConfig = field(default_factory=PartialFCConfig)


@dataclass
class DataConfig:
    # converted TFRecord folder; `frtf train --data` wins; null = the embedded sample
    dir: Optional[str] = None
    # filled from manifest.json by the trainer; a typed value must agree with the manifest
    num_classes: Optional[int] = None
    shuffle_buffer: Optional[int] = None
    # the pipeline's batch augmentations: flip, color_jitter, grayscale, blur, rotation, crop
    augment: Dict[str, Any] = field(default_factory=lambda: {"flip": True})
    # deterministic order makes resume continue with exactly the batches an uninterrupted run would see
    deterministic: bool = True
    seed: int = 0
    # leave out records whose JPEG does not decode (found by a scan before training, listed and counted)
    # instead of stopping at the first one; `frtf convert --verify` or --skip-corrupt is the better fix
    skip_corrupt: bool = False
    # shuffle: plain shuffled batches; pk: every per-replica batch is train.batch_size / K identities with
    # K = images_per_identity images each (the triplet head needs it)
    sampler: str = "shuffle"
    images_per_identity: int = 4


@dataclass
class ScheduleConfig:
    name: str = "piecewise"
    warmup_steps: int = 0
    # warm-up starts at lr * warmup_start_factor and rises linearly to lr
    warmup_start_factor: float = 0.0
    # piecewise: decay points as fractions of train.max_steps, lr multiplied by `factor` at each
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75, 0.875])
    # piecewise: decay points as update counts (published recipes give steps); when set, wins over milestones
    milestone_steps: List[int] = field(default_factory=list)
    factor: float = 0.1
    # polynomial: lr -> lr * end_factor over the steps after warm-up
    power: float = 2.0
    end_factor: float = 0.0
    # cosine with warm restarts: first period as a fraction of train.max_steps, then t_mul longer, m_mul lower
    first_period: float = 0.25
    t_mul: float = 2.0
    m_mul: float = 1.0
    alpha: float = 0.0


@dataclass
class EarlyStoppingConfig:
    # validations without an improvement of the mean pair-set accuracy before the run stops; null = never
    patience: Optional[int] = None
    # an improvement must exceed this much accuracy
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    strategy: str = "default"
    # per-replica micro-batch; global batch = batch_size * replicas * accumulation_steps
    batch_size: int = 128
    accumulation_steps: int = 1
    # optimizer updates (not micro-batches)
    max_steps: int = 100000
    optimizer: str = "sgd"
    lr: float = 0.1
    # linear scaling: effective lr = lr * global_batch / lr_reference_batch (null = use lr as is)
    lr_reference_batch: Optional[int] = 512
    momentum: float = 0.9
    nesterov: bool = False
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 5e-4
    # l2: kernel L2 regularizers added to the loss (the original project); decoupled: SGDW / AdamW;
    # coupled: SGD adds wd x w to each gradient after clipping, before momentum (torch.optim.SGD, MXNet SGD)
    regularization: str = "l2"
    # which variables weight decay reaches: kernels (conv, dense and head kernels) or all (every trainable
    # variable: also BN gamma/beta, PReLU slopes, biases, as torch.optim.SGD over model.parameters())
    weight_decay_scope: str = "kernels"
    # the original project's coefficient on the regularization loss, decayed while it dominates
    reg_coef: float = 1.0
    reg_coef_decay: float = 0.8
    clip_norm: Optional[float] = None
    # which gradients clip_norm measures and clips: all (backbone + head) or backbone (arcface_torch)
    clip_scope: str = "all"
    precision: str = "float32"
    jit_compile: bool = False
    skip_nonfinite: bool = False
    seed: int = 0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # stop when the validation mean has not improved for `patience` validations (needs .bin pair sets)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep: int = 3


@dataclass
class LogConfig:
    every_steps: int = 20
    progress: bool = True


@dataclass
class ValidationConfig:
    every_steps: int = 2000
    # .bin names looked for beside the data; empty list = every .bin found
    sets: List[str] = field(default_factory=lambda: ["lfw", "cfp_fp", "agedb_30"])
    batch_size: int = 64
    # cap pairs per set during training (0 = all) so validation stays a small share of the time
    max_pairs: int = 0
    # cross-validation folds of the accuracy (insightface: 10); small own pair sets need fewer
    folds: int = 10


@dataclass
class FinetuneConfig:
    # run folder, checkpoint prefix or embedding .keras to start the backbone from (null = from scratch)
    init: Optional[str] = None
    # none | first_layers | all_but_embedding (the layers after the last Flatten) | all_but_head
    freeze: str = "none"
    # with freeze: first_layers, how many backbone layers with weights (from the input) stay frozen
    freeze_layers: int = 0
    # gradual unfreezing, a list of {step: S, layers: N or all}: from update S on, the last N backbone layers
    # with weights (counted from the output side) train too; checked by training/finetune.py
    unfreeze: List[Any] = field(default_factory=list)


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def resolve_config_path(path_or_name: str | os.PathLike) -> Path:
    """A file path, or a bare name (`quickstart`, `ms1m_r50.yaml`) of a packaged config."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        for candidate in (PACKAGED_CONFIGS / path.name, PACKAGED_CONFIGS / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    known = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{path}: config file not found (packaged configs: {known})")


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """The file merged over its `base:` chain, still untyped."""
    if path.resolve() in chain:
        raise ConfigError(f"{path}: `base:` chain loops back to itself")
    try:
        raw = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = path.parent / str(base)
    if not base_path.is_file():
        base_path = resolve_config_path(str(base))
    return OmegaConf.merge(_read_yaml(base_path, chain + (path.resolve(),)), raw)


def _merge_checked(schema: DictConfig, layer, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, layer)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        msg = str(exc).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            raise ConfigError(f"{source}: unknown key '{key}'" + _suggest(key)) from None
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None
    except TypeError as exc:  # OmegaConf: a mapping given where a list is expected, or the reverse
        raise ConfigError(f"{source}: a value has the wrong shape ({exc}: a list where a mapping is expected, "
                          "or the reverse)") from None


def _suggest(key: str) -> str:
    section, _, _leaf = key.rpartition(".")
    node = OmegaConf.structured(Config)
    try:
        options = list(OmegaConf.select(node, section).keys()) if section else list(node.keys())
    except Exception:
        return ""
    return f" (known keys{' in ' + section if section else ''}: {', '.join(options)})"


def load_config(path_or_name: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a YAML config (file or packaged name) and apply `key=value` overrides, fully validated."""
    path = resolve_config_path(path_or_name)
    schema = OmegaConf.structured(Config)
    cfg = _merge_checked(schema, _read_yaml(path), str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=0.05")
        key, value = item.split("=", 1)
        try:
            layer = OmegaConf.from_dotlist([f"{key.strip()}={value}"])
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # yaml's parser errors: a flow list or mapping cut short, e.g. [{step: 2
            raise ConfigError(f"override {item!r}: not valid YAML ({' '.join(str(exc).split()[:8])})") from None
        cfg = _merge_checked(cfg, layer, f"override {item!r}")
    validate(cfg, f"{path} with overrides {' '.join(overrides)}" if overrides else str(path))
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (a half-written config.yaml would break resume)."""
    from face_recognition_tf import atomic

    atomic.write_text(path, to_yaml(cfg))
