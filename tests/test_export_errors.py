"""`frtf export`: OUT and --format must agree, unwritable places fail first in one line, outputs carry the
umask, and no deprecation warning about `tf.lite.Interpreter` reaches the user."""

import os
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from face_recognition_tf.cli import main as frtf
from face_recognition_tf.errors import ConfigError
from face_recognition_tf.export import check_export, export_model, run_exported

REPO = Path(__file__).resolve().parents[1]
_TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from face_recognition_tf.models import build_backbone

    path = tmp_path_factory.mktemp("model") / "m.keras"
    build_backbone("r18", embedding_size=16, width_multiplier=0.25).save(path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    from face_recognition_tf.model_io import load_embedding_model

    return load_embedding_model(model_path)


def _mode(path):
    return stat.S_IMODE(Path(path).stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------ OUT and --format
def test_output_format_follows_out_and_must_agree_with_format(tmp_path):
    from face_recognition_tf.export import output_format

    assert output_format("exported") == "savedmodel"
    assert output_format("exported/") == "savedmodel"
    assert output_format("model.TFLITE") == "tflite" and output_format("m.onnx", "onnx") == "onnx"
    (tmp_path / "v1.2").mkdir()
    assert output_format(tmp_path / "v1.2") == "savedmodel"  # an existing folder is a folder
    accepted = "NAME.tflite (TFLite) or NAME.onnx (ONNX)"
    for out in ("model.pt", "model.h5", "weights.keras"):
        with pytest.raises(ConfigError, match=re.escape(accepted)):
            output_format(out)
    for out, format in [("exported/", "tflite"), ("exported", "tflite"), ("m.tflite", "savedmodel"),
                        ("m.onnx", "tflite"), ("m.tflite", "onnx"), ("exported", "onnx")]:
        with pytest.raises(ConfigError, match=f"export format {format} needs OUT"):
            output_format(out, format)


def test_export_refuses_out_that_disagrees_with_format(model, tmp_path):
    with pytest.raises(ConfigError, match="ending in .tflite"):
        export_model(model, str(tmp_path / "exported") + "/", "tflite")
    with pytest.raises(ConfigError, match="unknown export suffix '.pt'"):
        export_model(model, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def _frtf_subprocess(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=180, cwd=REPO)


def _one_error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not _TF_LOG_LINE.match(line)]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("frtf export: error:"), lines
    return lines[0]


def test_cli_format_and_suffix_errors_are_one_line(model_path, tmp_path, capsys):
    # the reported case, as a user runs it; the others in-process (same dispatcher, faster)
    line = _one_error_line(_frtf_subprocess("export", model_path, f"{tmp_path / 'exported'}/", "--format", "tflite"))
    assert "exported/" in line and ".tflite" in line
    cases = [
        ([str(tmp_path / "model.pt")], "unknown export suffix '.pt'"),
        ([str(tmp_path / "model.h5")], "NAME.tflite (TFLite) or NAME.onnx (ONNX)"),
        ([str(tmp_path / "m.tflite"), "--format", "savedmodel"], "a folder name without a file suffix"),
        ([str(tmp_path / "m.onnx"), "--format", "tflite"], "m.onnx"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert frtf(["export", str(model_path), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("frtf export: error:") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- the output place
def test_export_to_a_read_only_place_fails_in_one_line(model_path, readonly_dir, capsys):
    line = _one_error_line(_frtf_subprocess("export", model_path, readonly_dir / "exported"))
    assert str(readonly_dir) in line
    assert frtf(["export", str(model_path), str(readonly_dir / "sub" / "m.tflite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(readonly_dir / "sub") in err[0], err
    assert list(readonly_dir.iterdir()) == []


def test_export_place_is_checked_before_the_model_is_loaded(tmp_path, readonly_dir, capsys):
    # the model does not exist: the output place is what is reported, so no model was loaded first
    assert frtf(["export", str(tmp_path / "none.keras"), str(readonly_dir / "exported")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(readonly_dir) in err[0] and "none.keras" not in err[0], err


def test_exports_get_the_umask_mode(model, tmp_path, umask):
    saved = export_model(model, tmp_path / "sm")
    assert _mode(saved) == 0o755 and _mode(saved / "variables") == 0o755
    assert _mode(saved / "saved_model.pb") == 0o644
    assert _mode(export_model(model, tmp_path / "m.tflite")) == 0o644
    umask(0o002)  # TensorFlow itself creates folders 0755 whatever the umask
    shared = export_model(model, tmp_path / "shared")
    assert _mode(shared) == 0o775 and _mode(shared / "variables") == 0o775
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "shared", "sm"]  # no temporaries


# ------------------------------------------------------------------------------------- warnings
def test_no_tflite_interpreter_deprecation_warning(model, model_path, tmp_path, capsys):
    images = (np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3)).astype(np.float32) - 127.5) / 128.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export_model(model, tmp_path / "m.tflite")
        assert run_exported(out, images).shape == (2, 16)
        assert np.isfinite(check_export(model, out))
        assert frtf(["export", str(model_path), str(tmp_path / "cli.tflite")]) == 0
    deprecations = [str(w.message) for w in caught if "deprecated" in str(w.message).lower()]
    assert deprecations == []
    assert "deprecated" not in capsys.readouterr().err
