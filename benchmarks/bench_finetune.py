"""Fine-tuning on a few of your own people: verification accuracy on held-out pairs before and after,
for each freeze policy and recipe (issue 10's figure).

1. "Pretrained" model: the quickstart architecture (IR-ResNet18 x0.25, 64-D) trained on the cached
   synthetic sample (300 people, the same faces `frtf quickstart` uses) for --pretrain-steps updates.
2. "Your people": OTHER synthetic identities, photographed in another domain (stronger pose, lighting,
   blur, noise and JPEG loss than the pretraining photos: the gap a phone-photo set has to a web dataset),
   written as identity folders of JPEGs and run through the package's own tools:
     --people people, their photos split per person into train / val / test (as `frtf split --by images`);
     train -> `convert_folder` (the fine-tuning data), val -> `make_pairs_from_folder` (val.bin beside the
     data: the held-out pairs early stopping and best/ watch), test -> test_photos.bin (closed set: the
     same people in photos never trained on), and --others further people -> test_people.bin (open set:
     people the fine-tuning never saw).
3. Each policy fine-tunes the same pretrained model with finetune_small's optimizer settings (AdamW, lr
   3e-4, s=32 m=0.3) for --steps updates (finetune_medium with its own settings), validating every
   --val-every; the model scored is RUN/best/embedding.keras, the one early stopping keeps.

Prints a Markdown table and writes OUT/results.json.

    python benchmarks/bench_finetune.py [--out output/bench_finetune] [--steps 150] [--pretrain-steps 100]
"""

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# photos of "your people": a harder domain than the pretraining sample's defaults
# (the pretrained model below verifies such photos at ~0.74, photos like its training ones at ~0.94)
SHIFTED = dict(rotation_deg=15.0, scale=0.12, shift_px=7.0, yaw=0.28, light_gradient=0.8, brightness=(0.5, 1.35),
               color_cast=0.2, occlusion_prob=0.15, blur_prob=0.7, blur_sigma=2.0, noise_std=12.0,
               jpeg_quality=(30, 60))
PRETRAIN = ["model.backbone=r18", "model.width_multiplier=0.25", "model.embedding_size=64", "log.progress=false",
            "checkpoint.every_steps=1000", "validation.every_steps=1000"]


def policies(steps: int, val_every: int) -> list[tuple[str, str, list[str]]]:
    """(row label, config, overrides): one freeze policy each, the rest as the small recipe."""
    unfreeze = f"finetune.unfreeze=[{{step: {steps // 5}, layers: 20}}, {{step: {2 * steps // 5}, layers: all}}]"
    common = [f"train.max_steps={steps}", f"validation.every_steps={val_every}", f"checkpoint.every_steps={val_every}",
              f"train.schedule.warmup_steps={min(10, steps // 4)}", "log.progress=false"]
    small = ["finetune.unfreeze=[]"]
    return [
        ("all_but_head (new head only)", "finetune_small", common + small + ["finetune.freeze=all_but_head"]),
        ("all_but_embedding", "finetune_small", common + small),
        ("finetune_small: all_but_embedding, then unfreeze 20 / all", "finetune_small", common + [unfreeze]),
        # r18 has 62 layers with weights: 40 frozen is stem + stages 1-3, as 100 of r50's 158
        ("finetune_medium: first_layers (40 of 62)", "finetune_medium",
         common + ["finetune.freeze_layers=40", "train.batch_size=32"]),
        ("none (everything trains)", "finetune_small", common + small + ["finetune.freeze=none"]),
    ]


def render_people(folder: Path, count: int, photos: int, seed: int, nuisance) -> None:
    import numpy as np

    from face_recognition_tf.data.synthetic import synthetic_faces as faces

    ids = np.random.default_rng([seed, 0])
    for person in range(count):
        identity = faces.sample_identity(ids)
        rng = np.random.default_rng([seed, 1, person])
        (folder / f"p{person:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(photos):
            (folder / f"p{person:03d}" / f"{i:02d}.jpg").write_bytes(faces.render(identity, rng, nuisance))


def split_by_images(src: Path, out: Path, val: int, test: int) -> None:
    """train / val / test per person (what `frtf split --by images` does; kept here so the figure does not
    depend on that command's rounding)."""
    for person in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(person.iterdir())
        parts = {"val": files[:val], "test": files[val:val + test], "train": files[val + test:]}
        for part, chosen in parts.items():
            (out / part / person.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, out / part / person.name / f.name)


def make_data(out: Path, args) -> tuple[Path, dict]:
    from face_recognition_tf.data.conversion.convert import convert_folder
    from face_recognition_tf.data.synthetic import synthetic_faces as faces
    from face_recognition_tf.evaluation.pairs import make_pairs_from_folder

    data, tests = out / "data" / "mine", {"test_photos": out / "data" / "test_photos.bin",
                                          "test_people": out / "data" / "test_people.bin"}
    if (data / "manifest.json").is_file() and all(p.is_file() for p in tests.values()):
        return data, tests
    shutil.rmtree(out / "data", ignore_errors=True)
    nuisance = faces.Nuisance(**SHIFTED)
    raw = out / "data" / "raw"
    render_people(raw / "people", args.people, args.photos, seed=101, nuisance=nuisance)
    render_people(raw / "others", args.others, 10, seed=202, nuisance=nuisance)
    split_by_images(raw / "people", raw / "parts", val=5, test=5)
    convert_folder(raw / "parts" / "train", data, progress=False)
    # same-person pairs capped per person (as many different-person pairs): ~600 / 1,000 / 960 pairs
    make_pairs_from_folder(raw / "parts" / "val", data / "val.bin", seed=1, max_same_per_identity=6)
    make_pairs_from_folder(raw / "parts" / "test", tests["test_photos"], seed=2, max_same_per_identity=10)
    make_pairs_from_folder(raw / "others", tests["test_people"], seed=3, max_same_per_identity=12)
    return data, tests


def pretrain(out: Path, steps: int) -> Path:
    from face_recognition_tf.config import load_config
    from face_recognition_tf.data.synthetic.sample import ensure_converted_sample
    from face_recognition_tf.training.trainer import train

    run = out / "pretrained"
    cfg = load_config("quickstart", PRETRAIN + [f"train.max_steps={steps}", f"train.schedule.warmup_steps={min(30, steps // 4)}"])
    train(cfg, data_dir=ensure_converted_sample(), run_dir=run)  # a finished run only re-validates
    return run


def score(model_path, sets: dict) -> dict:
    from face_recognition_tf.evaluation import evaluate_model
    from face_recognition_tf.model_io import load_embedding_model

    results = evaluate_model(load_embedding_model(model_path), {k: str(v) for k, v in sets.items()})
    return {name: {"accuracy": float(r.accuracy_mean), "std": float(r.accuracy_std), "auc": float(r.auc)}
            for name, r in results.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="output/bench_finetune")
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning updates per policy (before early stopping)")
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--people", type=int, default=50, help="your people (fine-tuning classes)")
    ap.add_argument("--photos", type=int, default=25, help="photos per person (5 val, 5 test, the rest train)")
    ap.add_argument("--others", type=int, default=40, help="further people (10 photos each) for open-set pairs")
    ap.add_argument("--only", default="", help="comma-separated row numbers to run (default: all)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from face_recognition_tf.config import load_config
    from face_recognition_tf.training.trainer import train

    started = time.perf_counter()
    data, tests = make_data(out, args)
    sets = {"val": data / "val.bin", **tests}
    base = pretrain(out, args.pretrain_steps)
    rows = [{"policy": "before: the pretrained model", "steps": 0, "seconds": 0.0, "stopped_early": None,
             "scores": score(base, sets)}]
    chosen = {int(i) for i in args.only.split(",") if i}
    for index, (label, config, overrides) in enumerate(policies(args.steps, args.val_every), 1):
        if chosen and index not in chosen:
            continue
        run = out / f"ft{index}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = load_config(config, overrides + [f"finetune.init={base}"])
        t0 = time.perf_counter()
        summary = train(cfg, data_dir=data, run_dir=run)
        rows.append({"policy": label, "config": config, "overrides": overrides, "steps": summary["step"],
                     "seconds": time.perf_counter() - t0, "stopped_early": summary["stopped_early"],
                     "best_step": json.loads((run / "best" / "best.json").read_text())["step"],
                     "scores": score(run / "best" / "embedding.keras", sets)})
        print(json.dumps(rows[-1]), flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"args": vars(args), "rows": rows, "wall_seconds": time.perf_counter() - started,
              "cpu_seconds": usage.ru_utime + usage.ru_stime, "load_average_1min_at_end": os.getloadavg()[0]}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print("| policy | updates (best at) | val | test_photos: same people, new photos | test_people: unseen people "
          "| s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s = row["scores"]
        steps = f"{row['steps']} ({row['best_step']})" if row["steps"] else "-"
        steps += ", stopped early" if row.get("stopped_early") else ""
        cells = [f"{s[k]['accuracy']:.3f} ± {s[k]['std']:.3f} (AUC {s[k]['auc']:.3f})" for k in ("test_photos", "test_people")]
        print(f"| {row['policy']} | {steps} | {s['val']['accuracy']:.3f} | {cells[0]} | {cells[1]} | {row['seconds']:.0f} |")
    print(f"wall {result['wall_seconds']:.0f} s, CPU {result['cpu_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
