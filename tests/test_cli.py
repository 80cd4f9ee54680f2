"""The `frtf` dispatcher: help, version and argument errors answer without importing TensorFlow."""

import subprocess
import sys
from pathlib import Path

import pytest

from face_recognition_tf import cli


def run_frtf(*args):
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    result = run_frtf("--help")
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert name in result.stdout


def test_unknown_command_is_a_usage_error():
    result = run_frtf("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr


def test_version():
    result = run_frtf("--version")
    assert result.returncode == 0
    assert "face_recognition_tf" in result.stdout


def test_help_does_not_import_tensorflow():
    code = "import sys; from face_recognition_tf import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit: pass\nprint('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().endswith("False")


def test_every_command_module_exposes_parser_and_run():
    import importlib

    for name, (module_name, _) in cli.COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "configure_parser")), name
        assert callable(getattr(module, "run")), name


def test_user_error_becomes_one_line_and_exit_2(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code = cli.main(["convert", str(missing), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[0].startswith("frtf convert: error:") and str(missing) in err[0]


@pytest.mark.parametrize("script", ["train.py", "train_multigpu.py", "dataset/convert_dataset.py", "evaluation/evaluation.py"])
def test_thin_scripts_show_help(script):
    result = subprocess.run([sys.executable, str(Path(__file__).parents[1] / script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
