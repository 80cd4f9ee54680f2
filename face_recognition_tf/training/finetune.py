"""Start a backbone from a trained model, freeze part of it, unfreeze it on a schedule, stop early.

The seeds fine-tune pretrained recognizers on 10-500 people of their own: the embedding model comes
from a run, checkpoint or `.keras` file (loaded through `model_io`, the same loader evaluation uses),
a *new* head is built for the new classes, and part of the backbone stays frozen (`finetune.freeze`):
  first_layers       the first `finetune.freeze_layers` layers with weights (from the input side);
  all_but_embedding  everything but the embedding layers: the layers after the backbone's last Flatten
                     (the `fc` dense layer and the `features` BN of IR-ResNets and MobileFaceNets);
  all_but_head       the whole backbone: only the new head trains.
`finetune.unfreeze` then opens the backbone gradually from the output side, e.g.
`[{step: 200, layers: 20}, {step: 400, layers: all}]`: from update 200 on the last 20 layers with weights
train, from update 400 on all of them.  The state is a function of the step alone, so a resumed run
trains exactly what an uninterrupted one would.  A frozen Keras 3 BatchNormalization also runs in
inference mode, which is what a small fine-tuning set needs (its batch statistics would be too noisy
to replace the pretrained ones).

`train.early_stopping` stops a run whose mean validation accuracy (the .bin pair sets beside the data)
has not improved for `patience` validations; the best model is in RUN/best/ either way.
"""

from __future__ import annotations

from pathlib import Path

from face_recognition_tf.errors import CheckpointError, ConfigError

# what fine-tuning may change; every other build_backbone argument is the starting model's architecture
TRAINING_KEYS = ("dropout", "weight_decay", "bn_momentum", "renorm_momentum")


def init_spec(init: str) -> dict | None:
    """The ``backbone.json`` of the model fine-tuning starts from (a run folder, one of its checkpoints,
    or a folder written by ``frtf import``), or None for a bare ``.keras`` file."""
    from face_recognition_tf.model_io import read_backbone_spec
    from face_recognition_tf.run_folder import RunFolder

    path = Path(init)
    for folder in (path, RunFolder.of_checkpoint(path).path if RunFolder.is_checkpoint_prefix(path) else None):
        if folder is not None and RunFolder.is_run_folder(folder):
            return read_backbone_spec(folder)
    return None


# config keys (model.*) that follow the starting model's backbone.json
_CONFIG_KEYS = {"backbone": "name", "embedding_size": "embedding_size", "normalization": "normalization",
                "width_multiplier": "width_multiplier", "bn_epsilon": "bn_epsilon", "groups": "groups"}


def adopt_init_architecture(cfg) -> list[str]:
    """Set ``model.*`` to the starting model's architecture (so the head, the data check and the saved
    config agree with it); returns what changed, for the log."""
    source = init_spec(cfg.finetune.init) if cfg.finetune.init else None
    if source is None:
        return []
    changed = []
    for key, spec_key in _CONFIG_KEYS.items():
        if spec_key in source and cfg.model[key] != source[spec_key]:
            changed.append(f"model.{key} {cfg.model[key]} -> {source[spec_key]}")
            cfg.model[key] = source[spec_key]
    side = int(source.get("input_shape", [cfg.model.input_size])[0])
    if side != int(cfg.model.input_size):
        changed.append(f"model.input_size {cfg.model.input_size} -> {side}")
        cfg.model.input_size = side
    return changed


def backbone_spec(configured: dict, init: str | None) -> dict:
    """The backbone to build: the starting model's architecture (its depth, embedding size, BN epsilon,
    input normalisation...) with the config's training settings, so an imported insightface model is
    rebuilt as it was imported whatever ``model.backbone`` says."""
    source = init_spec(init) if init else None
    if source is None:
        return configured
    spec = {k: v for k, v in source.items() if k != "model_name"}
    spec.update({k: configured[k] for k in TRAINING_KEYS if k in configured})
    return spec


def load_initial_weights(backbone, init: str) -> None:
    """Copy the weights of the model at `init` into `backbone`, refusing another architecture."""
    from face_recognition_tf.model_io import load_embedding_model

    source = load_embedding_model(init)
    if not hasattr(source, "get_weights"):
        raise CheckpointError(f"{init}: a SavedModel cannot seed fine-tuning; use a run, checkpoint or .keras file")
    src_weights = source.get_weights()
    dst_weights = backbone.get_weights()
    if len(src_weights) != len(dst_weights):
        raise CheckpointError(
            f"{init}: another architecture ({len(src_weights)} weight tensors, the configured backbone has "
            f"{len(dst_weights)}); check model.backbone / normalization / width_multiplier"
        )
    for index, (src, dst) in enumerate(zip(src_weights, dst_weights)):
        if src.shape != dst.shape:
            name = backbone.weights[index].path if hasattr(backbone.weights[index], "path") else index
            raise CheckpointError(
                f"{init}: another architecture (weight {name} is {tuple(src.shape)} there, "
                f"{tuple(dst.shape)} in the configured backbone; check model.embedding_size / width_multiplier)"
            )
    backbone.set_weights(src_weights)


# ---- freezing -------------------------------------------------------------------------------------
def weighted_layers(backbone) -> list:
    """The backbone's layers that hold weights, input side first (what freeze/unfreeze counts)."""
    return [layer for layer in backbone.layers if layer.weights]


def embedding_layers(backbone) -> list:
    """The embedding layers by role: those with weights after the last Flatten (dense `fc` + `features`
    BN in our models and in imported ones); a model without a Flatten: its last Dense layer onwards."""
    import keras

    layers = list(backbone.layers)
    cut = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Flatten)]
    if cut:
        start = cut[-1] + 1
    else:
        dense = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
        if not dense:
            raise ConfigError(f"finetune.freeze=all_but_embedding: backbone {backbone.name!r} has no Flatten or "
                              "Dense layer to tell its embedding layers by; use first_layers or all_but_head")
        start = dense[-1]
    chosen = [layer for layer in layers[start:] if layer.weights]
    if not chosen:
        raise ConfigError(f"finetune.freeze=all_but_embedding: backbone {backbone.name!r} has no layer with "
                          "weights after its last Flatten")
    return chosen


class FreezePlan:
    """Which backbone layers train at each update: `finetune.freeze`, then `finetune.unfreeze` stages.

    `apply(step)` sets `layer.trainable` for the state at `step` (completed updates) and says whether
    it changed; the optimizer is built once over every variable any stage will train, so its slots
    exist (and are checkpointed) from the start and resume needs nothing else.
    """

    def __init__(self, backbone, finetune):
        self.backbone = backbone
        self.layers = weighted_layers(backbone)
        n = len(self.layers)
        mode = finetune.freeze
        if mode == "none":
            base = set(range(n))
        elif mode == "all_but_head":
            base = set()
        elif mode == "first_layers":
            base = set(range(min(int(finetune.freeze_layers), n), n))
        elif mode == "all_but_embedding":
            keep = {id(layer) for layer in embedding_layers(backbone)}
            base = {i for i, layer in enumerate(self.layers) if id(layer) in keep}
        else:
            raise ValueError(f"unknown freeze mode {mode!r}")
        self.base = frozenset(base)
        self.stages = [(int(s["step"]), n if s["layers"] == "all" else min(int(s["layers"]), n))
                       for s in finetune.unfreeze]
        self.state = None
        self.apply(0)

    def trainable_at(self, step: int) -> frozenset:
        """Indices (into `self.layers`) of the layers that train during update `step` + 1."""
        opened = max([count for at, count in self.stages if at <= step], default=0)
        n = len(self.layers)
        return self.base | frozenset(range(n - opened, n))

    def apply(self, step: int) -> bool:
        state = self.trainable_at(step)
        if state == self.state:
            return False
        self._set(state)
        return True

    def _set(self, state) -> None:
        self.backbone.trainable = True  # the layers decide (a frozen model hides its layers' weights)
        for i, layer in enumerate(self.layers):
            layer.trainable = i in state
        self.state = state

    @property
    def frozen_count(self) -> int:
        return len(self.layers) - len(self.state)

    def optimizer_variables(self, head) -> list:
        """Every variable some stage trains, in model order (the optimizer is built over these)."""
        current = self.state
        self._set(self.trainable_at(1 << 62))
        variables = self.backbone.trainable_variables + head.trainable_variables
        self._set(current)
        return variables

    def describe(self) -> str:
        n = len(self.layers)
        if len(self.state) == n:
            return f"all {n} backbone layers with weights train"
        first = min(self.state, default=None)
        where = f", {self.layers[first].name} onwards" if first is not None and self.state == frozenset(range(first, n)) else ""
        return f"{len(self.state)} of {n} backbone layers with weights train{where}"


def freeze(backbone, mode: str, first_layers: int = 0) -> int:
    """Freeze per `finetune.freeze` (no schedule); returns the number of backbone layers left frozen."""
    from types import SimpleNamespace

    return FreezePlan(backbone, SimpleNamespace(freeze=mode, freeze_layers=first_layers, unfreeze=[])).frozen_count


def unfreeze_if_due(plan: FreezePlan, step_fn, step: int, run_dir, is_chief: bool) -> None:
    """Called before every update: open the layers the schedule opens at `step`, and retrace the update."""
    if not plan.stages or not plan.apply(step):
        return
    step_fn.retrace()
    from face_recognition_tf.training import checkpoints as ck

    message = f"step {step}: finetune.unfreeze: {plan.describe()}"
    if is_chief:
        ck.append_history(run_dir, {"event": "unfreeze", "step": step, "trainable_layers": len(plan.state)})
        from tqdm import tqdm

        tqdm.write(message)


# ---- early stopping -------------------------------------------------------------------------------
class EarlyStopping:
    """Stop when the validation mean has not improved by more than `min_delta` for `patience` validations."""

    def __init__(self, patience: int, min_delta: float = 0.0, run_dir=None):
        self.patience, self.min_delta, self.run_dir = int(patience), float(min_delta), run_dir
        self.best, self.best_step, self.waited, self.reason = float("-inf"), None, 0, None

    @classmethod
    def for_run(cls, cfg, run_dir, up_to: int) -> "EarlyStopping | None":
        """None when `train.early_stopping.patience` is null; a resumed run replays its history (the
        validations up to step `up_to`, where it resumes), so it stops where an uninterrupted run would."""
        import json

        from face_recognition_tf.run_folder import RunFolder

        es = cfg.train.early_stopping
        if es.patience is None:
            return None
        stopper = cls(es.patience, es.min_delta, run_dir)
        path = RunFolder(run_dir).history
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (isinstance(record, dict) and record.get("event") == "validation" and "mean" in record
                    and isinstance(record.get("step"), int) and record["step"] <= up_to):
                stopper._observe(float(record["mean"]), record["step"])
        return stopper

    def _observe(self, mean: float, step: int) -> None:
        if mean > self.best + self.min_delta:
            self.best, self.best_step, self.waited = mean, step, 0
        else:
            self.waited += 1
        if self.waited >= self.patience and self.reason is None:
            self.reason = (f"early stopping at step {step}: the validation mean has not improved by more than "
                           f"{self.min_delta:g} in {self.waited} validations (best {self.best:.4f} at step "
                           f"{self.best_step}, kept in best/)")

    def update(self, mean: float, step: int, is_chief: bool = True) -> str | None:
        """Record one validation; returns the reason when the run should stop now (logged once)."""
        stopped = self.reason is not None
        self._observe(mean, step)
        if self.reason is not None and not stopped and is_chief and self.run_dir is not None:
            from face_recognition_tf.training import checkpoints as ck

            ck.append_history(self.run_dir, {"event": "early_stop", "step": step, "reason": self.reason,
                                             "best_step": self.best_step, "best_mean": self.best})
            from tqdm import tqdm

            tqdm.write(self.reason)
        return self.reason


def check_early_stopping(cfg, data_dir, strategy_name: str) -> None:
    """Refuse `train.early_stopping` before any work when it cannot run: no pair sets, several processes."""
    if cfg.train.early_stopping.patience is None:
        return
    if strategy_name == "multi_worker":
        raise ConfigError("train.early_stopping works with one process (strategies default, mirrored, "
                          "central_storage): only the chief validates, so the other workers could not stop")
    from face_recognition_tf.data import find_bins

    if not find_bins(data_dir, list(cfg.validation.sets) or None):
        raise ConfigError(f"train.early_stopping needs verification pair sets (.bin) beside the data in {data_dir}; "
                          "make some with `frtf make-pairs`, or set train.early_stopping.patience=null")


# ---- config checks (called by config_checks.validate) -----------------------------------------------
def check_finetune_config(cfg, source: str) -> None:
    """`finetune.unfreeze` and `train.early_stopping` values, as one-line ConfigErrors."""
    ft = cfg.finetune
    last_step, last_count = 0, 0
    for index, stage in enumerate(ft.unfreeze):
        key = f"'finetune.unfreeze[{index}]'"
        if not hasattr(stage, "keys") or set(stage.keys()) != {"step", "layers"}:
            got = sorted(stage.keys()) if hasattr(stage, "keys") else repr(stage)
            raise ConfigError(f"{source}: {key} must be a mapping {{step: S, layers: N or all}}, got {got}")
        step, layers = stage["step"], stage["layers"]
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ConfigError(f"{source}: {key}.step is {step!r}; give the (positive) update from which the "
                              "layers train")
        if isinstance(layers, bool) or not (layers == "all" or isinstance(layers, int) and layers > 0):
            raise ConfigError(f"{source}: {key}.layers is {layers!r}; give a positive count of layers (from the "
                              "output side) or 'all'")
        count = float("inf") if layers == "all" else layers
        if step <= last_step or count <= last_count:
            raise ConfigError(f"{source}: 'finetune.unfreeze' stages must have increasing steps and layer counts "
                              f"(stage {index}: step {step}, layers {layers})")
        last_step, last_count = step, count
    if ft.unfreeze and ft.freeze == "none":
        raise ConfigError(f"{source}: 'finetune.unfreeze' needs a frozen start: set finetune.freeze to first_layers, "
                          "all_but_embedding or all_but_head")
    es = cfg.train.early_stopping
    if es.patience is not None and es.patience <= 0:
        raise ConfigError(f"{source}: 'train.early_stopping.patience' must be a positive number of validations or "
                          f"null (off), got {es.patience}")
    if es.min_delta < 0:
        raise ConfigError(f"{source}: 'train.early_stopping.min_delta' must be >= 0, got {es.min_delta}")
