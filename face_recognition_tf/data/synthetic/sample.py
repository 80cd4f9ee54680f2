"""The embedded sample dataset: synthetic people in insightface's exact layout, made in seconds.

It is the default data of every command when no data is given, so a newcomer can run the whole
chain (convert, train, evaluate) on a CPU.  The folder holds `train.rec`, `train.idx`, `property`
(face2rec layout: header record 0 written last, identity records) and `lfw.bin`, `cfp_fp.bin`,
`agedb_30.bin` pair sets whose people never appear in training:
  lfw       two ordinary photos per pair;
  cfp_fp    a near-frontal photo against a strongly turned one (frontal-profile);
  agedb_30  a photo against an aged one (grey hair, wrinkles).
Every pair set lists its pairs fold by fold (10 folds, each half same / half different person),
as the 10-fold verification protocol expects.  All sizes and difficulty knobs are in SampleSpec
(and synthetic_faces.Nuisance) so they can be tuned in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from face_recognition_tf.atomic import temporary_dir_beside, write_json, write_text
from face_recognition_tf.data.formats.verification_bin import save_bin
from face_recognition_tf.data.synthetic import synthetic_faces as faces
from face_recognition_tf.data.synthetic.rec_layout import write_rec_dataset
from face_recognition_tf.errors import DatasetError

GENERATOR_VERSION = 1  # bump when the renderer changes, so cached samples are rebuilt
CACHE_NAME = "sample-v1"
CACHE_ENV = "FRTF_CACHE_DIR"  # moves the cache folder
DEFAULT_CACHE = "~/.cache/face_recognition_tf"
FOLDS = 10


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    num_identities: int = 300
    images_per_identity: int = 20
    pairs_per_set: int = 600  # multiple of 20: 10 folds, each half same / half different
    pair_sets: tuple = ("lfw", "cfp_fp", "agedb_30")
    seed: int = 0
    frontal_yaw: float = 0.06  # cfp_fp first image
    profile_yaw: tuple = (0.18, 0.28)  # cfp_fp second image, either side
    age: tuple = (0.1, 0.3)  # agedb_30 second image
    nuisance: faces.Nuisance = faces.Nuisance()

    def validate(self):
        if self.num_identities < 2 or self.images_per_identity < 2:
            raise DatasetError("the sample needs at least 2 identities with at least 2 images each")
        if self.pairs_per_set < 2 * FOLDS or self.pairs_per_set % (2 * FOLDS):
            raise DatasetError(f"pairs per set must be a positive multiple of {2 * FOLDS} (10 folds, half same)")
        unknown = set(self.pair_sets) - {"lfw", "cfp_fp", "agedb_30"}
        if unknown:
            raise DatasetError(f"unknown sample pair set(s): {', '.join(sorted(unknown))}")

    def fingerprint(self) -> str:
        text = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DEFAULT_SPEC = SampleSpec()  # what ensure_sample_dataset builds and caches


def _render_identities(spec: SampleSpec, first: int, people: list) -> list:
    """JPEGs of training identities first, first+1, ...; each has its own random stream."""
    out = []
    for label, person in enumerate(people, first):
        rng = np.random.default_rng([spec.seed, 1, label])
        out.append([faces.render(person, rng, spec.nuisance) for _ in range(spec.images_per_identity)])
    return out


def _pair_set(spec: SampleSpec, set_index: int, name: str):
    """(jpegs, issame) for one pair set, people drawn from their own random stream."""
    rng = np.random.default_rng([spec.seed, 2, set_index])
    per_fold = spec.pairs_per_set // FOLDS
    n_people = max(4, spec.pairs_per_set // 2)
    people = [faces.sample_identity(rng) for _ in range(n_people)]
    jpegs, issame = [], []

    def photo(person, second):
        if name == "cfp_fp":
            if not second:
                return faces.render(person, rng, spec.nuisance, yaw=rng.uniform(-spec.frontal_yaw, spec.frontal_yaw))
            return faces.render(person, rng, spec.nuisance, yaw=rng.choice([-1, 1]) * rng.uniform(*spec.profile_yaw))
        if name == "agedb_30" and second:
            return faces.render(person, rng, spec.nuisance, age=rng.uniform(*spec.age))
        return faces.render(person, rng, spec.nuisance)

    for _ in range(FOLDS):
        for same in (True, False):
            for _ in range(per_fold // 2):
                a = int(rng.integers(n_people))
                b = a if same else int((a + rng.integers(1, n_people)) % n_people)
                jpegs += [photo(people[a], False), photo(people[b], True)]
                issame.append(same)
    return jpegs, issame


def _write_sample(folder: Path, spec: SampleSpec, workers=None) -> None:
    """Render (in worker processes when there are several cores) and write the whole sample.

    Every identity and every pair set has its own random stream, so the result does not depend on
    how the work is split.
    """
    ids = np.random.default_rng([spec.seed, 0])
    people = [faces.sample_identity(ids) for _ in range(spec.num_identities)]
    chunk = 25
    jobs = [(_render_identities, (spec, i, people[i:i + chunk])) for i in range(0, len(people), chunk)]
    jobs += [(_pair_set, (spec, i, name)) for i, name in enumerate(spec.pair_sets)]
    images = spec.num_identities * spec.images_per_identity + 2 * spec.pairs_per_set * len(spec.pair_sets)
    workers = workers or (min(os.cpu_count() or 1, 8) if images >= 3000 else 1)  # small: not worth a spawn
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(fn, *a) for fn, a in reversed(jobs)]  # the big pair-set jobs first
            results = [f.result() for f in reversed(futures)]
    else:
        results = [fn(*a) for fn, a in jobs]
    train = [photos for block in results[: -len(spec.pair_sets) or None] for photos in block]
    items = ((label, jpeg) for label, photos in enumerate(train) for jpeg in photos)
    write_rec_dataset(folder, items, num_classes=spec.num_identities)
    for name, (jpegs, issame) in zip(spec.pair_sets, results[len(results) - len(spec.pair_sets):]):
        save_bin(folder / f"{name}.bin", jpegs, issame)
    info = {"generator_version": GENERATOR_VERSION, "fingerprint": spec.fingerprint(),
            "spec": dataclasses.asdict(spec), "num_images": spec.num_identities * spec.images_per_identity}
    write_text(folder / "sample.json", json.dumps(info, indent=1, default=str) + "\n")


def make_sample_dataset(out_dir, *, num_identities=SampleSpec.num_identities,
                        images_per_identity=SampleSpec.images_per_identity, pairs_per_set=SampleSpec.pairs_per_set,
                        seed=0, pair_sets=SampleSpec.pair_sets, nuisance=None) -> Path:
    """Write the sample to `out_dir` (which must not exist or be empty); atomic, deterministic."""
    spec = SampleSpec(num_identities=int(num_identities), images_per_identity=int(images_per_identity),
                      pairs_per_set=int(pairs_per_set), pair_sets=tuple(pair_sets), seed=int(seed),
                      nuisance=nuisance or faces.Nuisance())
    spec.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir}: already exists and is not an empty folder")
    tmp = temporary_dir_beside(out_dir)  # the umask's mode, a one-line OutputError if OUT cannot be written
    try:
        _write_sample(tmp, spec)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def cache_root(cache_dir=None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(DEFAULT_CACHE).expanduser()


def _is_current(folder: Path) -> bool:
    try:
        info = json.loads((folder / "sample.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == DEFAULT_SPEC.fingerprint()


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished temporary folder into place; if another process won the race, use theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _replace_stale(final: Path, is_current) -> None:
    """Move an out-of-date folder away (checked again here: another process may just have published)."""
    if final.exists() and not is_current():
        trash = final.with_name(f".{final.name}.stale-{os.getpid()}")
        try:
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError:
            pass


def ensure_sample_dataset(cache_dir=None) -> Path:
    """The default sample under the cache folder, made once and reused (safe when processes race)."""
    final = cache_root(cache_dir) / CACHE_NAME
    if _is_current(final):
        return final
    tmp = temporary_dir_beside(final)
    try:
        _write_sample(tmp, DEFAULT_SPEC)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_stale(final, lambda: _is_current(final))
    _publish(tmp, final)
    if not _is_current(final):
        raise DatasetError(f"{final}: could not create the sample dataset there")
    return final


def ensure_converted_sample(cache_dir=None) -> Path:
    """The default sample converted to TFRecords (pair sets beside the shards), made once."""
    from face_recognition_tf.data.conversion.convert import convert_recordio
    from face_recognition_tf.data.records.tfrecord import read_manifest

    src = ensure_sample_dataset(cache_dir)
    final = src.with_name(f"{CACHE_NAME}-tfrecord")
    fingerprint = json.loads((src / "sample.json").read_text())["fingerprint"]

    def current():
        try:
            return read_manifest(final).get("sample_fingerprint") == fingerprint
        except DatasetError:
            return False

    if current():
        return final
    tmp = temporary_dir_beside(final)
    try:
        convert_recordio(src, tmp, progress=False)
        manifest_path = tmp / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["sample_fingerprint"] = fingerprint
        write_json(manifest_path, manifest, indent=1, sort_keys=False, durable=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_stale(final, current)
    _publish(tmp, final)
    if not current():
        raise DatasetError(f"{final}: could not create the converted sample there")
    return final


# ---------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the synthetic sample dataset in insightface's layout (train.rec/idx, property, "
                          "lfw/cfp_fp/agedb_30 .bin pair sets of people unseen in training).")
    here = cache_root() / CACHE_NAME
    parser.epilog = (f"The sample that other commands use when given no data is made once and cached in "
                     f"{DEFAULT_CACHE}/{CACHE_NAME} (its TFRecord conversion in {CACHE_NAME}-tfrecord beside it); "
                     f"set {CACHE_ENV} to keep the cache elsewhere. Here it is {here}. Delete that folder to have "
                     "it made again; `frtf sample OUT` writes a separate copy to OUT.")
    parser.add_argument("out", metavar="OUT", help="output folder (must not exist or be empty)")
    parser.add_argument("--identities", type=int, default=SampleSpec.num_identities, help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=SampleSpec.images_per_identity)
    parser.add_argument("--pairs", type=int, default=SampleSpec.pairs_per_set,
                        help="pairs per verification set (multiple of 20)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    out = make_sample_dataset(args.out, num_identities=args.identities, images_per_identity=args.images_per_identity,
                              pairs_per_set=args.pairs, seed=args.seed)
    print(f"{out}: {args.identities} identities x {args.images_per_identity} images, "
          f"{args.pairs} pairs per set ({', '.join(SampleSpec.pair_sets)})")
    return 0
