"""Embedding with flips, evaluate_model, and `frtf evaluate` end to end on a tiny saved model and tiny .bin files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_recognition_tf.cli import main
from face_recognition_tf.data import load_bin, save_bin
from face_recognition_tf.errors import DatasetError
from face_recognition_tf.evaluation import Embedder, embed_images, evaluate_embeddings, evaluate_model

REPO = Path(__file__).resolve().parents[1]


def _tiny_backbone():
    from face_recognition_tf.models import build_backbone

    return build_backbone("r18", embedding_size=32, width_multiplier=0.25)


def _write_pair_set(path, num_pairs, seed):
    """Pairs of 112x112 JPEGs: a same pair is one picture and a noisy copy, a different pair two pictures."""
    rng = np.random.default_rng(seed)
    jpegs, issame = [], []
    for k in range(num_pairs):
        same = k % 2 == 0
        first = rng.integers(0, 256, size=(14, 14, 3), dtype=np.uint8)
        first = cv2.resize(first, (112, 112), interpolation=cv2.INTER_LINEAR)
        if same:
            second = np.clip(first.astype(int) + rng.integers(-12, 12, size=first.shape), 0, 255).astype(np.uint8)
        else:
            second = cv2.resize(rng.integers(0, 256, size=(14, 14, 3), dtype=np.uint8), (112, 112))
        for img in (first, second):
            ok, buf = cv2.imencode(".jpg", img)
            assert ok
            jpegs.append(buf.tobytes())
        issame.append(same)
    save_bin(path, jpegs, issame)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    data.mkdir()
    _write_pair_set(data / "lfw.bin", 20, seed=1)
    _write_pair_set(data / "cfp_fp.bin", 12, seed=2)
    model = _tiny_backbone()
    model.save(root / "m.keras")
    return root, model


def test_embed_images_flips_and_batches(workspace):
    _, model = workspace
    images, _ = load_bin(workspace[0] / "data" / "cfp_fp.bin")
    emb, flips = embed_images(model, images, batch_size=5)  # 24 images: a partial last batch
    assert emb.shape == (24, 32) and flips.shape == (24, 32) and emb.dtype == np.float32
    x = (images.astype(np.float32) - 127.5) / 128.0
    expected = model(x, training=False).numpy()
    expected_flip = model(x[:, :, ::-1], training=False).numpy()
    # batch composition changes float summation order: compare relative to the embeddings' scale
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(flips, expected_flip, rtol=1e-4, atol=atol)
    only, none = embed_images(model, images, batch_size=64, flip=False)
    assert none is None
    np.testing.assert_allclose(only, expected, rtol=1e-4, atol=atol)
    with pytest.raises(ValueError, match="uint8"):
        embed_images(model, x)


def test_evaluate_model_from_paths_and_arrays(workspace):
    root, model = workspace
    embedder = Embedder(model)  # reused: traced once
    by_path = evaluate_model(embedder, {"lfw": root / "data" / "lfw.bin"}, batch_size=16)
    images, issame = load_bin(root / "data" / "lfw.bin")
    by_array = evaluate_model(embedder, {"lfw": (images, issame)}, batch_size=7)
    assert by_path["lfw"].accuracy_mean == pytest.approx(by_array["lfw"].accuracy_mean)
    emb, flips = embed_images(embedder, images)
    direct = evaluate_embeddings(emb, issame, flip_embeddings=flips)
    assert by_path["lfw"].num_pairs == 20 and by_path["lfw"].flipped
    assert by_path["lfw"].xnorm == pytest.approx(direct.xnorm, rel=1e-5)
    with pytest.raises(DatasetError, match="tiny: 4 pairs cannot be split into 10 folds"):
        evaluate_model(embedder, {"tiny": (images[:8], issame[:4])})


def test_evaluate_command_writes_every_report(workspace, capsys):
    root, model = workspace
    out = root / "out"
    code = main(["evaluate", str(root / "m.keras"), "--data", str(root / "data"), "--out", str(out),
                 "--batch-size", "16", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "results.csv", "results.json", "results.md", "roc_cfp_fp.png", "roc_lfw.png"
    ]
    doc = json.loads((out / "results.json").read_text())
    assert doc["targets"] == ["lfw", "cfp_fp"] and doc["flip"] is True
    assert doc["checkpoints"] == [{"name": "m.keras", "path": str(root / "m.keras")}]
    lfw = doc["results"]["m.keras"]["lfw"]
    images, issame = load_bin(root / "data" / "lfw.bin")
    emb, flips = embed_images(model, images)
    assert lfw["accuracy_mean"] == pytest.approx(evaluate_embeddings(emb, issame, flip_embeddings=flips).accuracy_mean)
    table = captured.out.splitlines()
    assert table[0].split() == ["target", "m.keras"] and table[2].startswith("lfw") and "+-" in table[2]


def test_evaluate_several_checkpoints_of_a_run_folder(workspace, capsys):
    import tensorflow as tf

    root, model = workspace
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "backbone.json").write_text(json.dumps({"name": "r18", "embedding_size": 32, "width_multiplier": 0.25}))
    checkpoint = tf.train.Checkpoint(backbone=model)  # the trainer's layout: RUN/checkpoints/ckpt-N
    manager = tf.train.CheckpointManager(checkpoint, run / "checkpoints", max_to_keep=None)
    manager.save(checkpoint_number=100)
    manager.save(checkpoint_number=20)
    code = main(["evaluate", str(run), "--data", str(root / "data"), "--targets", "cfp_fp", "--no-flip", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = run / "evaluation"  # default output beside the run
    doc = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in doc["checkpoints"]] == ["run/ckpt-20", "run/ckpt-100"]  # step order
    assert doc["targets"] == ["cfp_fp"] and doc["flip"] is False
    first, second = (doc["results"][n]["cfp_fp"] for n in ("run/ckpt-20", "run/ckpt-100"))
    assert first["accuracy_mean"] == second["accuracy_mean"]  # same weights
    assert first["accuracy_noflip_mean"] is None
    assert sorted(p.name for p in out.glob("*.png")) == ["roc_cfp_fp.png"]


def test_without_data_uses_the_embedded_sample(workspace, capsys, monkeypatch):
    import face_recognition_tf.data.synthetic.sample as sample

    root, _ = workspace
    calls = []
    # the real sample takes ~20 s to build and ~1 min to embed on 2 cores; its wiring is what is tested here
    monkeypatch.setattr(sample, "ensure_sample_dataset", lambda: calls.append(1) or root / "data")
    code = main(["evaluate", str(root / "m.keras"), "--targets", "cfp_fp", "--out", str(root / "sample_out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert calls == [1] and "embedded sample dataset" in captured.err
    assert json.loads((root / "sample_out" / "results.json").read_text())["data"] == str(root / "data")


def test_user_errors_exit_2_with_one_line(workspace, capsys):
    root, _ = workspace
    cases = [
        ([str(root / "missing.keras"), "--data", str(root / "data")], "missing.keras"),
        ([str(root / "m.keras"), "--data", str(root / "nodata")], "nodata"),
        ([str(root / "m.keras"), "--data", str(root / "data"), "--targets", "agedb_30"], "agedb_30.bin"),
        ([str(root / "m.keras"), "--data", str(root / "data"), "--batch-size", "0"], "--batch-size"),
    ]
    for argv, needle in cases:
        assert main(["evaluate", *argv, "--out", str(root / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("frtf evaluate: error:") and needle in err[0], err
    assert not (root / "never").exists()


def test_evaluation_script_bad_checkpoint_exits_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluation" / "evaluation.py"), str(tmp_path / "nope" / "ckpt-5")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "not found" in lines[0]
