"""`frtf sample`: its help says where the cached sample lives; its output is readable by others."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _frtf(*args, env=None, umask=-1):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "face_recognition_tf", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, umask=umask)


def test_help_names_the_cache_and_its_variable(tmp_path):
    cache = tmp_path / "frtf-cache"
    result = _frtf("sample", "--help", env={"FRTF_CACHE_DIR": str(cache), "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    flat = "".join(result.stdout.split())  # help is wrapped: compare without whitespace
    assert "FRTF_CACHE_DIR" in result.stdout
    assert "~/.cache/face_recognition_tf" in flat
    assert str(cache / "sample-v1") in flat  # where it is right now


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_sample_output_follows_the_umask(tmp_path, umask):
    out = tmp_path / "sample"
    result = _frtf("sample", out, "--identities", "2", "--images-per-identity", "2", "--pairs", "20", umask=umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = list(out.iterdir())
    assert {p.name for p in files} >= {"train.rec", "train.idx", "property", "lfw.bin", "sample.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_sample_on_a_read_only_file_system(readonly_dir):
    result = _frtf("sample", readonly_dir / "s", "--identities", "2", "--images-per-identity", "2", "--pairs", "20")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("frtf sample: error: ") and str(readonly_dir / "s") in lines[0]
    assert list(readonly_dir.iterdir()) == []
