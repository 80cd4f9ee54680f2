"""`frtf train` (also `python train.py` and, with central storage by default, `python train_multigpu.py`).

Order matters: the config is loaded and validated first (no TensorFlow yet, so a typo is reported in
a second), then the strategy is created (it must choose devices before TensorFlow starts), then the
trainer checks data, class count and any existing run before the first update.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from face_recognition_tf.errors import ConfigError, DatasetError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file or packaged name (quickstart, casia_r50, ms1m_r50, ...); "
                        "default: the run folder's config.yaml when resuming, else quickstart")
    parser.add_argument("--data", help="converted dataset folder (manifest.json + TFRecords); default: the embedded sample")
    parser.add_argument("--out", help="run folder (default: output/<config name>); an existing run is resumed")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer updates (the schedule keeps train.max_steps)")
    parser.add_argument("--strategy", choices=["default", "mirrored", "central_storage", "multi_worker"],
                        help="distribution strategy (default: train.strategy from the config)")
    parser.add_argument("--resume", action="store_true", help="require a checkpoint in --out and continue from it")
    parser.add_argument("--devices", help="comma-separated GPU indices to use, e.g. 0,1")
    parser.add_argument("--cpu-replicas", type=int, help="without GPUs: split the CPU into N logical devices")
    parser.add_argument("--worker-hosts", help="multi_worker: comma-separated host:port of every worker (builds TF_CONFIG)")
    parser.add_argument("--task-index", type=int, help="multi_worker: this worker's index in --worker-hosts")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to TensorBoard)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.05")
    # overrides may sit between options (`--config X train.lr=0.05 --max-steps 5`)
    parser.parse_args = parser.parse_intermixed_args


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers like 0,1") from None


def resolve_config(args) -> tuple:
    """(config, run folder) from --config/--out, falling back on a resumable run's own config.yaml."""
    from face_recognition_tf.config import load_config
    from face_recognition_tf.run_folder import RunFolder

    overrides = list(args.overrides or [])
    out = Path(args.out) if args.out else None
    if args.config:
        cfg = load_config(args.config, overrides)
    elif out is not None and RunFolder(out).config.is_file():
        cfg = load_config(RunFolder(out).config, overrides)
    else:
        cfg = load_config("quickstart", overrides)
    if out is None:
        out = Path("output") / cfg.name
    return cfg, out


def resolve_data(args, cfg) -> Path:
    if args.data:
        data = Path(args.data)
    elif cfg.data.dir:
        data = Path(cfg.data.dir)
    else:
        from face_recognition_tf.data.synthetic.sample import ensure_converted_sample

        data = Path(ensure_converted_sample())
    if not data.is_dir():
        raise DatasetError(f"{data}: dataset folder not found (convert one with `frtf convert SRC OUT`)")
    if not (data / "manifest.json").is_file():
        raise DatasetError(f"{data}: no manifest.json; is this a folder written by `frtf convert`?")
    return data


def run(args) -> int:
    cfg, out = resolve_config(args)
    if args.max_steps is not None and args.max_steps <= 0:
        raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
    strategy_name = args.strategy or cfg.train.strategy
    cfg.train.strategy = strategy_name
    data = resolve_data(args, cfg)

    from face_recognition_tf.training.strategy import make_strategy

    # the strategy before anything else touches TensorFlow: MultiWorkerMirroredStrategy must configure
    # the runtime (collectives, the worker's server) before it starts
    info = make_strategy(
        strategy_name,
        devices=_int_list(args.devices, "--devices"),
        cpu_replicas=args.cpu_replicas,
        worker_hosts=[h.strip() for h in args.worker_hosts.split(",")] if args.worker_hosts else None,
        task_index=args.task_index,
    )
    from face_recognition_tf.training.trainer import Trainer

    trainer = Trainer(cfg, info, data_dir=data, run_dir=out, max_steps=args.max_steps,
                      resume="require" if args.resume else "auto", progress=False if args.no_progress else None)
    trainer.prepare()
    if info.is_chief:
        where = f"resuming {trainer.resumed_from}" if trainer.resumed_from else "new run"
        print(f"frtf train: {where}; strategy {info.name} with {info.num_replicas} replica(s), global batch "
              f"{trainer.step_fn.global_batch}, lr {trainer.step_fn.base_lr:g}, {trainer.cfg.data.num_classes} classes, "
              f"to step {trainer.stop_step} -> {out}", flush=True)
    summary = trainer.train()
    if info.is_chief:
        val = summary["validation"]
        val_text = ", ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "step") if val else "no pair sets found"
        print(f"frtf train: step {summary['step']} ({summary['steps_this_run']} this run, {summary['seconds']:.0f} s); "
              f"validation: {val_text}; final model {out / 'embedding.keras'}; weights sha256 "
              f"{summary['weights_sha256'][:16]}", flush=True)
    else:
        # the chief writes the run folder; a worker reports its copy's digest, which must equal the chief's
        print(f"frtf train: worker {info.worker_index} of {info.num_workers} stopped at step {summary['step']} "
              f"({summary['steps_this_run']} this run); weights sha256 {summary['weights_sha256'][:16]}", flush=True)
    return 0
