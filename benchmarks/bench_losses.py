"""Losses compared (issue 12): softmax, ArcFace, CosFace, SphereFace and triplet, same backbone, same images.

Every loss trains configs/quickstart.yaml's model (IR-ResNet18 at width 0.25, 64-D embedding, AdamW,
batch 64, warm-up then linear decay) on the embedded sample for the same number of updates, i.e. the
same number of images; then the final model is scored on the sample's lfw / cfp_fp / agedb_30 pair
sets (held-out identities) with the evaluation package: 10-fold accuracy, AUC and TAR at FAR 1e-3.
Each loss's settings are in LOSSES below; only the head (and, for triplet, the sampler) differ.

Results accumulate in OUT/losses.json (one entry per loss, kept between invocations, so the losses
can be run in several sittings with --only); every invocation rewrites OUT/losses.md (the table) and
OUT/losses_roc.png (one figure, a panel per pair set, a curve per loss) from all entries.

    python benchmarks/bench_losses.py [--steps 80] [--out output/bench_losses] [--only arcface,triplet]
                                      [--figure docs/images/losses_roc.png] [key=value ...]
"""

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAR = 1e-3


def tar_at(result: dict, far: float) -> float:
    """TAR at FAR <= `far` from the exact ROC curve.

    The sample's pair sets hold 300 different-person pairs, so the evaluation package (rightly) reports no
    TAR@FAR=1e-3: one false accept is already FAR 3.3e-3.  Read off the curve, FAR <= 1e-3 means no false
    accept at all, which is a lower bound of TAR@FAR=1e-3 on a larger set.
    """
    return max(t for f, t in zip(result["roc_far"], result["roc_tar"]) if f <= far)


def losses(steps: int) -> dict:
    """Config overrides per loss.  Margins: each head's usual value at quickstart's s = 32."""
    # SphereFace's lambda falls 1000 -> 5 in ~1,660 updates in insightface's schedule (gamma 0.12), early in a
    # run of tens of thousands; here gamma is raised so that it reaches 5 a quarter of the way through too.
    gamma = 199.0 / max(1.0, 0.25 * steps)
    return {
        "softmax": ["head.name=softmax"],
        "arcface": ["head.name=arcface", "head.m=0.3"],  # quickstart's own head
        "cosface": ["head.name=cosface", "head.m=0.35"],
        "sphereface": ["head.name=sphereface", "head.m=4", "head.sphereface_form=insightface",
                       f"head.lambda_gamma={gamma:.4f}"],
        "triplet": ["head.name=triplet", "head.m=0.5", "head.mining=batch_hard", "data.sampler=pk",
                    "data.images_per_identity=4"],
        # not in the default set: today's arcface_torch gradient, for a side-by-side with "arcface"
        "arcface_straight_through": ["head.name=arcface", "head.m=0.3", "head.gradient=straight_through"],
    }


DEFAULT = ("softmax", "arcface", "cosface", "sphereface", "triplet")


def train_and_score(name, overrides, steps, data_dir, run_dir, info, pair_sets):
    from face_recognition_tf.config import load_config
    from face_recognition_tf.evaluation import evaluate_model
    from face_recognition_tf.training.trainer import Trainer

    # quickstart's warm-up is 30 of 160 updates: keep that share for shorter runs
    cfg = load_config("quickstart", [f"train.max_steps={steps}", f"validation.every_steps={steps}",
                                     f"checkpoint.every_steps={steps}",
                                     f"train.schedule.warmup_steps={max(1, steps * 3 // 16)}", *overrides])
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"bench_losses: {name}: {steps} updates of {cfg.train.batch_size} ({' '.join(overrides)})", flush=True)
    trainer = Trainer(cfg, info, data_dir=data_dir, run_dir=run_dir, resume="never", progress=False).prepare()
    # the final model is scored below with every figure; embedding the sets twice would cost minutes
    trainer.validator = None
    started = time.perf_counter()
    summary = trainer.train()
    seconds = time.perf_counter() - started
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    last = [r for r in history if r["event"] == "train"][-1]
    results = evaluate_model(trainer.step_fn.backbone, pair_sets)
    return {
        "overrides": overrides, "steps": summary["step"], "global_batch": summary["global_batch"],
        "images": summary["step"] * summary["global_batch"], "train_seconds": seconds,
        "final_train_loss": last["loss"], "final_train_accuracy": last["accuracy"],
        "results": {k: r.to_dict(include_curves=True) for k, r in results.items()},
    }


def table(entries: dict) -> str:
    sets = list(next(iter(entries.values()))["results"])
    head = ("| loss | " + " | ".join(f"{s} acc | {s} AUC | {s} TAR@FAR≤1e-3 (0 FA)" for s in sets)
            + " | mean acc | train s |")
    lines = [head, "|" + "---|" * (2 + 3 * len(sets) + 1)]
    for name, e in entries.items():
        cells = []
        for s in sets:
            r = e["results"][s]
            cells += [f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.3f}", f"{r['auc']:.4f}",
                      f"{tar_at(r, FAR):.3f}"]
        mean = sum(e["results"][s]["accuracy_mean"] for s in sets) / len(sets)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{mean:.4f}** | {e['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def roc_figure(entries: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from face_recognition_tf.evaluation.report import draw_roc

    sets = list(next(iter(entries.values()))["results"])
    figure = Figure(figsize=(6 * len(sets), 5), dpi=90)
    FigureCanvasAgg(figure)
    for i, s in enumerate(sets):
        curves = {name: SimpleNamespace(**e["results"][s]) for name, e in entries.items()}
        draw_roc(figure.add_subplot(1, len(sets), i + 1), s, curves)
    figure.suptitle("Losses compared on the sample (same backbone, same number of images)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="output/bench_losses")
    ap.add_argument("--steps", type=int, default=80, help="updates per loss (batch 64)")
    ap.add_argument("--only", help="comma-separated losses to (re)run; default: " + ",".join(DEFAULT))
    ap.add_argument("--figure", help="also write the ROC figure here (e.g. docs/images/losses_roc.png)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every loss, e.g. train.lr=3e-3")
    args = ap.parse_args()

    from face_recognition_tf.training.strategy import make_strategy

    info = make_strategy("default")
    from face_recognition_tf.data import find_bins, load_bin, read_manifest
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.synthetic.sample import ensure_sample_dataset

    out = Path(args.out)
    data_dir = out / "data"
    if not (data_dir / "manifest.json").is_file():
        convert_recordio(ensure_sample_dataset(), data_dir, progress=False)
    read_manifest(data_dir)
    pair_sets = {name: load_bin(path) for name, path in find_bins(data_dir).items()}
    known = losses(args.steps)
    chosen = args.only.split(",") if args.only else list(DEFAULT)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        ap.error(f"unknown loss(es) {', '.join(unknown)}; choose from {', '.join(known)}")
    store = out / "losses.json"
    entries = json.loads(store.read_text()) if store.is_file() else {}
    started = time.perf_counter()
    for name in chosen:
        entries[name] = train_and_score(name, known[name] + list(args.overrides), args.steps, data_dir,
                                        out / "runs" / name, info, pair_sets)
        entries[name]["load_average_1min"] = os.getloadavg()[0]
        store.write_text(json.dumps(entries, indent=1))
        print(table({name: entries[name]}), flush=True)
    ordered = {k: entries[k] for k in list(known) if k in entries}
    (out / "losses.md").write_text(table(ordered))
    roc_figure(ordered, out / "losses_roc.png")
    if args.figure:
        roc_figure(ordered, Path(args.figure))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(table(ordered))
    print(f"wall {time.perf_counter() - started:.0f} s this invocation, CPU {usage.ru_utime + usage.ru_stime:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
