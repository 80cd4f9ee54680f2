"""Exports reproduce the Keras model: SavedModel (loaded back through model_io), TFLite, and the
missing-tf2onnx message for ONNX."""

import sys

import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.errors import FaceRecognitionError
from face_recognition_tf.export import check_export, export_model, run_exported
from face_recognition_tf.model_io import load_embedding_model
from tiny import tiny_backbone


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.keras"
    tiny_backbone().save(path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load_embedding_model(model_path)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (3, 112, 112, 3)).astype(np.float32) - 127.5) / 128.0


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("sm") / "embedder")


def _relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_saved_model_signature_and_round_trip(model, saved_model, images):
    import tensorflow as tf

    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    (name, spec), = signature.structured_input_signature[1].items()
    assert name == "images" and spec.shape.as_list() == [None, 112, 112, 3] and spec.dtype == tf.float32
    assert list(signature.structured_outputs) == ["embedding"]
    reference = np.asarray(model(images, training=False))
    np.testing.assert_allclose(run_exported(saved_model, images), reference, rtol=1e-5, atol=1e-4)
    # and through the recognizer, as a user would point it at the export
    from face_recognition_tf.inference import FaceRecognizer

    faces = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3)).astype(np.uint8)
    from_export = FaceRecognizer(saved_model, detector=None).embed(faces)
    from_keras = FaceRecognizer(model, detector=None).embed(faces)
    np.testing.assert_allclose(from_export, from_keras, atol=1e-5)
    assert not [p for p in saved_model.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_tflite_from_the_exported_saved_model_matches_keras(model, saved_model, images, tmp_path):
    chained = export_model(saved_model, tmp_path / "chained.tflite")
    reference = np.asarray(model(images, training=False))
    assert _relative_error(run_exported(chained, images), reference) < 1e-4


def test_l2_normalised_float16_tflite_via_cli(model_path, model, images, tmp_path, capsys):
    out = tmp_path / "small.tflite"
    assert frtf(["export", str(model_path), str(out), "--quantize", "float16", "--l2-normalize"]) == 0
    printed = capsys.readouterr().out
    assert "wrote tflite export" in printed and "check: max |export - model|" in printed
    embedded = run_exported(out, images)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-3)
    reference = np.array(model(images, training=False))
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert np.abs(embedded - reference).max() < 0.05  # float16 weights
    assert check_export(model, out, l2_normalize=True) < 0.05


def test_tflite_replaces_an_existing_file_only_with_overwrite(model, images, tmp_path):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"previous")
    with pytest.raises(FaceRecognitionError, match="already exists"):
        export_model(model, out)
    assert out.read_bytes() == b"previous"
    export_model(model, out, overwrite=True)
    reference = np.asarray(model(images, training=False))
    assert _relative_error(run_exported(out, images), reference) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # no temporary left behind


def test_bad_requests_fail_before_any_work(model_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the [onnx] extra were not installed
    with pytest.raises(FaceRecognitionError, match=r"pip install 'face_recognition_tf\[onnx\]'"):
        export_model(model_path, tmp_path / "m.onnx")
    cases = [
        (["export", str(model_path), str(tmp_path / "m.onnx")], "tf2onnx"),
        (["export", str(model_path), str(tmp_path / "sm"), "--quantize", "dynamic"], "TFLite exports only"),
        (["export", str(tmp_path / "missing.keras"), str(tmp_path / "x.tflite")], "missing.keras"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert frtf(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_onnx_matches_keras_when_the_extra_is_installed(model, images, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    out = export_model(model, tmp_path / "m.onnx")
    import onnx

    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["embedding"]
    reference = np.asarray(model(images, training=False))
    assert _relative_error(run_exported(out, images), reference) < 1e-4
